"""Per-API behaviour of the fake: resources, validation rules and operation shapes.

Each module owns one API (or a family: IAM covers project and service-account
policies).  Its class's ``routes()`` maps REST methods -- paths exactly as gcloud 528
sends them, learned with ``--log-http`` -- to handlers, and the handlers enforce the
rules real GCP enforces and that the product has to cope with (one Cloud SQL
operation at a time, reserved SQL names, IAM etags, ...).

Resource state lives in ``fake.state`` (see :func:`initial_state`) as plain dicts
shaped like the API resources, so tests can read and tweak it directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .common import ALL_SERVICES, SERVICE_TITLES, etag, initial_state
from .compute import Compute
from .container import Container
from .iam import Iam, IamPolicies, ResourceManager
from .nodepools import AcceleratorTypes, NodePools
from .operations import render_operation
from .secretmanager import SecretManager
from .servicenetworking import ServiceNetworking
from .serviceusage import ServiceUsage
from .sql import Sql

if TYPE_CHECKING:
    from ..core import Route
    from ..gcp_api import FakeGcpApi

__all__ = [
    "ALL_SERVICES",
    "SERVICE_TITLES",
    "build_routes",
    "etag",
    "initial_state",
    "render_operation",
]


class _Api(Protocol):
    def routes(self) -> list[Route]: ...


def build_routes(fake: FakeGcpApi) -> list[Route]:
    """All routes of all APIs, bound to ``fake``."""
    policies = IamPolicies(fake)
    usage = ServiceUsage(fake)
    apis: list[_Api] = [
        usage,
        ResourceManager(fake, policies),
        Iam(fake, policies),
        SecretManager(fake),
        Compute(fake),
        ServiceNetworking(fake),
        Sql(fake),
        Container(fake),
        NodePools(fake),  # GKE node pools and the autoscaling update
        AcceleratorTypes(fake),
    ]
    routes = [route for api in apis for route in api.routes()]
    return routes + usage.consumer_mgmt_routes()
