"""What the fake's transport and its per-API modules share: error shapes, the request log,
failure rules, operations and routing.

It imports nothing from the rest of ``tests.fakes``, so :mod:`tests.fakes.apis` and
:mod:`tests.fakes.gcp_api` both build on it without importing each other in a circle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PROJECT_NUMBER = "123456789012"

#: Path prefix (first URL segment) -> API tag.  The tag is also the host label
#: under ``googleapis.com`` when a request arrives through the TLS tunnel.
API_TAGS = (
    "serviceusage",
    "cloudresourcemanager",
    "iam",
    "secretmanager",
    "container",
    "sqladmin",
    "compute",
    "servicenetworking",
    # `gcloud services operations describe|wait` reads "acf" (enable) operations here.
    "serviceconsumermanagement",
)

#: APIs that answer 403 SERVICE_DISABLED until enabled through Service Usage.
GATED_SERVICES = {
    "compute": ("compute.googleapis.com", "Compute Engine API"),
    "container": ("container.googleapis.com", "Kubernetes Engine API"),
    "sqladmin": ("sqladmin.googleapis.com", "Cloud SQL Admin API"),
    "servicenetworking": ("servicenetworking.googleapis.com", "Service Networking API"),
    "iam": ("iam.googleapis.com", "Identity and Access Management (IAM) API"),
    "secretmanager": ("secretmanager.googleapis.com", "Secret Manager API"),
}

#: APIs whose errors use the older ``errors: [{domain, reason, message}]`` shape.
LEGACY_ERROR_APIS = {"compute", "sqladmin"}

GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
_LEGACY_REASON = {
    400: "invalid",
    403: "forbidden",
    404: "notFound",
    409: "alreadyExists",
    412: "conditionNotMet",
    500: "backendError",
    503: "backendError",
}

#: google.rpc.Code numbers, used in long-running operation errors.
RPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}


def now_rfc3339() -> str:
    """UTC timestamp in the format the APIs use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
class ApiError(Exception):
    """An HTTP error answer in GCP's JSON error shape.

    ``status`` is the google.rpc status name (``ALREADY_EXISTS``); ``reason`` goes into
    the legacy ``errors[]`` list (compute / Cloud SQL) and into an ``ErrorInfo``
    detail for the newer APIs when given.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        details: list[dict[str, Any]] | None = None,
        domain: str = "global",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or GRPC_STATUS.get(code, "UNKNOWN")
        self.reason = reason
        self.details = details
        self.domain = domain

    def body(self, api: str) -> dict[str, Any]:
        """The JSON document for ``api`` (legacy or google.rpc flavour)."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if api not in LEGACY_ERROR_APIS:
            # Compute and Cloud SQL send no status name, which is why gcloud prints
            # "HTTPError 409: ..." for them and "ALREADY_EXISTS: ..." for the others.
            err["status"] = self.status
        else:
            err["errors"] = [
                {
                    "message": self.message,
                    "domain": self.domain,
                    "reason": self.reason or _LEGACY_REASON.get(self.code, "invalid"),
                }
            ]
        if self.details is not None:
            err["details"] = self.details
        elif self.reason and api not in LEGACY_ERROR_APIS:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": f"{api}.googleapis.com",
                }
            ]
        return {"error": err}


def not_found(message: str, **kw: Any) -> ApiError:
    """404 NOT_FOUND."""
    return ApiError(404, message, **kw)


def already_exists(message: str, **kw: Any) -> ApiError:
    """409 ALREADY_EXISTS."""
    return ApiError(409, message, **kw)


def bad_request(message: str, **kw: Any) -> ApiError:
    """400 INVALID_ARGUMENT (or another status passed as ``status=``)."""
    return ApiError(400, message, **kw)


def service_disabled(project: str, service: str, title: str, api: str) -> ApiError:
    """The 403 every Google API answers before it has been enabled in a project."""
    url = f"https://console.developers.google.com/apis/api/{service}/overview?project={PROJECT_NUMBER}"
    message = (
        f"{title} has not been used in project {PROJECT_NUMBER} before or it is disabled. "
        f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a "
        "few minutes for the action to propagate to our systems and retry."
    )
    err = ApiError(
        403,
        message,
        status="PERMISSION_DENIED",
        reason="accessNotConfigured" if api in LEGACY_ERROR_APIS else "SERVICE_DISABLED",
        domain="usageLimits",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {
                    "service": service,
                    "consumer": f"projects/{PROJECT_NUMBER}",
                    "activationUrl": url,
                    "serviceTitle": title,
                    "containerInfo": PROJECT_NUMBER,
                },
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Google developers console API activation", "url": url}],
            },
        ],
    )
    return err


# --------------------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------------------
_READ_ONLY_VERBS = (":getIamPolicy", ":testIamPermissions", ":access", ":getServerConfig")


