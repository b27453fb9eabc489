"""pytest fixtures that point the real ``gcloud`` CLI at local fakes.

Register with ``pytest_plugins = ["tests.fakes.plugin"]`` in ``tests/conftest.py``.

* ``fake_cloud_server`` (session): starts the GCP API fake (which is also the HTTP
  proxy and TLS man in the middle) and fake-gcs-server once.
* ``fake_cloud`` (function): the same servers with state reset, every API enabled,
  zero latencies, and a fresh ``CLOUDSDK_CONFIG`` / ``KUBECONFIG``.

Use ``subprocess.run(["gcloud", ...], env={**os.environ, **fake_cloud.env})``.  The
fixtures never touch ``os.environ``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .core import Operation, RequestLog
from .gcp_api import FakeGcpApi
from .gcs import FakeGcs
from .tls import TlsFiles, make_tls_files


@dataclass(frozen=True)
class CloudSnapshot:
    """What :meth:`FakeCloud.snapshot` keeps; opaque to tests."""

    api: dict[str, Any]
    gcs: list[dict[str, Any]]
    kubeconfig: str | None


class FakeCloud:
    """Handle on the running fakes plus the environment that makes gcloud use them."""

    def __init__(self, api: FakeGcpApi, gcs: FakeGcs, tls: TlsFiles, workdir: Path) -> None:
        self.api = api
        self.gcs = gcs
        self.tls = tls
        self.project: str = api.project
        self.project_number: str = api.project_number
        self.gcs_url: str = gcs.url
        self.env: dict[str, str] = self.make_env(workdir)

    # -- environment -------------------------------------------------------------------
    def make_env(self, workdir: Path) -> dict[str, str]:
        """Every variable gcloud needs, with its own config dir and kubeconfig under ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "gcloud-config"
        config.mkdir(exist_ok=True)
        token = workdir / "access-token"
        token.write_text("fake-access-token\n")
        kubeconfig = workdir / "kubeconfig"
        env = {
            "CLOUDSDK_CONFIG": str(config),
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
            "CLOUDSDK_CORE_PROJECT": self.project,
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_CORE_DISABLE_FILE_LOGGING": "1",  # ~0.2 s less per gcloud call
            "CLOUDSDK_CORE_SHOW_STRUCTURED_LOGS": "never",
            "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "1",
            "CLOUDSDK_METRICS_ENVIRONMENT": "fake-gcp-tests",
            # Everything goes through the fake's proxy; it tunnels *.googleapis.com
            # (Service Networking has no endpoint override) and relays local ports.
            "CLOUDSDK_PROXY_TYPE": "http",
            "CLOUDSDK_PROXY_ADDRESS": "127.0.0.1",
            "CLOUDSDK_PROXY_PORT": str(self.api.port),
            "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE": str(self.tls.ca_cert),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{self.gcs.url}/storage/v1/",
            "KUBECONFIG": str(kubeconfig),
            # Belt and braces: anything that bypasses gcloud's proxy settings and
            # reaches for real Google hosts fails fast instead of hanging.
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "NO_GCE_CHECK": "True",
        }
        env.update(self.api.endpoint_overrides())
        return env

    # -- state and log -----------------------------------------------------------------
    @property
    def requests(self) -> RequestLog:
        """Every request the fake answered (and every storage request it relayed)."""
        return self.api.requests

    @property
    def state(self) -> dict[str, Any]:
        """Live resource state (finishes due operations first, so it is never stale)."""
        self.api.tick()
        return self.api.state

    def operations(self, kind: str | None = None) -> list[Operation]:
        """Operations started so far, optionally only those of ``kind``."""
        ops = list(self.state["operations"].values())
        return [o for o in ops if kind is None or o.kind == kind]

    def call(self, method: str, api: str, path: str, body: Any = None, query: str = "") -> Any:
        """Send one request to the fake in-process (no gcloud, no HTTP) and return its JSON.

        ``api`` is the tag (``"compute"``, ``"sqladmin"``, ...) and ``path`` the path inside
        it, as logged in :attr:`requests` (``"/v1/projects/P/global/networks"``).  Handy
        for seeding state quickly; raises ``RuntimeError`` on an error answer.
        """
        raw = json.dumps(body).encode() if body is not None else b""
        status, payload = self.api.handle(method.upper(), api, path, query, raw, "in-process")
        if status >= 300:
            raise RuntimeError(f"{method} {api}{path} -> {status}: {payload}")
        return payload

    # -- controls ----------------------------------------------------------------------
    def set_latency(self, kind: str, seconds: float) -> None:
        """Operations of ``kind`` (or ``"default"``) finish ``seconds`` after they start."""
        self.api.set_latency(kind, seconds)

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
        """See :meth:`FakeGcpApi.fail_next`."""
        self.api.fail_next(
            leave_broken=leave_broken,
            method=method,
            path=path,
            kind=kind,
            status=status,
            message=message,
            times=times,
            operation_error=operation_error,
            reason=reason,
        )

    def reset(self, *, enable_apis: bool = True) -> None:
        """Empty project (optionally with every API enabled), empty bucket list, no rules."""
        self.api.reset(enable_apis=enable_apis)
        self.gcs.reset()

    def snapshot(self) -> CloudSnapshot:
        """Everything a test built (resources, buckets and objects, kubeconfig), to restore
        into another test's fresh fakes instead of building it again through gcloud."""
        kubeconfig = Path(self.env["KUBECONFIG"])
        return CloudSnapshot(
            api=self.api.snapshot(),
            gcs=self.gcs.snapshot(),
            kubeconfig=kubeconfig.read_text() if kubeconfig.exists() else None,
        )

    def restore(self, snapshot: CloudSnapshot) -> None:
        """This project as it was at :meth:`snapshot`, with an empty request log."""
        self.api.restore(snapshot.api)
        self.gcs.restore(snapshot.gcs)
        if snapshot.kubeconfig is not None:
            Path(self.env["KUBECONFIG"]).write_text(snapshot.kubeconfig)

    def reserve_sql_name(self, name: str) -> None:
        """Pretend an instance called ``name`` was deleted within the last week."""
        with self.api.lock:
            self.api.state["sql_reserved_names"].add(name)

    def enable_services(self, *names: str) -> None:
        """Enable services directly (no operation, no request log entry)."""
        with self.api.lock:
            self.api.state["services"].update(names)

    def disable_services(self, *names: str) -> None:
        """Disable services directly."""
        with self.api.lock:
            self.api.state["services"].difference_update(names)

    def bump_project_iam_etag(self) -> None:
        """Simulate someone else changing the project IAM policy (stales held etags)."""
        from .apis import etag

        with self.api.lock:
            self.api.state["iam_etag_counter"] += 1
            self.api.state["project_iam_policy"]["etag"] = etag(self.api.state["iam_etag_counter"])

    def concurrent_iam_change_after_get(self, times: int = 1) -> None:
        """Bump the project policy etag right after the next ``times`` getIamPolicy answers.

        This is the race real read-modify-write code has to survive: the policy it just
        read is stale by the time it writes.
        """
        self.api.after_next(
            "cloudresourcemanager.projects.getIamPolicy", self.bump_project_iam_etag, times
        )

    def finish_all_operations(self) -> None:
        """Complete every pending operation now, whatever its latency."""
        self.api.finish_all_operations()

    def finish_operations_in(self, seconds: float, kind: str | None = None) -> None:
        """Reschedule pending operations (of ``kind``) to finish ``seconds`` from now.

        Lets a test start an operation with a long latency, inspect the in-between state
        at leisure, then let a blocking ``wait`` command watch it finish.
        """
        with self.api.lock:
            due = time.monotonic() + seconds
            for op in self.api.state["operations"].values():
                if not op.done and (kind is None or op.kind == kind):
                    op.due = due


