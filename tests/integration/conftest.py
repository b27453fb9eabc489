"""Integration fixtures: the real gcloud CLI pointed at local fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metaflow_gcp import infra
from metaflow_gcp.config import Settings, load_settings
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import Runner
from metaflow_gcp.state import StateStore
from tests.fakes.gcs import FakeGcs
from tests.fakes.plugin import CloudSnapshot, FakeCloud
from tests.integration.stacks import make_stack, output

STACK = {"org_prefix": "acme", "project": "fake-project", "stack": "it"}


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcs]:
    server = FakeGcs()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcs_env(gcs_server: FakeGcs, tmp_path: Path) -> dict[str, str]:
    """Environment that sends `gcloud storage` to fake-gcs-server, in an isolated gcloud config."""
    gcs_server.reset()
    token = tmp_path / "token"
    token.write_text("fake-token\n")
    config = tmp_path / "gcloud"
    config.mkdir()
    return {
        "CLOUDSDK_CONFIG": str(config),
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": STACK["project"],
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{gcs_server.url}/",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
    }


@pytest.fixture
def settings() -> Settings:
    return load_settings(STACK)


@pytest.fixture
def store_factory(gcs_env: dict[str, str], settings: Settings):  # type: ignore[no-untyped-def]
    """New StateStores (each is one 'run') sharing the fake bucket."""

    def make() -> StateStore:
        runner = Runner(env=gcs_env)
        return StateStore(Gcloud(runner, settings.project), settings.names(), location="us-west2")

    return make


@pytest.fixture(scope="session")
def finished_stack_snapshot(
    fake_cloud_server: FakeCloud, tmp_path_factory: pytest.TempPathFactory
) -> CloudSnapshot:
    """The fakes after one cold `infra.up` of the default stack, built once per session.

    A cold up is some forty gcloud processes; tests whose subject starts from a finished
    stack restore this instead of building it again (the cold up is specified on its own).
    """
    fake = FakeCloud(
        fake_cloud_server.api,
        fake_cloud_server.gcs,
        fake_cloud_server.tls,
        tmp_path_factory.mktemp("finished-stack"),
    )
    fake.reset(enable_apis=True)
    stack = make_stack(fake)
    report = infra.up(stack)
    assert report is not None and report.ok, output(stack)
    return fake.snapshot()


@pytest.fixture
def finished_stack(fake_cloud: FakeCloud, finished_stack_snapshot: CloudSnapshot) -> FakeCloud:
    """`fake_cloud` holding a finished default stack (state file, kube context and all)."""
    fake_cloud.restore(finished_stack_snapshot)
    return fake_cloud
