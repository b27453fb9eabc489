"""How each API family renders a long-running operation (``Operation`` -> JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    RPC_CODES,
    Operation,
    OpError,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


def render_operation(fake: FakeGcpApi, op: Operation, base_url: str) -> dict[str, Any]:
    """The operation as ``op.api`` returns it, reflecting its current status."""
    if op.api == "compute":
        return render_compute_op(fake, op, base_url)
    if op.api == "sqladmin":
        return render_sql_op(op, base_url)
    if op.api == "container":
        return render_container_op(op, base_url)
    return render_lro(op)


def render_lro(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"name": op.name}
    if op.metadata:
        out["metadata"] = op.metadata
    if op.done:
        out["done"] = True
        if op.error:
            out["error"] = {"code": RPC_CODES.get(op.error.status, 13), "message": op.error.message}
        else:
            out["response"] = op.response or {"@type": "type.googleapis.com/google.protobuf.Empty"}
    return out


def render_compute_op(fake: FakeGcpApi, op: Operation, base_url: str) -> dict[str, Any]:
    region = op.target.get("region")
    scope = f"regions/{region}" if region else "global"
    out: dict[str, Any] = {
        "kind": "compute#operation",
        "id": str(abs(hash(op.name)) % 10**18),
        "name": op.name,
        "operationType": op.op_type,
        "targetLink": op.target["targetLink"],
        "targetId": op.target["targetId"],
        "status": "DONE" if op.done else "RUNNING",
        "user": "fake-user@example.com",
        "progress": 100 if op.done else 0,
        "insertTime": op.insert_time,
        "startTime": op.insert_time,
        "selfLink": f"{base_url}/projects/{fake.project}/{scope}/operations/{op.name}",
    }
    if region:
        out["region"] = f"{base_url}/projects/{fake.project}/regions/{region}"
    if op.done:
        out["endTime"] = op.end_time
    if op.error:
        out["error"] = {"errors": [{"code": _compute_code(op.error), "message": op.error.message}]}
        out["httpErrorStatusCode"] = op.error.http_code
        out["httpErrorMessage"] = "BAD REQUEST" if op.error.http_code == 400 else "ERROR"
    return out


def _compute_code(err: OpError) -> str:
    return err.sql_code or err.status


def render_sql_op(op: Operation, base_url: str) -> dict[str, Any]:
    project = op.target["targetProject"]
    out: dict[str, Any] = {
        "kind": "sql#operation",
        "targetLink": op.target["targetLink"],
        "status": "DONE" if op.done else "RUNNING",
        "user": "fake-user@example.com",
        "insertTime": op.insert_time,
        "startTime": op.insert_time,
        "operationType": op.op_type,
        "name": op.name,
        "targetId": op.target["targetId"],
        "selfLink": f"{base_url}/projects/{project}/operations/{op.name}",
        "targetProject": project,
    }
    if op.done:
        out["endTime"] = op.end_time
    if op.error:
        out["error"] = {
            "kind": "sql#operationErrors",
            "errors": [
                {
                    "kind": "sql#operationError",
                    "code": op.error.sql_code or op.error.status,
                    "message": op.error.message,
                }
            ],
        }
    return out


def render_container_op(op: Operation, base_url: str) -> dict[str, Any]:
    loc = op.target["location"]
    out: dict[str, Any] = {
        "name": op.name,
        "zone": loc,
        "operationType": op.op_type,
        "status": "DONE" if op.done else "RUNNING",
        "selfLink": f"{base_url}/projects/{PROJECT_NUMBER}/zones/{loc}/operations/{op.name}",
        "targetLink": op.target["targetLink"],
        "startTime": op.insert_time,
        "location": f"{base_url}/projects/{PROJECT_NUMBER}/zones/{loc}",
    }
    if op.done:
        out["endTime"] = op.end_time
    if op.error:
        out["statusMessage"] = op.error.message
        out["error"] = {"code": RPC_CODES.get(op.error.status, 13), "message": op.error.message}
    return out
