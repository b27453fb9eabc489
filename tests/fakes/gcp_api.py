"""A stateful, in-memory fake of the Google Cloud REST APIs that ``gcloud`` talks to.

One ``ThreadingHTTPServer`` on a loopback port plays three roles:

* **API server** for every API that gcloud lets us redirect with
  ``CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>``.  Each API gets its own path prefix
  (``/compute/v1/...``, ``/sqladmin/sql/v1beta4/...``, ``/iam/v1/...``), so routing
  never has to guess which API a ``/v1/projects/...`` path belongs to.
* **HTTP proxy** (``CLOUDSDK_PROXY_*``).  Once a proxy is configured gcloud sends *all*
  traffic through it, including plain-http requests to the overrides above (as
  absolute URIs).  Those are routed to ourselves, or forwarded to fake-gcs-server;
  the proxy never connects anywhere except 127.0.0.1.
* **TLS man in the middle** for ``CONNECT *.googleapis.com:443`` — needed for Service
  Networking, which has no endpoint override.  The tunnel is terminated with the
  test CA's ``*.googleapis.com`` certificate and served by the same router.

The per-API behaviour lives in :mod:`tests.fakes.apis`; the error shapes, request log,
failure rules, operations and routing types they share live in :mod:`tests.fakes.core`;
this module holds the transport, the dispatcher and the operation engine.
"""

from __future__ import annotations

import copy
import dataclasses
import http.client
import itertools
import json
import re
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .apis import ALL_SERVICES, build_routes, initial_state, render_operation
from .core import (
    API_TAGS,
    GATED_SERVICES,
    GRPC_STATUS,
    PROJECT_NUMBER,
    ApiError,
    Call,
    Deferred,
    FailRule,
    Operation,
    OpError,
    Request,
    RequestLog,
    Response,
    Route,
    not_found,
    now_rfc3339,
    service_disabled,
)
from .tls import TlsFiles


