"""The real Metaflow client, fed the config `services.up` writes, against local stand-ins.

Every flow here runs as a subprocess exactly as a data scientist types it
(`python flow.py run`, `python flow.py argo-workflows create`, ...), with:

- the Metaflow config written by the same `nextsteps` calls services.up makes, into a
  private METAFLOW_HOME (and a private HOME, so nothing of the developer's leaks in);
- fake-gcs-server as Cloud Storage (STORAGE_EMULATOR_HOST), holding the stack's datastore
  bucket;
- Google credentials made at test time (tests/clients/google_token.py).

Nothing here reaches a network beyond the loopback stand-ins.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from metaflow_gcp import nextsteps
from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.config import Names
from metaflow_gcp.kube_names import ARGO_EVENTS_NS, Accounts
from tests.charts.conftest import load_yaml, render_chart
from tests.clients.cluster import Installed
from tests.clients.crds import Validator, load_crds, read_yaml_files
from tests.clients.google_token import TokenEndpoint
from tests.fakes.gcs import FakeGcs

FLOWS = Path(__file__).parent / "flows"
REPO_ROOT = Path(__file__).resolve().parents[2]
# A stack with everything on: Argo (with Argo Events) and Airflow.
SETTINGS = {"org_prefix": "acme", "project": "acme-ml", "region": "europe-west4", "stack": "dev"}
SWITCHES = {"deploy_argo": True, "deploy_airflow": True}
USER = "data-scientist"
SUBPROCESS_TIMEOUT = 120


# ---------------------------------------------------------------------------------------
# The stack and the config services.up writes for it


@dataclass(frozen=True)
class ClientStack:
    """One stack's names and the Metaflow config files services.up wrote for it."""

    stack: Stack
    home: Path  # METAFLOW_HOME
    written: tuple[nextsteps.Written, ...]

    @property
    def names(self) -> Names:
        return self.stack.names

    @property
    def accounts(self) -> Accounts:
        return Accounts.of(self.stack.names)

    def profile_for(self, wanted: str) -> str:
        """What to set METAFLOW_PROFILE to for the profile services.up calls `wanted`."""
        return next(w.profile for w in self.written if w.wanted.name == wanted)

    def config(self, profile: str = "") -> dict[str, str]:
        data: dict[str, str] = json.loads(
            (self.home / nextsteps.config_file_name(profile)).read_text(encoding="utf-8")
        )
        return data


def write_config_as_services_up_does(stack: Stack, home: Path) -> list[nextsteps.Written]:
    """The two calls `services.up` ends with, writing into `home` instead of ~/.metaflowconfig."""
    profiles = nextsteps.metaflow_profiles(
        stack.names, argo=stack.settings.deploy_argo, airflow=stack.settings.deploy_airflow
    )
    return nextsteps.write_profiles(profiles, stack=stack.names.stack, home=home)


@pytest.fixture(scope="session")
def client_stack(tmp_path_factory: pytest.TempPathFactory) -> ClientStack:
    base = tmp_path_factory.mktemp("clients")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(base / "state"))  # the task runner's log file
        stack = open_stack(SETTINGS, overrides=SWITCHES, dry_run=True)
    home = base / "metaflowconfig"
    written = write_config_as_services_up_does(stack, home)
    return ClientStack(stack, home, tuple(written))


@pytest.fixture(scope="session")
def installed(client_stack: ClientStack) -> Installed:
    """Our charts rendered with the values services.up passes for this stack."""
    return Installed.render(client_stack.stack)


# ---------------------------------------------------------------------------------------
# Google stand-ins