@pytest.fixture(scope="session")
def fake_cloud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCloud]:
    """Start the fakes once per session; yields a :class:`FakeCloud` with a session env."""
    root = tmp_path_factory.mktemp("fake-cloud")
    tls = make_tls_files(root / "tls")
    gcs = FakeGcs(log_path=root / "fake-gcs.log")
    gcs.start()
    api = FakeGcpApi(tls=tls, gcs_port=gcs.port)
    api.start()
    try:
        yield FakeCloud(api, gcs, tls, root / "session")
    finally:
        api.stop()
        gcs.stop()


@pytest.fixture
def fake_cloud(fake_cloud_server: FakeCloud, tmp_path: Path) -> FakeCloud:
    """Fresh project state (all APIs enabled, zero latency) and a fresh gcloud config."""
    fake_cloud_server.reset(enable_apis=True)
    return FakeCloud(
        fake_cloud_server.api, fake_cloud_server.gcs, fake_cloud_server.tls, tmp_path / "gcloud"
    )


@pytest.fixture
def fake_cloud_apis_disabled(fake_cloud: FakeCloud) -> FakeCloud:
    """Like ``fake_cloud`` but a brand-new project: every gated API answers SERVICE_DISABLED."""
    fake_cloud.reset(enable_apis=False)
    return fake_cloud


def gcloud_env(fake: FakeCloud) -> dict[str, str]:
    """``os.environ`` overlaid with the fake's variables (for subprocess calls)."""
    return {**os.environ, **fake.env}
