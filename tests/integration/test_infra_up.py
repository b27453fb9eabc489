"""infra.up end to end: the real gcloud CLI against the stateful fakes.

Each infra.up here runs some forty real gcloud processes, so tests are few and each
checks a whole behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from metaflow_gcp import infra
from metaflow_gcp.errors import LockHeld, NotAuthenticated, StackError
from metaflow_gcp.graph import Outcome
from tests.fakes.plugin import FakeCloud
from tests.integration.stacks import make_stack, output

pytestmark = pytest.mark.integration

ZONE, CLUSTER, INSTANCE = "us-west2-a", "mf-it", "mf-it-pg-0"
ROOT = Path(__file__).resolve().parents[2]


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
    # Made hardened from the start, so the in-place hardening steps find nothing to do.
    assert outcomes.pop("gke_hardening") is Outcome.KEPT
    assert outcomes.pop("sql_hardening") is Outcome.KEPT
    assert outcomes.pop("project") is Outcome.KEPT  # the project number: only read
    assert set(outcomes.values()) <= {Outcome.CREATED, Outcome.UPDATED}, outcomes
    # A stack never built before is created straight away: no describe before each create.
    describes = [r.command for r in stack.runner.history if " describe " in r.command]
    for resource in ("networks describe", "subnets describe", "addresses describe",
                     "sql instances describe", "secrets describe"):
        assert not any(resource in command for command in describes), describes

    state = fake_cloud.state
    instance = state["sql_instances"][INSTANCE]
    ip = instance["settings"]["ipConfiguration"]
    assert ip["ipv4Enabled"] is False
    assert ip["privateNetwork"].endswith("/networks/mf-it-vpc")
    assert instance["settings"]["backupConfiguration"]["enabled"] is True
    assert instance["databaseVersion"] == "POSTGRES_16"
    assert instance["settings"].get("edition", "ENTERPRISE") == "ENTERPRISE"
    assert instance["settings"]["connectorEnforcement"] == "REQUIRED"  # Auth Proxy only
    assert ip["sslMode"] == "ENCRYPTED_ONLY"
    assert instance["settings"]["deletionProtectionEnabled"] is True
    assert instance["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
    assert "metaflow" in state["sql_databases"][INSTANCE]
    assert state["sql_users"][INSTANCE]["metaflow"]["password"] == db_password(fake_cloud)

    cluster = state["clusters"][f"{ZONE}/{CLUSTER}"]
    assert cluster["workloadIdentityConfig"]["workloadPool"] == "fake-project.svc.id.goog"
    node_config = cluster.get("nodeConfig") or cluster["nodePools"][0]["config"]
    assert node_config["workloadMetadataConfig"]["mode"] == "GKE_METADATA"
    assert node_config["serviceAccount"] == "mf-it-nodes@fake-project.iam.gserviceaccount.com"
    assert cluster["nodePools"][0]["autoscaling"]["enabled"] is True
    # Hardened: NetworkPolicies enforced, no external IPs, secure boot, no read-only port.
    assert cluster["networkConfig"]["datapathProvider"] == "ADVANCED_DATAPATH"
    assert cluster["privateClusterConfig"]["enablePrivateNodes"] is True
    [pool] = cluster["nodePools"]
    assert pool["networkConfig"]["enablePrivateNodes"] is True
    assert pool["config"]["shieldedInstanceConfig"]["enableSecureBoot"] is True
    assert pool["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"] is False
    assert cluster["masterAuthorizedNetworksConfig"]["enabled"] is False  # off by default
    [nat] = state["routers"]["us-west2/mf-it-router"]["nats"]  # image pulls of private nodes
    assert nat["name"] == "mf-it-nat"
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"
    assert state["routers"]["us-west2/mf-it-router"]["network"].endswith("/networks/mf-it-vpc")

    bindings = state["project_iam_policy"]["bindings"]
    services = "serviceAccount:mf-it-services@fake-project.iam.gserviceaccount.com"
    steps = "serviceAccount:mf-it-steps@fake-project.iam.gserviceaccount.com"
    held = {(b["role"], m, (b.get("condition") or {}).get("expression"))
            for b in bindings for m in b["members"]}
    datastore = (  # this bucket, not acme-fake-project-mf-it2
        'resource.name == "projects/_/buckets/acme-fake-project-mf-it" || '
        'resource.name.startsWith("projects/_/buckets/acme-fake-project-mf-it/")'
    )
    assert {(role, cond) for role, m, cond in held if m == services} == {
        ("roles/cloudsql.client", 'resource.service == "sqladmin.googleapis.com" && '
         'resource.name.startsWith("projects/fake-project/instances/mf-it-pg-")'),
        ("roles/storage.objectViewer", datastore),
    }
    assert {(role, cond) for role, m, cond in held if m == steps} == {
        ("roles/storage.objectUser", datastore),
        ("roles/secretmanager.secretAccessor",
         f'resource.name.startsWith("projects/{fake_cloud.project_number}/secrets/mf-it-user-")'),
    }, "user code: no Cloud SQL, only its own bucket and its own user secrets"
    assert any(b["role"] == "roles/container.defaultNodeServiceAccount" for b in bindings)
    assert "mf-it-workload@fake-project.iam.gserviceaccount.com" not in state["service_accounts"]

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
    assert doc["infra"]["project_number"] == fake_cloud.project_number
    assert {k: (v["name"], v["created"], v["healthy"])
            for k, v in doc["infra"]["resources"].items()} == {
        "gke": (CLUSTER, True, True), "sql": (INSTANCE, True, True)}

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
    assert again.runner.count("gcloud") <= 6  # one witness per chain, read at once


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


def test_ctrl_c_mid_run_saves_state_and_a_rerun_resumes_the_operation(
    fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    fake_cloud.set_latency("sql.instances.insert", 20.0)
    var_file = tmp_path / "it.tfvars"
    var_file.write_text('org_prefix = "acme"\nproject = "fake-project"\nstack = "it"\n')
    command = [sys.executable, "-m", "invoke", "infra.up", "--yes", f"--var-file={var_file}"]
    env = {**os.environ, **fake_cloud.env}
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not fake_cloud.requests.of_kind("sql.instances.insert"):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    out, err = run.communicate(timeout=180)
    assert run.returncode == 130, out + err
    assert "interrupted" in err and "resume" in err

    again = make_stack(fake_cloud)
    report = infra.up(again)
    assert report is not None and report.ok, output(again)
    assert len(fake_cloud.requests.of_kind("sql.instances.insert")) == 1, "waited on, not repeated"
    assert list(fake_cloud.state["sql_instances"]) == [INSTANCE]


def test_plan_on_an_empty_project_is_read_only_and_names_what_would_be_created(
    fake_cloud: FakeCloud,
) -> None:
    empty = make_stack(fake_cloud)
    report = infra.plan(empty)
    outcomes = report.outcomes()
    assert outcomes.pop("apis") is Outcome.KEPT  # the fixture enables every API
    assert outcomes.pop("project") is Outcome.KEPT  # its number is read, nothing changes
    assert set(outcomes.values()) == {Outcome.PLANNED}
    assert "create Cloud SQL instance (after private services access)" in output(empty)
    assert "create VPC network mf-it-vpc" in output(empty)
    assert fake_cloud.requests.mutating() == []


def test_plan_on_a_finished_stack_is_read_only_and_names_what_differs(
    finished_stack: FakeCloud,
) -> None:
    fake_cloud = finished_stack
    with fake_cloud.api.lock:  # someone turns on a public IP by hand
        fake_cloud.api.state["sql_instances"][INSTANCE]["settings"]["ipConfiguration"][
            "ipv4Enabled"] = True
    before = len(fake_cloud.requests)
    drifted = make_stack(fake_cloud)
    report = infra.plan(drifted)
    assert Outcome.PLANNED not in report.outcomes().values()
    assert "mf-it-pg-0 has a public IP" in output(drifted)
    assert [r for r in fake_cloud.requests[before:] if r.is_mutating] == []


def test_not_logged_in_is_one_line_saying_how_to_log_in(fake_cloud: FakeCloud) -> None:
    env = {k: v for k, v in fake_cloud.env.items() if k != "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"}
    stack = make_stack(fake_cloud)
    stack.runner.env = env
    with pytest.raises(NotAuthenticated) as caught:
        infra.up(stack)
    line = caught.value.one_line()
    assert "\n" not in line and "gcloud auth login" in line
    assert fake_cloud.requests.mutating() == []


def make_it_look_like_the_previous_version(fake: FakeCloud, stack: Any) -> None:
    """The shape today's release builds: no hardening, no NAT, one workload account."""
    with fake.api.lock:
        state = fake.api.state
        cluster = state["clusters"][f"{ZONE}/{CLUSTER}"]
        cluster["networkConfig"] = {"datapathProvider": "LEGACY_DATAPATH"}
        cluster["privateClusterConfig"] = {"enablePrivateNodes": False}
        cluster["nodePoolDefaults"] = {}
        for pool in cluster["nodePools"]:
            pool["networkConfig"] = {"enablePrivateNodes": False}
            pool["config"]["kubeletConfig"] = {"insecureKubeletReadonlyPortEnabled": True}
            pool["config"]["shieldedInstanceConfig"] = {"enableSecureBoot": False}
        settings = state["sql_instances"][INSTANCE]["settings"]
        settings["connectorEnforcement"] = "NOT_REQUIRED"
        settings["ipConfiguration"]["sslMode"] = "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
        settings["deletionProtectionEnabled"] = False
        settings["backupConfiguration"]["pointInTimeRecoveryEnabled"] = False
        state["routers"].clear()
    legacy = "mf-it-workload@fake-project.iam.gserviceaccount.com"
    fake.call("POST", "iam", "/v1/projects/fake-project/serviceAccounts",
              {"accountId": "mf-it-workload", "serviceAccount": {"displayName": "old"}})

    def old(doc: dict[str, Any]) -> None:
        infra_doc = doc["infra"]
        infra_doc.pop("project_number")
        infra_doc.pop("resources")
        infra_doc["converged"] = "fingerprint-of-an-earlier-version"
    stack.state.update(old)
    assert legacy in fake.state["service_accounts"]


def test_a_stack_of_the_previous_version_is_hardened_in_place_and_told_what_cannot_be(
    finished_stack: FakeCloud,
) -> None:
    fake_cloud = finished_stack
    make_it_look_like_the_previous_version(fake_cloud, make_stack(fake_cloud))
    before = len(fake_cloud.requests)

    plan = make_stack(fake_cloud)
    planned = infra.plan(plan).states
    assert planned["sql_hardening"].outcome is Outcome.PLANNED
    assert "accepts unencrypted connections" in planned["sql_hardening"].note
    assert planned["nat"].outcome is Outcome.PLANNED
    assert [r for r in fake_cloud.requests[before:] if r.is_mutating] == []

    again = make_stack(fake_cloud)
    report = infra.up(again)
    assert report is not None and report.ok, output(again)
    text = output(again).replace("\n", " ")
    assert report.outcomes()["sql_hardening"] is Outcome.UPDATED
    assert report.outcomes()["gke_hardening"] is Outcome.UPDATED
    settings = fake_cloud.state["sql_instances"][INSTANCE]["settings"]
    assert settings["connectorEnforcement"] == "REQUIRED"
    assert settings["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    assert settings["ipConfiguration"]["ipv4Enabled"] is False, "the patch merged, kept the rest"
    assert settings["deletionProtectionEnabled"] is True
    assert settings["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
    cluster = fake_cloud.state["clusters"][f"{ZONE}/{CLUSTER}"]
    [pool] = cluster["nodePools"]
    assert pool["networkConfig"]["enablePrivateNodes"] is True
    assert pool["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"] is False
    assert cluster["networkConfig"]["defaultEnablePrivateNodes"] is True
    assert "us-west2/mf-it-router" in fake_cloud.state["routers"]
    # Nothing replaced: no delete, no second create; what GKE cannot change is said.
    kinds = {r.kind for r in fake_cloud.requests[before:]}
    assert not kinds & {"container.clusters.delete", "sql.instances.delete",
                        "container.clusters.create", "sql.instances.insert"}
    assert "has no Dataplane V2, so NetworkPolicies are not enforced: cannot be changed in " \
        "place" in text
    assert "node pool default-pool boots without secure boot: cannot be changed in place" in text
    doc = state_doc(again)
    assert doc["infra"]["project_number"] == fake_cloud.project_number
    assert doc["infra"]["resources"]["gke"] == {
        **doc["infra"]["resources"]["gke"], "created": False, "healthy": True}

    # What remains cannot change in place, so a re-run changes nothing.
    before = len(fake_cloud.requests)
    third = make_stack(fake_cloud)
    infra.up(third)
    assert [r for r in fake_cloud.requests[before:] if r.is_mutating
            and r.api != "storage"] == [], output(third)


@pytest.mark.parametrize("kind", ["gke", "sql"])
def test_a_resource_our_create_left_broken_is_replaced_not_the_stack(
    fake_cloud: FakeCloud, kind: str
) -> None:
    operation = "container.clusters.create" if kind == "gke" else "sql.instances.insert"
    fake_cloud.fail_next(kind=operation, operation_error=True, leave_broken=True,
                         message="the zone ran out of resources")
    first = make_stack(fake_cloud)
    with pytest.raises(StackError):
        infra.up(first)
    state = fake_cloud.state
    if kind == "gke":
        assert state["clusters"][f"{ZONE}/{CLUSTER}"]["status"] == "ERROR"
    else:
        assert state["sql_instances"][INSTANCE]["state"] == "FAILED"
    record = state_doc(first)["infra"]["resources"][kind]
    assert record["created"] is True and record["healthy"] is False

    plan = make_stack(fake_cloud)
    planned = infra.plan(plan).states["gke" if kind == "gke" else "sql_instance"]
    assert planned.outcome is Outcome.PLANNED
    assert "this tool created it and it never became usable" in planned.note

    second = make_stack(fake_cloud)
    report = infra.up(second)
    assert report is not None and report.ok, output(second)
    if kind == "gke":
        assert len(fake_cloud.requests.of_kind("container.clusters.delete")) == 1
        assert state["clusters"][f"{ZONE}/{CLUSTER}"]["status"] == "RUNNING"
    else:  # the deleted name stays reserved: the next generation takes over
        assert list(fake_cloud.state["sql_instances"]) == ["mf-it-pg-1"]
        assert state_doc(second)["db_generation"] == 1
        assert "mf-it-pg-1" in fake_cloud.state["sql_users"]
    assert state_doc(second)["infra"]["resources"][kind]["healthy"] is True


def test_a_broken_resource_that_once_worked_is_never_replaced_without_the_users_word(
    finished_stack: FakeCloud,
) -> None:
    fake_cloud = finished_stack
    with fake_cloud.api.lock:
        fake_cloud.api.state["clusters"][f"{ZONE}/{CLUSTER}"]["status"] = "ERROR"
    again = make_stack(fake_cloud)
    with pytest.raises(StackError, match=r"infra\.up stopped at 'GKE cluster mf-it'"):
        infra.up(again)
    assert "not replaced automatically" in output(again)
    assert fake_cloud.requests.of_kind("container.clusters.delete") == []