@pytest.fixture(scope="session")
def google(client_stack: ClientStack) -> Iterator[TokenEndpoint]:
    n = client_stack.names
    with TokenEndpoint(email=n.sa_email("data-scientist"), project=n.project) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def gcs(client_stack: ClientStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """fake-gcs-server with the stack's datastore bucket (infra.up creates it on Google)."""
    server = FakeGcs(log_path=tmp_path_factory.mktemp("gcs") / "fake-gcs.log")
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        body = json.dumps({"name": client_stack.names.data_bucket})
        conn.request(
            "POST",
            f"/storage/v1/b?project={client_stack.names.project}",
            body,
            {"Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        conn.close()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# Running the real client


@dataclass(frozen=True)
class MetaflowCli:
    """`python <flow> ...` in a clean environment: only what a user's shell would need."""

    client_stack: ClientStack
    env: Mapping[str, str]

    def run(
        self,
        flow: Path,
        *args: str,
        profile: str = "",
        extra_env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if profile:
            env["METAFLOW_PROFILE"] = profile
        env.update(extra_env or {})
        result = subprocess.run(
            [sys.executable, flow.name, *args],
            cwd=flow.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"{flow.name} {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result


@pytest.fixture(scope="session")
def metaflow(
    client_stack: ClientStack,
    google: TokenEndpoint,
    gcs: FakeGcs,
    tmp_path_factory: pytest.TempPathFactory,
) -> MetaflowCli:
    user_home = tmp_path_factory.mktemp("home")
    key_file = google.write_key_file(user_home / "service-account.json")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(user_home),
        "USER": USER,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "METAFLOW_HOME": str(client_stack.home),
        "STORAGE_EMULATOR_HOST": gcs.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }
    return MetaflowCli(client_stack, env)


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of the flows per module (compiling writes next to the flow)."""
    folder = tmp_path_factory.mktemp("flows")
    for flow in FLOWS.glob("*.py"):
        shutil.copy(flow, folder / flow.name)
    return folder


# ---------------------------------------------------------------------------------------
# The pinned upstream charts' CRDs (only via UPSTREAM_CHARTS_DIR)


def upstream_chart(name: str, version: str) -> Path:
    root = os.environ.get("UPSTREAM_CHARTS_DIR")
    if not root:
        pytest.skip("UPSTREAM_CHARTS_DIR not set: the pinned upstream charts are not here")
    folder = Path(root) / f"{name}-{version}"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing from UPSTREAM_CHARTS_DIR")
    return folder


def pinned_version(name: str, default: str | None = None) -> str:
    import yaml

    pins = yaml.safe_load((REPO_ROOT / "values" / "versions.yaml").read_text(encoding="utf-8"))
    entry = pins.get(name) or {}
    version = str(entry.get("version") or default or "")
    assert version, f"values/versions.yaml pins no {name}"
    return version


@pytest.fixture(scope="session")
def argo_crds() -> Validator:
    """Argo Workflows' full CRDs (complete schemas) and Argo Events' CRDs, as pinned."""
    workflows = upstream_chart("argo-workflows", pinned_version("argo-workflows"))
    events = upstream_chart("argo-events", pinned_version("argo-events"))
    full = workflows / "files" / "crds" / "full"
    if not full.is_dir():
        pytest.skip(f"{workflows.name} ships no full CRD schemas (files/crds/full)")
    wanted = [
        full / f"argoproj.io_{plural}.yaml" for plural in ("workflowtemplates", "cronworkflows")
    ]
    # Argo Events' CRDs are templates: render the chart with our values, as services.up does.
    rendered = render_chart(
        events,
        load_yaml(REPO_ROOT / "values" / "argo-events.yaml"),
        release="argo-events",
        namespace=ARGO_EVENTS_NS,
    )
    return Validator(load_crds([*read_yaml_files(wanted), *rendered.manifests]))


@pytest.fixture(scope="session")
def jobset_crds() -> Validator:
    # JobSet v0.12.0 is the version issue 9 pins; values/versions.yaml wins once it lists it.
    chart = upstream_chart("jobset", pinned_version("jobset", default="0.12.0"))
    return Validator(load_crds(read_yaml_files(sorted((chart / "crds").glob("*.yaml")))))


def object_names(gcs: FakeGcs, url: str) -> list[str]:
    """Every object under gs://BUCKET/PREFIX in fake-gcs-server (JSON API), as gs:// URLs."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    found: list[str] = []
    token = ""
    while True:
        query = {"prefix": f"{prefix.rstrip('/')}/" if prefix else ""}
        if token:
            query["pageToken"] = token
        conn = http.client.HTTPConnection("127.0.0.1", gcs.port, timeout=10)
        conn.request("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}")
        answer = conn.getresponse()
        page = json.loads(answer.read())
        conn.close()
        assert answer.status == 200, page
        found += [f"gs://{bucket}/{item['name']}" for item in page.get("items", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return found