# --------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------
class FakeGcpApi:
    """The stateful fake.  Start it once, :meth:`reset` it between tests.

    All state lives in :attr:`state` and is guarded by one lock; handlers run with
    the lock held, so every request sees a consistent world.
    """

    DEFAULT_LATENCY = 0.0

    def __init__(
        self,
        *,
        project: str = "fake-project",
        tls: TlsFiles | None = None,
        gcs_port: int | None = None,
    ) -> None:
        self.project = project
        self.project_number = PROJECT_NUMBER
        self.tls = tls
        self.gcs_port = gcs_port
        self.lock = threading.RLock()
        self.requests = RequestLog()
        self.state: dict[str, Any] = {}
        self.latency: dict[str, float] = {}
        self._fail_rules: list[FailRule] = []
        self._after_hooks: list[tuple[str, int, Callable[[], None]]] = []
        self._routes: dict[str, list[Route]] = {}
        for route in build_routes(self):
            self._routes.setdefault(route.api, []).append(route)
        self._render_operation = render_operation
        self._counter = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ssl_context = tls.server_context() if tls else None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen on a free loopback port in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint_overrides(self) -> dict[str, str]:
        """``CLOUDSDK_API_ENDPOINT_OVERRIDES_*`` values pointing gcloud at this fake."""
        u = self.url
        return {
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SERVICEUSAGE": f"{u}/serviceusage/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDRESOURCEMANAGER": f"{u}/cloudresourcemanager/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM": f"{u}/iam/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": f"{u}/secretmanager/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CONTAINER": f"{u}/container/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SQL": f"{u}/sqladmin/",
            # compute's base URL has a path, and gcloud uses a path-ful override verbatim.
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": f"{u}/compute/v1/",
        }

    # -- state control -----------------------------------------------------------------
    def reset(self, *, enable_apis: bool = True) -> None:
        """Forget every resource, operation, log entry, latency and failure rule."""
        with self.lock:
            self.state.clear()
            self.state.update(initial_state(self))
            if enable_apis:
                self.state["services"].update(ALL_SERVICES)
            self.requests.clear()
            self.latency.clear()
            self._fail_rules.clear()
            self._after_hooks.clear()

    def snapshot(self) -> dict[str, Any]:
        """A copy of every resource, with all operations finished: a world to restore later.

        Finished operations keep what ``describe`` shows and drop their callbacks (which
        hold the fake itself and have run).
        """
        self.finish_all_operations()
        with self.lock:
            operations = {
                name: dataclasses.replace(op, on_done=None, on_error=None, on_abort=None)
                for name, op in self.state["operations"].items()
            }
            rest = {k: v for k, v in self.state.items() if k != "operations"}
            return {**copy.deepcopy(rest), "operations": copy.deepcopy(operations)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put back a :meth:`snapshot`: its resources, with no log, latency or failure rule."""
        self.reset()
        with self.lock:
            self.state.clear()
            self.state.update(copy.deepcopy(snapshot))

    def set_latency(self, kind: str, seconds: float) -> None:
        """Operations of ``kind`` (or every kind, for ``"default"``) take ``seconds``."""
        with self.lock:
            self.latency[kind] = seconds

    def latency_for(self, kind: str) -> float:
        return self.latency.get(kind, self.latency.get("default", self.DEFAULT_LATENCY))

    def fail_next(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        kind: str | None = None,
        status: int = 500,
        message: str = "injected failure",
        times: int = 1,
        operation_error: bool = False,
        reason: str | None = None,
        leave_broken: bool = False,
    ) -> None:
        """Make the next ``times`` matching requests fail with ``status``/``message``.

        Match on ``method`` and/or a ``path`` regex (searched in the API-internal path,
        e.g. ``r"/instances$"``) and/or a route ``kind`` (``"sql.instances.insert"``).
        With ``operation_error=True`` the request is accepted and the long-running
        operation it starts finishes with the error instead (``kind`` should then name
        the operation kind).
        """
        if not (method or path or kind):
            raise ValueError("fail_next needs method, path or kind")
        with self.lock:
            self._fail_rules.append(
                FailRule(
                    method=method,
                    path=re.compile(path) if path else None,
                    kind=kind,
                    status=status,
                    message=message,
                    times=times,
                    operation_error=operation_error,
                    reason=reason,
                    leave_broken=leave_broken,
                )
            )

    def after_next(self, kind: str, hook: Callable[[], None], times: int = 1) -> None:
        """Run ``hook`` (with the state lock held) right after a ``kind`` request is answered.

        Lets a test interleave a "concurrent" change between two requests of one gcloud
        command, e.g. bump the IAM etag just after ``getIamPolicy``.
        """
        with self.lock:
            self._after_hooks.append((kind, times, hook))

    def _take_rule(
        self, method: str, path: str, kind: str | None, *, operation_error: bool
    ) -> FailRule | None:
        for rule in self._fail_rules:
            if rule.operation_error == operation_error and rule.matches(method, path, kind):
                rule.times -= 1
                if rule.times <= 0:
                    self._fail_rules.remove(rule)
                return rule
        return None

    # -- operations --------------------------------------------------------------------
    def new_operation(
        self,
        kind: str,
        api: str,
        *,
        op_type: str = "",
        target: dict[str, Any] | None = None,
        on_done: Callable[[], Any] | None = None,
        on_error: Callable[[], None] | None = None,
        on_abort: Callable[[], None] | None = None,
        error: OpError | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Operation:
        """Register an operation of ``kind``; it completes after :meth:`latency_for`."""
        injected = False
        if error is None:
            rule = self._take_rule("", "", kind, operation_error=True)
            if rule is not None:
                status = GRPC_STATUS.get(rule.status, "INTERNAL")
                error = OpError(status, rule.message, rule.status, rule.reason or status)
                injected = not rule.leave_broken
        op = Operation(
            name=name or self.new_op_name(api),
            kind=kind,
            api=api,
            due=time.monotonic() + self.latency_for(kind),
            op_type=op_type,
            target=target or {},
            on_done=on_done,
            on_error=on_error,
            on_abort=on_abort,
            pending_error=error,
            injected=injected,
            metadata=metadata or {},
        )
        self.state["operations"][op.name] = op
        return op

    def new_op_name(self, api: str) -> str:
        n = next(self._counter)
        if api == "sqladmin":
            return str(uuid.uuid4())
        if api == "compute":
            return f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}-{n}"
        if api == "container":
            return f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
        if api == "servicenetworking":
            return f"operations/pssn.p24-{PROJECT_NUMBER}-{uuid.uuid4()}"
        return f"operations/acf.p2-{PROJECT_NUMBER}-{uuid.uuid4()}"

    def tick(self) -> None:
        """Finish every operation whose due time has passed, oldest first."""
        with self.lock:
            now = time.monotonic()
            due = [op for op in self.state["operations"].values() if not op.done and op.due <= now]
            for op in sorted(due, key=lambda o: o.due):
                self._finish(op)

    def _finish(self, op: Operation) -> None:
        op.done = True
        op.end_time = now_rfc3339()
        if op.pending_error is None and op.on_done is not None:
            try:
                result = op.on_done()
                if isinstance(result, dict):
                    op.response = result
            except ApiError as exc:
                op.pending_error = OpError(exc.status, exc.message, exc.code, exc.reason)
        if op.pending_error is not None:
            op.error = op.pending_error
            cleanup = op.on_abort if op.injected and op.on_abort else op.on_error
            if cleanup is not None:
                cleanup()

    def finish_all_operations(self) -> None:
        """Complete every pending operation now, regardless of latency."""
        with self.lock:
            for op in self.state["operations"].values():
                op.due = min(op.due, time.monotonic())
        self.tick()

    def render_operation(self, op: Operation, base_url: str) -> dict[str, Any]:
        return self._render_operation(self, op, base_url)

    # -- request handling --------------------------------------------------------------
    def handle(
        self, method: str, api: str, path: str, raw_query: str, raw_body: bytes, host: str
    ) -> tuple[int, dict[str, Any] | None]:
        """Answer one API request; returns (HTTP status, JSON body)."""
        query = parse_qs(raw_query, keep_blank_values=True)
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        rec = Request(method, api, path, query, body, time.time(), host)
        with self.lock:
            self.requests.append(rec)
            self.tick()
            try:
                route, params = self._match(api, method, path)
                rec.kind = route.kind
                result: Any = self._run(route, params, rec)
            except ApiError as exc:
                result = exc
        # A handler may ask to wait without holding the lock (compute's operations.wait).
        while isinstance(result, Deferred):
            time.sleep(max(0.0, min(result.until - time.monotonic(), 30.0)))
            with self.lock:
                self.tick()
                try:
                    result = result.then()
                except ApiError as exc:
                    result = exc
        with self.lock:
            if isinstance(result, ApiError):
                status, payload = result.code, result.body(api)
            elif isinstance(result, Response):
                status, payload = result.status, result.body
            else:
                status, payload = 200, result
            rec.status = status
            for hook in list(self._after_hooks):
                kind, times, fn = hook
                if kind == rec.kind and status < 300:
                    self._after_hooks.remove(hook)
                    if times > 1:
                        self._after_hooks.append((kind, times - 1, fn))
                    fn()
        return status, payload

    def _match(self, api: str, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self._routes.get(api, []):
            m = route.pattern.fullmatch(path)
            if m:
                if route.method == method:
                    return route, m.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, f"Method {method} not allowed on {path}", status="UNIMPLEMENTED")
        raise not_found(f"The fake has no route for {method} {api}{path}")

    def _run(self, route: Route, params: dict[str, str], rec: Request) -> Any:
        rule = self._take_rule(rec.method, rec.path, route.kind, operation_error=False)
        if rule is not None:
            raise ApiError(rule.status, rule.message, reason=rule.reason)
        gate = GATED_SERVICES.get(route.api)
        if gate and gate[0] not in self.state["services"]:
            raise service_disabled(self.project, gate[0], gate[1], route.api)
        call = Call(
            method=rec.method,
            api=route.api,
            path=rec.path,
            query=rec.query,
            body=rec.body,
            params=params,
            base_url=self.base_url(route.api),
            kind=route.kind,
        )
        return route.handler(call)

    def base_url(self, api: str) -> str:
        """Base URL for links in responses (what gcloud used to reach us)."""
        if api == "compute":
            return f"{self.url}/compute/v1"
        if api == "sqladmin":
            return f"{self.url}/sqladmin/sql/v1beta4"
        if api == "servicenetworking":
            return "https://servicenetworking.googleapis.com/v1"
        return f"{self.url}/{api}/v1"


# --------------------------------------------------------------------------------------
# HTTP transport: API server, proxy and TLS tunnel
# --------------------------------------------------------------------------------------
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


_STORAGE_LAYOUT_RE = re.compile(r"/storage/v1/b/([^/]+)/storageLayout")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: FakeGcpApi


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that also understands proxy requests and CONNECT."""

    protocol_version = "HTTP/1.1"
    server: _Server
    tunnel_host: str | None = None
    timeout = 60
    _gcs_headers: list[tuple[str, str]] = []  # noqa: RUF012 - replaced per response

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    # -- CONNECT (TLS man in the middle) -----------------------------------------------
    def do_CONNECT(self) -> None:
        host = self.path.rsplit(":", 1)[0].lower()
        ctx = self.server.api._ssl_context
        if ctx is None or not host.endswith(".googleapis.com"):
            self._send_raw(403, b"fake proxy only tunnels to *.googleapis.com\n", "text/plain")
            self.close_connection = True
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            tls = ctx.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        self.connection = self.request = tls
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)  # type: ignore[attr-defined]
        self.tunnel_host = host
        self.close_connection = False

    # -- everything else ---------------------------------------------------------------
    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        api_server = self.server.api
        target = self.path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            host = parts.netloc.lower()
            path, query = parts.path or "/", parts.query
        else:
            host = (self.tunnel_host or self.headers.get("Host") or "").lower()
            path, _, query = target.partition("?")
        body = self._read_body()

        hostname, _, port = host.partition(":")
        local = hostname in ("127.0.0.1", "localhost")
        if local and port and api_server.gcs_port and int(port) == api_server.gcs_port:
            self._forward_to_gcs(path, query, body, host)
            return
        if hostname == "storage.googleapis.com" and api_server.gcs_port:
            self._forward_to_gcs(path, query, body, host)
            return
        if local and port and int(port) != api_server.port:
            self._send_json(502, {"error": {"code": 502, "message": "proxy: unknown local port"}})
            return

        if local or not hostname:
            # /compute/v1/... -> ("compute", "/v1/..."); /sqladmin/sql/... -> ("sqladmin", "/sql/...")
            seg, _, rest = path.lstrip("/").partition("/")
            api, inner = seg, "/" + rest
        elif hostname.endswith(".googleapis.com"):
            api, inner = hostname.split(".", 1)[0], path
            if api == "compute" and inner.startswith("/compute/"):
                inner = inner[len("/compute") :]
        else:
            self._send_json(502, {"error": {"code": 502, "message": f"proxy refuses {host}"}})
            return
        if api not in API_TAGS:
            self._send_json(404, {"error": {"code": 404, "message": f"unknown API {api!r}"}})
            return
        status, payload = api_server.handle(self.command, api, inner, query, body, host)
        self._send_json(status, payload)

    def _forward_to_gcs(self, path: str, query: str, body: bytes, host: str) -> None:
        """Relay a proxied request to fake-gcs-server on 127.0.0.1 (and nowhere else)."""
        api_server = self.server.api
        assert api_server.gcs_port
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"127.0.0.1:{api_server.gcs_port}"
        headers["Content-Length"] = str(len(body))
        target = path + (f"?{query}" if query else "")
        layout = _STORAGE_LAYOUT_RE.fullmatch(path)
        if layout and self.command == "GET":
            # fake-gcs-server lacks buckets.getStorageLayout, which `gcloud storage rm -r`
            # calls after deleting objects; answer it from the bucket's metadata.
            status, reason, data = self._gcs(
                "GET", f"/storage/v1/b/{layout.group(1)}", b"", headers
            )
            if status == 200:
                bucket = json.loads(data)
                data = json.dumps(
                    {
                        "kind": "storage#storageLayout",
                        "bucket": bucket.get("name"),
                        "location": bucket.get("location", "US-CENTRAL1"),
                        "locationType": bucket.get("locationType", "region"),
                        "hierarchicalNamespace": {"enabled": False},
                    }
                ).encode()
        else:
            status, reason, data = self._gcs(self.command, target, body, headers)
        if self.command == "DELETE" and status == 200 and data.strip() == b"null":
            # fake-gcs-server answers DELETE with 200 "null"; gcloud's apitools client
            # then crashes ("'NoneType' object has no attribute 'items'").  Real GCS
            # answers 204 No Content.
            status, reason, data = 204, "No Content", b""
        with api_server.lock:
            api_server.requests.append(
                Request(
                    self.command,
                    "storage",
                    path,
                    parse_qs(query),
                    None,
                    time.time(),
                    host,
                    kind="storage",
                    status=status,
                )
            )
        self.send_response(status, reason)
        for k, v in self._gcs_headers:
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _gcs(
        self, method: str, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        port = self.server.api.gcs_port
        assert port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            self._gcs_headers = resp.getheaders()
            return resp.status, resp.reason, resp.read()
        finally:
            conn.close()

    def _send_json(self, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self._send_raw(status, data, "application/json; charset=UTF-8")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
