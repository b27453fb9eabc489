"""A flow run on the workstation keeps its data where the stack's config says: the gs datastore.

The run uses the config services.up wrote, with one change said out loud: the metadata
service is not running here, so METAFLOW_DEFAULT_METADATA=local is set for this run only
(the config keeps `service`). Cloud Storage is fake-gcs-server; Google credentials are a
service-account key made for the test, whose token requests go to a local endpoint.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.conftest import ClientStack, MetaflowCli, object_names
from tests.clients.google_token import TokenEndpoint
from tests.fakes.gcs import FakeGcs

pytestmark = pytest.mark.clients

NO_METADATA_SERVICE = {"METAFLOW_DEFAULT_METADATA": "local"}


@dataclass(frozen=True)
class Run:
    run_id: str
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def hello_run(metaflow: MetaflowCli, flow_dir: Path) -> Run:
    flow = flow_dir / "hello_flow.py"
    result = metaflow.run(flow, "run", "--run-id-file", "run-id", extra_env=NO_METADATA_SERVICE)
    return Run((flow_dir / "run-id").read_text(encoding="utf-8").strip(), result)


def test_the_config_services_up_writes_selects_the_gs_datastore(client_stack: ClientStack) -> None:
    config = client_stack.config()
    assert config["METAFLOW_DEFAULT_DATASTORE"] == "gs"
    assert config["METAFLOW_DATASTORE_SYSROOT_GS"] == client_stack.names.datastore_root


def test_a_local_run_stores_every_task_under_the_configured_sysroot(
    hello_run: Run, client_stack: ClientStack, gcs: FakeGcs
) -> None:
    root = client_stack.names.datastore_root
    stored = object_names(gcs, root)
    for task in ("start/1", "end/2"):
        prefix = f"{root}/HelloFlow/{hello_run.run_id}/{task}/"
        assert any(name.startswith(prefix) for name in stored), f"nothing under {prefix}"
    # Artifacts themselves are content-addressed under the flow's data/ folder.
    assert any(name.startswith(f"{root}/HelloFlow/data/") for name in stored)


def test_the_client_reads_the_artifact_back_from_the_datastore(
    hello_run: Run, metaflow: MetaflowCli, flow_dir: Path
) -> None:
    reader = flow_dir / "read_greeting.py"
    reader.write_text(
        "import json, sys\n"
        "from metaflow import Run\n"
        "run = Run(f'HelloFlow/{sys.argv[1]}')\n"
        "print(json.dumps({'greeting': run.data.greeting, 'successful': run.successful}))\n",
        encoding="utf-8",
    )
    result = metaflow.run(reader, hello_run.run_id, extra_env=NO_METADATA_SERVICE)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "greeting": "hello from the gs datastore",
        "successful": True,
    }


def test_the_datastore_is_reached_with_the_service_account_key_google_auth_found(
    hello_run: Run, google: TokenEndpoint
) -> None:
    assert google.grants, "google.auth.default() never asked for a token"
    for grant in google.grants:
        assert grant.signed_by_key
        assert grant.claims["iss"] == google.email
        assert "https://www.googleapis.com/auth/devstorage" in grant.claims["scope"]


def test_the_packages_the_next_steps_name_are_the_ones_this_layer_runs_with() -> None:
    """The client is exercised with exactly what `services.up` tells users to pip install."""
    from importlib.metadata import PackageNotFoundError, version

    from metaflow_gcp import nextsteps

    missing = []
    for package in nextsteps.CLIENT_PACKAGES:
        try:
            version(package)
        except PackageNotFoundError:
            missing.append(package)
    assert missing == []
