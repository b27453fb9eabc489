"""kubectl credentials are kept only while they point at the cluster that exists now.

gcloud writes (and removes) its kubeconfig entry only when it waits for a cluster create
(or delete); this tool uses --async, so an entry can outlive a torn-down cluster and must
not be mistaken for the credentials of its successor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.gcp import gke
from metaflow_gcp.graph import Outcome, Step, run_steps
from tests.support.cluster import machine
from tests.support.console import CapturedConsole
from tests.support.stack import CONTEXT, SETTINGS

DESCRIBE = ["gcloud", "container", "clusters", "describe", "mf-dev", FakeProcess.any()]
GET_CREDENTIALS = ["gcloud", "container", "clusters", "get-credentials", FakeProcess.any()]


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def stack_with_kubeconfig(tmp_path: Path, server: str | None) -> Stack:
    context = None if server is None else CONTEXT
    env = machine(tmp_path, ["gcloud"], context=context, server=server)
    return open_stack(SETTINGS, env=env, console=CapturedConsole())


def credentials(stack: Stack, *, cold: bool = False) -> Outcome | None:
    step = Step(
        "credentials",
        "credentials",
        lambda run: gke.ensure_credentials(stack.gcloud, stack.names, run, cold=cold),
    )
    report = run_steps([step], console=stack.console, title="t")
    report.raise_for_failure()
    return report.outcomes()["credentials"]


def cluster_at(fp: FakeProcess, endpoint: str) -> None:
    fp.register(DESCRIBE, stdout=json.dumps({"status": "RUNNING", "endpoint": endpoint}))


def test_a_context_pointing_at_the_cluster_is_kept(fp: FakeProcess, tmp_path: Path) -> None:
    stack = stack_with_kubeconfig(tmp_path, "https://34.1.2.3")
    cluster_at(fp, "34.1.2.3")

    assert credentials(stack) is Outcome.KEPT
    assert not fp.call_count(GET_CREDENTIALS)


def test_a_context_left_by_an_earlier_cluster_is_replaced(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = stack_with_kubeconfig(tmp_path, "https://34.9.9.9")
    cluster_at(fp, "34.1.2.3")
    fp.register(GET_CREDENTIALS)

    assert credentials(stack) is Outcome.CREATED
    assert fp.call_count(GET_CREDENTIALS) == 1


def test_no_context_means_fetching_one(fp: FakeProcess, tmp_path: Path) -> None:
    stack = stack_with_kubeconfig(tmp_path, None)
    cluster_at(fp, "34.1.2.3")
    fp.register(GET_CREDENTIALS)

    assert credentials(stack) is Outcome.CREATED


def test_right_after_creating_the_cluster_any_old_context_is_replaced_unread(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = stack_with_kubeconfig(tmp_path, "https://34.1.2.3")
    fp.register(GET_CREDENTIALS)

    assert credentials(stack, cold=True) is Outcome.CREATED
    assert not fp.call_count(DESCRIBE), "no describe on the cold path"
