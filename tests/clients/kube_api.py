"""A recording stand-in for a Kubernetes API server, for `argo-workflows create` without a cluster.

`python flow.py argo-workflows create --only-json` prints only the WorkflowTemplate. The
CronWorkflow and the Sensor exist only as the objects Metaflow sends to the API server, so
the test lets the real client deploy to this server and keeps what it sent: every object
a POST or PUT carried, with the namespace of its URL. It holds no state beyond that: every
GET answers 404 Not Found (a cluster where the flow was never deployed), every DELETE
404 too, and a create echoes its body back with 201, as the API server does.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# /apis/<group>/<version>/namespaces/<namespace>/<plural>[/<name>]
_CUSTOM_OBJECT = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)"
    r"/(?P<plural>[^/?]+)(?:/(?P<name>[^/?]+))?"
)


@dataclass(frozen=True)
class Sent:
    """One object the client created or replaced."""

    method: str
    group: str
    plural: str
    namespace: str  # from the URL: where the object would live
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))


class RecordingKubeApi:
    """An HTTP server on a free loopback port that answers like an empty cluster."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kinds(self) -> dict[str, Sent]:
        """The last object sent per kind."""
        return {s.kind: s for s in self.sent}

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose only cluster is this server (plain HTTP, a dummy bearer token)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "recording", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
            "contexts": [
                {"name": "recording", "context": {"cluster": "recording", "user": "tester"}}
            ],
            "current-context": "recording",
        }
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self) -> None:
                self._answer(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                        "message": f"{self.path} not found",
                    },
                )

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                match = _CUSTOM_OBJECT.match(self.path)
                if match is None:
                    self._not_found()
                    return
                api.sent.append(
                    Sent(
                        self.command,
                        match["group"],
                        match["plural"],
                        match["namespace"],
                        body,
                    )
                )
                self._answer(201 if self.command == "POST" else 200, body)

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path))
                self._not_found()

            def do_DELETE(self) -> None:
                api.requests.append(("DELETE", self.path))
                self._not_found()

            def do_POST(self) -> None:
                api.requests.append(("POST", self.path))
                self._record()

            def do_PUT(self) -> None:
                api.requests.append(("PUT", self.path))
                self._record()

            def log_message(self, *_: Any) -> None:
                pass

        return Handler
