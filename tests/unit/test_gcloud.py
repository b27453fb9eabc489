"""The gcloud layer: a freshly enabled API is waited for, an unknown one is not."""

from __future__ import annotations

import threading
import time

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp.errors import ApiNotEnabled
from metaflow_gcp.gcp import gcloud as gcloud_module
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import GraphRun, Interrupted, Outcome, Step, StepRun
from metaflow_gcp.shell import Runner

CREATE = ["gcloud", "compute", "networks", "create", "mf-dev-vpc", FakeProcess.any()]
DISABLED = (
    "ERROR: (gcloud.compute.networks.create) PERMISSION_DENIED: Compute Engine API has not "
    "been used in project 123 before or it is disabled. If you enabled this API recently, "
    "wait a few minutes for the action to propagate to our systems and retry. "
    "reason: SERVICE_DISABLED\n"
)


@pytest.fixture(autouse=True)
def _no_real_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcloud_module, "API_RETRY_PAUSE", 0.0)


def test_right_after_enabling_apis_a_disabled_answer_is_retried(fp: FakeProcess) -> None:
    fp.register(CREATE, returncode=1, stderr=DISABLED, occurrences=2)
    fp.register(CREATE, stdout="{}")
    g = Gcloud(Runner(), "acme-ml-prod")
    g.apis_just_enabled()

    g.mutate("compute", "networks", "create", "mf-dev-vpc")

    assert fp.call_count(CREATE) == 3


def test_without_a_fresh_enable_a_disabled_api_is_reported_at_once(fp: FakeProcess) -> None:
    fp.register(CREATE, returncode=1, stderr=DISABLED)
    g = Gcloud(Runner(), "acme-ml-prod")

    with pytest.raises(ApiNotEnabled):
        g.mutate("compute", "networks", "create", "mf-dev-vpc")
    assert fp.call_count(CREATE) == 1


def test_the_wait_for_a_fresh_enable_ends(fp: FakeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcloud_module, "API_SETTLE", 0.0)
    fp.register(CREATE, returncode=1, stderr=DISABLED)
    g = Gcloud(Runner(), "acme-ml-prod")
    g.apis_just_enabled()

    with pytest.raises(ApiNotEnabled):
        g.mutate("compute", "networks", "create", "mf-dev-vpc")


def test_ctrl_c_ends_the_wait_for_a_settling_api_and_starts_no_command_after(
    fp: FakeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcloud_module, "API_RETRY_PAUSE", 30.0)
    fp.register(CREATE, returncode=1, stderr=DISABLED)
    fp.register(CREATE, stdout="{}")  # what a retry would run: it must never come
    g = Gcloud(Runner(), "acme-ml-prod")
    g.apis_just_enabled()

    def create(run: StepRun) -> Outcome:
        g.mutate("compute", "networks", "create", "mf-dev-vpc")
        return Outcome.CREATED

    graph = GraphRun([Step("network", "network", create)])
    threading.Timer(0.3, graph.interrupt.set).start()  # what Ctrl-C does to a run
    started = time.monotonic()
    report = graph.run()

    assert time.monotonic() - started < 5, "the 30 s pause was waited out"
    assert isinstance(report.states["network"].error, Interrupted)
    assert fp.call_count(CREATE) == 1
