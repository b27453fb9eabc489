"""Secret Manager: secrets, versions (payload + CRC32C), ``versions access latest``."""

from __future__ import annotations

import base64
import copy
import re
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    Call,
    Route,
    already_exists,
    bad_request,
    iter_routes,
    not_found,
    now_rfc3339,
)
from .common import (
    check_project,
    crc32c,
    new_id,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


class SecretManager:
    """Secrets with automatic replication and numbered versions."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def routes(self) -> list[Route]:
        p = r"/v1/projects/{project}/secrets"
        return iter_routes(
            "secretmanager",
            [
                ("GET", p, "secretmanager.secrets.list", self.list_secrets),
                ("POST", p, "secretmanager.secrets.create", self.create),
                ("GET", p + "/{secret}", "secretmanager.secrets.get", self.get),
                ("DELETE", p + "/{secret}", "secretmanager.secrets.delete", self.delete),
                (
                    "POST",
                    p + "/{secret}:addVersion",
                    "secretmanager.secrets.addVersion",
                    self.add_version,
                ),
                (
                    "GET",
                    p + "/{secret}/versions",
                    "secretmanager.versions.list",
                    self.list_versions,
                ),
                (
                    "GET",
                    p + "/{secret}/versions/{version}:access",
                    "secretmanager.versions.access",
                    self.access,
                ),
                (
                    "GET",
                    p + "/{secret}/versions/{version}",
                    "secretmanager.versions.get",
                    self.get_version,
                ),
            ],
        )

    def _name(self, secret: str) -> str:
        return f"projects/{PROJECT_NUMBER}/secrets/{secret}"

    def _secret(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        s: dict[str, Any] | None = self.fake.state["secrets"].get(c.params["secret"])
        if s is None:
            raise not_found(f"Secret [{self._name(c.params['secret'])}] not found.")
        return s

    @staticmethod
    def _public(secret: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in secret.items() if not k.startswith("_")}

    def list_secrets(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        items = [self._public(s) for s in self.fake.state["secrets"].values()]
        return {"secrets": items, "totalSize": len(items)} if items else {}

    def create(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        secret_id = c.q("secretId") or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id):
            raise bad_request(f"Invalid secret id: {secret_id!r}")
        if secret_id in self.fake.state["secrets"]:
            raise already_exists(f"Secret [{self._name(secret_id)}] already exists.")
        body = c.body or {}
        if not body.get("replication"):
            raise bad_request("Secret.replication is required.")
        secret = {
            "name": self._name(secret_id),
            "replication": body["replication"],
            "createTime": now_rfc3339(),
            "etag": f'"{new_id()}"',
            "_versions": [],
        }
        if body.get("labels"):
            secret["labels"] = body["labels"]
        self.fake.state["secrets"][secret_id] = secret
        return self._public(secret)

    def get(self, c: Call) -> dict[str, Any]:
        return self._public(self._secret(c))

    def delete(self, c: Call) -> dict[str, Any]:
        self._secret(c)
        del self.fake.state["secrets"][c.params["secret"]]
        return {}

    def add_version(self, c: Call) -> dict[str, Any]:
        secret = self._secret(c)
        payload = (c.body or {}).get("payload") or {}
        data = base64.b64decode(payload.get("data", ""))
        crc = crc32c(data)
        if payload.get("dataCrc32c") is not None and int(payload["dataCrc32c"]) != crc:
            raise bad_request("Checksum mismatch: dataCrc32c does not match the payload data.")
        n = len(secret["_versions"]) + 1
        version = {
            "name": f"{secret['name']}/versions/{n}",
            "createTime": now_rfc3339(),
            "state": "ENABLED",
            "replicationStatus": {"automatic": {}},
            "etag": f'"{new_id()}"',
            "clientSpecifiedPayloadChecksum": payload.get("dataCrc32c") is not None,
            "_data": data,
        }
        secret["_versions"].append(version)
        return self._public(version)

    def _version(self, c: Call) -> dict[str, Any]:
        secret = self._secret(c)
        versions = [v for v in secret["_versions"] if v["state"] == "ENABLED"]
        want = c.params["version"]
        if want == "latest":
            if not versions:
                raise not_found(f"Secret [{secret['name']}] not found or has no versions.")
            latest: dict[str, Any] = versions[-1]
            return latest
        for v in secret["_versions"]:
            if v["name"].endswith(f"/versions/{want}"):
                found: dict[str, Any] = v
                return found
        raise not_found(f"Secret Version [{secret['name']}/versions/{want}] not found.")

    def list_versions(self, c: Call) -> dict[str, Any]:
        secret = self._secret(c)
        items = [self._public(v) for v in reversed(secret["_versions"])]
        return {"versions": items, "totalSize": len(items)} if items else {}

    def get_version(self, c: Call) -> dict[str, Any]:
        return self._public(self._version(c))

    def access(self, c: Call) -> dict[str, Any]:
        v = self._version(c)
        return {
            "name": v["name"],
            "payload": {
                "data": base64.b64encode(v["_data"]).decode(),
                "dataCrc32c": str(crc32c(v["_data"])),
            },
        }
