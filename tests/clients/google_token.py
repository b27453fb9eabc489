"""Google credentials for the real client without Google: a key made now, a local token endpoint.

Metaflow's `gs` datastore calls `google.auth.default()`. A service-account key file is the
one credential type whose `token_uri` google-auth honours (it ignores it in authorized-user
files), so the file points it at this endpoint. The endpoint checks what Google's would:
the JWT-bearer grant, an assertion signed RS256 by the key in the file, issued by the
file's account. It answers with a short-lived dummy access token; fake-gcs-server takes
any bearer token.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class Grant:
    """One token request as the endpoint saw it."""

    claims: dict[str, Any]
    signed_by_key: bool


@dataclass
class TokenEndpoint:
    """A service account (key generated at start) and the endpoint that trades its JWTs."""

    email: str
    project: str
    grants: list[Grant] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.token_uri = f"http://127.0.0.1:{self._server.server_port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def write_key_file(self, path: Path) -> Path:
        """The service-account JSON a user would download, readable by its owner only."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key_file = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": "test-key",
            "private_key": pem,
            "client_email": self.email,
            "client_id": "1",
            "token_uri": self.token_uri,
        }
        path.touch(mode=0o600)
        path.write_text(json.dumps(key_file), encoding="utf-8")
        return path

    def _check(self, form: dict[str, list[str]]) -> Grant | None:
        if form.get("grant_type") != [JWT_BEARER] or len(form.get("assertion", [])) != 1:
            return None
        header, payload, signature = form["assertion"][0].split(".")
        try:
            self._key.public_key().verify(
                _b64decode(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            signed = True
        except InvalidSignature:
            signed = False
        return Grant(json.loads(_b64decode(payload)), signed)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = endpoint._check(form)
                ok = grant is not None and grant.signed_by_key
                if grant is not None:
                    endpoint.grants.append(grant)
                answer: dict[str, Any] = (
                    {
                        "access_token": "test-access-token",
                        "expires_in": 3600,
                        "token_type": "Bearer",
                    }
                    if ok
                    else {"error": "invalid_grant"}
                )
                data = json.dumps(answer).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler
