"""infra.up end to end: the real gcloud CLI against the stateful fakes.

Each infra.up here runs some forty real gcloud processes, so tests are few and each
checks a whole behaviour.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from metaflow_gcp import infra
from metaflow_gcp.errors import LockHeld, StackError
from metaflow_gcp.graph import Outcome
from tests.fakes.plugin import FakeCloud
from tests.integration.stacks import make_stack, output

pytestmark = pytest.mark.integration

ZONE, CLUSTER, INSTANCE = "us-west2-a", "mf-it", "mf-it-pg-0"


def db_password(fake: FakeCloud) -> str:
    data = fake.state["secrets"]["mf-it-db-password"]["_versions"][-1]["_data"]
    return bytes(data).decode()


def state_doc(stack: Any) -> dict[str, Any]:
    doc = stack.state.peek()
    assert doc is not None
    return dict(doc)


def test_cold_up_creates_everything_right_and_a_rerun_changes_nothing(
    fake_cloud: FakeCloud,
) -> None:
    stack = make_stack(fake_cloud)
    report = infra.up(stack)
    assert report is not None and report.ok, output(stack)
    outcomes = report.outcomes()
    assert outcomes.pop("apis") is Outcome.KEPT  # the fixture enables every API
    assert set(outcomes.values()) <= {Outcome.CREATED, Outcome.UPDATED}, outcomes

    state = fake_cloud.state
    instance = state["sql_instances"][INSTANCE]
    ip = instance["settings"]["ipConfiguration"]
    assert ip["ipv4Enabled"] is False
    assert ip["privateNetwork"].endswith("/networks/mf-it-vpc")
    assert instance["settings"]["backupConfiguration"]["enabled"] is True
    assert instance["databaseVersion"] == "POSTGRES_16"
    assert instance["settings"].get("edition", "ENTERPRISE") == "ENTERPRISE"
    assert "metaflow" in state["sql_databases"][INSTANCE]
    assert state["sql_users"][INSTANCE]["metaflow"]["password"] == db_password(fake_cloud)

    cluster = state["clusters"][f"{ZONE}/{CLUSTER}"]
    assert cluster["workloadIdentityConfig"]["workloadPool"] == "fake-project.svc.id.goog"
    node_config = cluster.get("nodeConfig") or cluster["nodePools"][0]["config"]
    assert node_config["workloadMetadataConfig"]["mode"] == "GKE_METADATA"
    assert node_config["serviceAccount"] == "mf-it-nodes@fake-project.iam.gserviceaccount.com"
    assert cluster["nodePools"][0]["autoscaling"]["enabled"] is True

    bindings = state["project_iam_policy"]["bindings"]
    workload = "serviceAccount:mf-it-workload@fake-project.iam.gserviceaccount.com"
    storage = next(b for b in bindings if b["role"] == "roles/storage.objectAdmin")
    assert storage["members"] == [workload]
    assert storage["condition"]["expression"] == (
        'resource.name.startsWith("projects/_/buckets/acme-fake-project-mf-it")'
    )
    assert any(b["role"] == "roles/container.defaultNodeServiceAccount" for b in bindings)
    assert not any(b["role"] in ("roles/owner", "roles/editor") and workload in b["members"]
                   for b in bindings)

    # fake-gcs-server keeps neither setting, so check what gcloud was asked for.
    create = next(r.command for r in stack.runner.history
                  if r.command.startswith("gcloud storage buckets create gs://acme-fake-project-mf-it"))
    for flag in ("--location=us-west2", "--uniform-bucket-level-access",
                 "--public-access-prevention"):
        assert flag in create

    doc = state_doc(stack)
    assert doc["lock"] is None
    assert doc["infra"]["converged"]
    assert doc["infra"]["sql_user_ready"] == INSTANCE

    password = db_password(fake_cloud)
    assert len(password) >= 24
    assert password not in output(stack)
    assert password not in json.dumps(doc)
    assert all(password not in r.command for r in stack.runner.history)

    # The re-run: no mutating request at all, and a handful of reads.
    before = len(fake_cloud.requests)
    again = make_stack(fake_cloud)
    assert infra.up(again) is None
    assert "nothing to do" in output(again)
    assert [r for r in fake_cloud.requests[before:] if r.is_mutating] == []
    assert again.runner.count("gcloud") <= 5


def test_a_reserved_sql_name_moves_to_the_next_generation_and_says_so(
    fake_cloud: FakeCloud,
) -> None:
    fake_cloud.reserve_sql_name(INSTANCE)
    stack = make_stack(fake_cloud)
    report = infra.up(stack)
    assert report is not None and report.ok, output(stack)
    assert "mf-it-pg-1" in fake_cloud.state["sql_instances"]
    assert "the DB generation is now 1" in output(stack)
    assert state_doc(stack)["db_generation"] == 1


@pytest.mark.parametrize(
    ("rule", "step"),
    [
        ({"kind": "compute.networks.insert", "status": 500}, "network mf-it-vpc"),
        ({"kind": "sql.instances.insert", "operation_error": True,
          "message": "the zone ran out of resources"}, "Cloud SQL instance"),
        ({"kind": "container.clusters.create", "status": 403,
          "message": 'Insufficient regional quota to satisfy request: resource "CPUS"'},
         "GKE cluster mf-it"),
        ({"kind": "cloudresourcemanager.projects.setIamPolicy", "status": 403,
          "message": "Policy update access denied."}, "IAM roles"),
    ],
    ids=["network create fails", "SQL operation fails", "GKE quota", "IAM write fails"],
)
def test_a_failure_at_any_step_is_reported_and_a_rerun_converges(
    fake_cloud: FakeCloud, rule: dict[str, Any], step: str
) -> None:
    fake_cloud.fail_next(**rule)
    first = make_stack(fake_cloud)
    with pytest.raises(StackError, match=f"infra.up stopped at '{step}'"):
        infra.up(first)
    assert f"{step} failed" in output(first)
    doc = state_doc(first)
    assert doc["lock"] is None  # the state is saved and the lock released after a failure
    assert doc["infra"]["converged"] is None

    second = make_stack(fake_cloud)
    try:
        report = infra.up(second)
    except StackError:
        pytest.fail(f"the re-run did not converge:\n{output(second)}")
    assert report is not None and report.ok, output(second)
    state = fake_cloud.state
    assert list(state["sql_instances"]) == [INSTANCE]
    assert list(state["clusters"]) == [f"{ZONE}/{CLUSTER}"]
    assert len(fake_cloud.requests.of_kind("sql.instances.insert")) == (
        2 if "operation_error" in rule else 1
    )


def test_a_second_concurrent_run_is_refused_while_the_first_finishes(
    fake_cloud: FakeCloud,
) -> None:
    fake_cloud.set_latency("sql.instances.insert", 12.0)
    first = make_stack(fake_cloud)
    results: dict[str, Any] = {}
    def first_run() -> None:
        try:
            results["report"] = infra.up(first)
        except StackError as error:
            results["error"] = error

    runner = threading.Thread(target=first_run)
    runner.start()
    deadline = time.monotonic() + 120
    while not fake_cloud.requests.of_kind("sql.instances.insert"):
        assert time.monotonic() < deadline, output(first)
        time.sleep(0.5)
    second = make_stack(fake_cloud)
    with pytest.raises(LockHeld, match=r"running 'infra\.up'"):
        infra.up(second)
    runner.join(timeout=300)
    assert "error" not in results, output(first)
    assert results["report"].ok, output(first)


def test_dry_run_makes_no_request_at_all(fake_cloud: FakeCloud) -> None:
    stack = make_stack(fake_cloud, dry_run=True)
    infra.up(stack)
    assert len(fake_cloud.requests) == 0
    assert "gcloud sql instances create mf-it-pg-0" in output(stack)
    assert all(r.dry_run for r in stack.runner.history)
