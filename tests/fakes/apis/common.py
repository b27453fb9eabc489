"""Shared pieces of the per-API fakes: known services, ids, etags, helpers."""

from __future__ import annotations

import base64
import itertools
import re
from typing import TYPE_CHECKING, Any

from ..core import ApiError, Call, not_found

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi

#: Services the fake knows; ``reset(enable_apis=True)`` enables all of them.
SERVICE_TITLES = {
    "compute.googleapis.com": "Compute Engine API",
    "container.googleapis.com": "Kubernetes Engine API",
    "sqladmin.googleapis.com": "Cloud SQL Admin API",
    "servicenetworking.googleapis.com": "Service Networking API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "secretmanager.googleapis.com": "Secret Manager API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-api.googleapis.com": "Google Cloud Storage JSON API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "serviceusage.googleapis.com": "Service Usage API",
    "logging.googleapis.com": "Cloud Logging API",
    "monitoring.googleapis.com": "Cloud Monitoring API",
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "containerregistry.googleapis.com": "Container Registry API",
    "oslogin.googleapis.com": "Cloud OS Login API",
    "pubsub.googleapis.com": "Cloud Pub/Sub API",
    "dns.googleapis.com": "Cloud DNS API",
    "cloudkms.googleapis.com": "Cloud Key Management Service (KMS) API",
    "sql-component.googleapis.com": "Cloud SQL",
}
ALL_SERVICES = frozenset(SERVICE_TITLES)

NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
SA_ID_RE = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
SQL_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,96}[a-z0-9])?")
WI_MEMBER_RE = re.compile(
    r"serviceAccount:(?P<pool>[^\[\]]+\.svc\.id\.goog)\[(?P<ns>[^/\]]+)/(?P<ksa>[^\]]+)\]"
)
MEMBER_TYPES = (
    "user:",
    "group:",
    "domain:",
    "serviceAccount:",
    "principal:",
    "principalSet:",
    "deleted:",
)
_ids = itertools.count(1000000000000000001)


def new_id() -> str:
    return str(next(_ids))


def etag(n: int) -> str:
    return base64.b64encode(b"BwY" + n.to_bytes(5, "big")).decode()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli); Secret Manager returns it and gcloud checks it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def initial_state(fake: FakeGcpApi) -> dict[str, Any]:
    """A brand-new project: nothing enabled, an owner in the IAM policy."""
    return {
        "services": set(),
        "networks": {},  # name -> compute#network
        "subnetworks": {},  # "region/name" -> compute#subnetwork
        "addresses": {},  # name -> compute#address (global)
        "routers": {},  # "region/name" -> compute#router (its Cloud NATs in "nats")
        "connections": {},  # network name -> servicenetworking Connection
        "service_accounts": {},  # email -> iam ServiceAccount
        "sa_iam_policies": {},  # email -> Policy
        "project_iam_policy": {
            "version": 1,
            "etag": etag(1),
            "bindings": [{"role": "roles/owner", "members": ["user:owner@example.com"]}],
        },
        "iam_etag_counter": 1,
        "secrets": {},  # name -> Secret (+ "_versions": list)
        "sql_instances": {},  # name -> sql#instance
        "sql_reserved_names": set(),  # deleted instance names (reusable after a week)
        "sql_final_backups": [],  # what instances.delete?enableFinalBackup=true kept
        # Networks whose private-services connection a deleted Cloud SQL instance still
        # uses: Cloud SQL lets go of it days after the delete, not at once.
        "psa_lingering": set(),
        "sql_databases": {},  # instance -> {db name -> sql#database}
        "sql_users": {},  # instance -> {user name -> sql#user (incl. "password")}
        "clusters": {},  # "location/name" -> container Cluster
        "workload_pools": set(),  # "P.svc.id.goog" once a WI cluster has come up
        "operations": {},  # name -> Operation
    }


def check_project(fake: FakeGcpApi, project: str) -> None:
    if project not in (fake.project, fake.project_number):
        raise ApiError(
            403,
            f"Permission denied on resource project {project}.",
            status="PERMISSION_DENIED",
        )


def get_lro(fake: FakeGcpApi, c: Call, name: str) -> dict[str, Any]:
    op = fake.state["operations"].get(name)
    if op is None:
        raise not_found(f"Operation '{name}' not found.")
    return fake.render_operation(op, c.base_url)


def address_network(addr: dict[str, Any]) -> str:
    """Network name of a compute address ("" when it has none)."""
    return str(addr.get("network", "")).rstrip("/").rsplit("/", 1)[-1]


def sql_network(instance: dict[str, Any]) -> str:
    ref = instance.get("settings", {}).get("ipConfiguration", {}).get("privateNetwork", "")
    return ref.rstrip("/").rsplit("/", 1)[-1] if ref else ""


def last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]