@dataclass
class Request:
    """One request the fake answered (or forwarded), for assertions in tests."""

    method: str
    api: str
    path: str  # path inside the API, e.g. "/v1/projects/p/global/networks/n"
    query: dict[str, list[str]]
    body: Any
    time: float
    host: str = ""
    kind: str | None = None  # route kind, e.g. "compute.networks.insert"
    status: int = 0

    @property
    def is_mutating(self) -> bool:
        """True for requests that change state (POST/PUT/PATCH/DELETE minus read verbs)."""
        if self.method in ("GET", "HEAD", "OPTIONS"):
            return False
        if self.path.endswith(_READ_ONLY_VERBS):
            return False
        return not (self.api == "compute" and self.path.endswith("/wait"))


class RequestLog(list[Request]):
    """The request log; a list with a few filters that tests keep needing."""

    def mutating(self) -> list[Request]:
        """Requests that change state (see :attr:`Request.is_mutating`)."""
        return [r for r in self if r.is_mutating]

    def of_kind(self, *kinds: str) -> list[Request]:
        """Requests whose route kind is one of ``kinds``."""
        return [r for r in self if r.kind in kinds]

    def for_api(self, api: str) -> list[Request]:
        """Requests that went to ``api`` (a tag like ``"sqladmin"`` or ``"storage"``)."""
        return [r for r in self if r.api == api]


# --------------------------------------------------------------------------------------
# Failure injection
# --------------------------------------------------------------------------------------
@dataclass
class FailRule:
    """Make the next ``times`` matching requests (or operations) fail."""

    method: str | None
    path: re.Pattern[str] | None
    kind: str | None
    status: int
    message: str
    times: int
    operation_error: bool
    reason: str | None = None
    leave_broken: bool = False

    def matches(self, method: str, path: str, kind: str | None) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if self.path and not self.path.search(path):
            return False
        return not (self.kind and self.kind != kind)


# --------------------------------------------------------------------------------------
# Long-running operations
# --------------------------------------------------------------------------------------
@dataclass
class OpError:
    """Why an operation failed: a google.rpc status name plus a message."""

    status: str
    message: str
    http_code: int = 400
    sql_code: str | None = None  # Cloud SQL error code string, e.g. "INTERNAL_ERROR"


@dataclass
class Operation:
    """A long-running operation; finishes lazily once its due time has passed.

    ``on_done`` applies the state change; it may raise :class:`ApiError` to make the
    operation fail at completion time.  ``on_error`` models what a real failure leaves
    behind (e.g. a Cloud SQL instance in state FAILED); ``on_abort`` runs instead when the
    failure was injected with ``fail_next(..., operation_error=True)`` and rolls the
    resource back as if the request had never been made.
    """

    name: str
    kind: str
    api: str
    due: float
    op_type: str = ""
    target: dict[str, Any] = field(default_factory=dict)  # API-specific fields
    on_done: Callable[[], Any] | None = None
    on_error: Callable[[], None] | None = None
    on_abort: Callable[[], None] | None = None
    pending_error: OpError | None = None
    injected: bool = False
    done: bool = False
    error: OpError | None = None
    response: dict[str, Any] | None = None
    insert_time: str = field(default_factory=now_rfc3339)
    end_time: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------
Handler = Callable[["Call"], Any]


@dataclass
class Route:
    """``method`` + anchored regex on the path inside one API."""

    api: str
    method: str
    pattern: re.Pattern[str]
    kind: str
    handler: Handler


@dataclass
class Call:
    """What a handler gets: the parsed request plus the regex groups."""

    method: str
    api: str
    path: str
    query: dict[str, list[str]]
    body: Any
    params: dict[str, str]
    base_url: str  # e.g. "http://127.0.0.1:1234/compute/v1"
    kind: str

    def q(self, name: str, default: str | None = None) -> str | None:
        """First value of query parameter ``name``."""
        vals = self.query.get(name)
        return vals[0] if vals else default


@dataclass
class Response:
    """A non-JSON or non-200 success answer."""

    status: int = 200
    body: Any = None


@dataclass
class Deferred:
    """Returned by a handler that wants to answer later (e.g. compute ``operations.wait``).

    The lock is released while sleeping until ``until`` (monotonic), then ``then()``
    is called with the lock held; it may return another :class:`Deferred`.
    """

    until: float
    then: Callable[[], Any]


def iter_routes(api: str, specs: Iterable[tuple[str, str, str, Handler]]) -> list[Route]:
    """Compile ``(method, path regex, kind, handler)`` tuples for one API.

    ``{name}`` in the regex becomes a named group matching one path segment;
    ``{name:rest}`` matches the remainder (slashes included).
    """
    routes = []
    for method, pattern, kind, handler in specs:
        rx = re.sub(r"\{(\w+):rest\}", r"(?P<\1>.+)", pattern)
        rx = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/:]+)", rx)
        routes.append(Route(api, method, re.compile(rx), kind, handler))
    return routes
