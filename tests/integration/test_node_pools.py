"""The GPU and Spot node pools: the real gcloud 528 against the fake Container API.

Most tests start from a RUNNING cluster put straight into the fake's state and run only
the pool steps, so each costs a handful of gcloud processes; one test runs a whole
cold infra.up with a GPU pool and its no-op re-run.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from metaflow_gcp import day2, infra, teardown
from metaflow_gcp.app import Stack
from metaflow_gcp.errors import StackError
from metaflow_gcp.gcp import nodepools
from metaflow_gcp.graph import Outcome, Report, Step, run_steps
from tests.fakes.plugin import FakeCloud
from tests.integration.stacks import make_stack, output

pytestmark = pytest.mark.integration

ZONE, CLUSTER = "us-west2-a", "mf-it"
NODE_SA = "mf-it-nodes@fake-project.iam.gserviceaccount.com"


def seed_cluster(fake: FakeCloud) -> None:
    """A RUNNING cluster with its default pool, and the node account, as infra.up leaves them."""
    fake.state["service_accounts"][NODE_SA] = {"email": NODE_SA, "name": NODE_SA}
    fake.state["clusters"][f"{ZONE}/{CLUSTER}"] = {
        "name": CLUSTER,
        "location": ZONE,
        "status": "RUNNING",
        "currentNodeVersion": "1.32.4-gke.1415000",
        "nodePools": [{"name": "default-pool", "status": "RUNNING", "config": {}}],
    }


def pools(fake: FakeCloud) -> dict[str, dict[str, Any]]:
    cluster = fake.state["clusters"][f"{ZONE}/{CLUSTER}"]
    return {p["name"]: p for p in cluster["nodePools"]}


def run_pool_steps(stack: Stack, *, plan: bool = False) -> Report:
    steps = [
        Step(s.name, s.title, s.action, tuple(x for x in s.needs if x not in ("apis", "gke")))
        for s in infra.node_pool_steps(stack, cold=False)
    ]
    console = Console(file=io.StringIO(), width=200)
    return run_steps(steps, console=console, title="pools", plan=plan)


def mutating_kinds(fake: FakeCloud, since: int) -> list[str]:
    return [str(r.kind) for r in fake.requests[since:] if r.is_mutating]


def test_a_gpu_pool_scales_from_zero_with_the_driver_installed_and_a_taint(
    fake_cloud: FakeCloud,
) -> None:
    seed_cluster(fake_cloud)
    stack = make_stack(fake_cloud, gpu_type="nvidia-l4", spot_max_nodes=3)
    report = run_pool_steps(stack)
    assert report.ok, report.failed
    assert report.outcomes()["gpu_pool"] is Outcome.CREATED
    assert report.outcomes()["spot_pool"] is Outcome.CREATED

    gpu = pools(fake_cloud)["gpu"]
    config = gpu["config"]
    assert config["machineType"] == "g2-standard-4"  # the smallest with one L4
    assert config["accelerators"] == [
        {
            "acceleratorCount": "1",
            "acceleratorType": "nvidia-l4",
            "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"},
        }
    ]
    assert gpu["autoscaling"]["enabled"] is True
    assert gpu["autoscaling"].get("minNodeCount", 0) == 0
    assert gpu["autoscaling"]["maxNodeCount"] == 2
    assert gpu.get("initialNodeCount", 0) == 0
    assert config["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
    ]
    assert not config.get("spot")
    # The default pool's hardening applies here too.
    assert config["serviceAccount"] == NODE_SA
    assert config["workloadMetadataConfig"]["mode"] == "GKE_METADATA"
    assert config["shieldedInstanceConfig"]["enableSecureBoot"] is True

    spot = pools(fake_cloud)["spot"]
    assert spot["config"]["spot"] is True
    assert spot["config"]["machineType"] == "e2-standard-4"
    assert spot["config"]["taints"] == [
        {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NO_SCHEDULE"}
    ]
    assert spot["autoscaling"]["maxNodeCount"] == 3
    assert "accelerators" not in spot["config"]

    # Again: nothing changes.
    before = len(fake_cloud.requests)
    again = run_pool_steps(make_stack(fake_cloud, gpu_type="nvidia-l4", spot_max_nodes=3))
    assert set(again.outcomes().values()) == {Outcome.KEPT}
    assert mutating_kinds(fake_cloud, before) == []


def test_settings_change_the_pools_never_the_cluster(fake_cloud: FakeCloud) -> None:
    seed_cluster(fake_cloud)
    first = run_pool_steps(make_stack(fake_cloud, gpu_type="nvidia-tesla-t4"))
    assert first.ok, first.failed

    # A bigger maximum: the pool is resized in place.
    before = len(fake_cloud.requests)
    report = run_pool_steps(make_stack(fake_cloud, gpu_type="nvidia-tesla-t4", gpu_max_nodes=4))
    assert report.ok, report.failed
    assert report.outcomes()["gpu_pool"] is Outcome.UPDATED
    assert mutating_kinds(fake_cloud, before) == ["container.clusters.update"]
    assert pools(fake_cloud)["gpu"]["autoscaling"]["maxNodeCount"] == 4

    # Another GPU: the plan says the pool is replaced, and only the pool is.
    changed = make_stack(fake_cloud, gpu_type="nvidia-l4", gpu_max_nodes=4)
    planned = run_pool_steps(changed, plan=True)
    note = planned.states["gpu_pool"].note
    assert "replace node pool gpu (delete + create; the cluster stays)" in note
    assert "n1-standard-4 -> g2-standard-4" in note and "nvidia-tesla-t4 -> 1x nvidia-l4" in note
    before = len(fake_cloud.requests)
    assert run_pool_steps(changed).ok
    assert mutating_kinds(fake_cloud, before) == [
        "container.nodePools.delete",
        "container.nodePools.create",
    ]
    assert pools(fake_cloud)["gpu"]["config"]["machineType"] == "g2-standard-4"

    # No GPU type any more: the pool goes, the cluster and its default pool stay.
    report = run_pool_steps(make_stack(fake_cloud))
    assert report.outcomes()["gpu_pool"] is Outcome.DELETED
    assert set(pools(fake_cloud)) == {"default-pool"}


def test_a_zone_without_the_gpu_is_named_in_one_line_before_anything_is_created(
    fake_cloud: FakeCloud,
) -> None:
    seed_cluster(fake_cloud)
    fake_cloud.state["accelerator_zones"] = {
        "nvidia-l4": {"us-west2-b", "us-west2-c", "us-central1-a"}
    }
    report = run_pool_steps(make_stack(fake_cloud, gpu_type="nvidia-l4"))
    error = report.failed[0].error
    assert isinstance(error, StackError)
    assert error.one_line() == (
        "gpu_type: zone us-west2-a does not offer nvidia-l4. "
        "Fix: set zone to one of us-west2-b, us-west2-c"
    )
    assert not fake_cloud.requests.of_kind("container.nodePools.create")


def test_gke_refusing_the_gpu_in_the_zone_is_translated_too(fake_cloud: FakeCloud) -> None:
    """The API's own answer, should the zone stop offering the GPU after the check."""
    seed_cluster(fake_cloud)
    fake_cloud.state["accelerator_zones"] = {"nvidia-tesla-t4": set()}
    stack = make_stack(fake_cloud, gpu_type="nvidia-tesla-t4")
    pool = nodepools.gpu_pool(stack.settings)
    step = Step("p", "p", lambda r: nodepools.ensure(stack.gcloud, stack.names, "gpu", pool, r))
    report = run_steps([step], console=Console(file=io.StringIO()), title="t")
    error = report.failed[0].error
    assert isinstance(error, StackError)
    assert error.one_line().startswith("gpu_type: zone us-west2-a does not offer nvidia-tesla-t4.")


def test_a_gpu_pool_added_to_a_finished_stack_converges_and_reruns_as_a_no_op(
    finished_stack: FakeCloud,
) -> None:
    fake_cloud = finished_stack
    stack = make_stack(fake_cloud, gpu_type="nvidia-l4")
    report = infra.up(stack)
    assert report is not None and report.ok, output(stack)
    assert report.outcomes()["gpu_pool"] is Outcome.CREATED
    assert report.outcomes()["spot_pool"] is Outcome.KEPT  # looked for one to remove: none
    changed = [r.kind for r in fake_cloud.requests if r.is_mutating and r.api != "storage"]
    assert changed == ["container.nodePools.create"], "the pool and nothing else"
    assert pools(fake_cloud)["gpu"]["status"] == "RUNNING"

    before = len(fake_cloud.requests)
    again = make_stack(fake_cloud, gpu_type="nvidia-l4")
    assert infra.up(again) is None
    assert mutating_kinds(fake_cloud, before) == []

    # Status shows the pool from the cluster's describe.
    rows = day2.collect_status(make_stack(fake_cloud, gpu_type="nvidia-l4"))["resources"]
    gpu_row = next(r for r in rows if r["resource"] == "GPU node pool")
    assert gpu_row["exists"] is True
    assert gpu_row["settings"] == {
        "status": "RUNNING",
        "machine_type": "g2-standard-4",
        "gpus": "1x nvidia-l4",
        "nodes": "0-2",
    }
    assert not any(r["resource"] == "Spot node pool" for r in rows)

    # The teardown preview names the pool, and the pool goes with the cluster.
    look = make_stack(fake_cloud, gpu_type="nvidia-l4")
    preview = run_steps(
        teardown.Teardown(look, delete_data=True).steps(),
        console=look.console, title="preview", plan=True, keep_going=True,
    )  # fmt: skip
    assert preview.states["gke"].note == "delete GKE cluster mf-it with its node pools gpu"
    down = make_stack(fake_cloud, gpu_type="nvidia-l4")
    assert teardown.run(down, delete_data=True).ok, output(down)
    assert fake_cloud.state["clusters"] == {}


def test_gke_runs_one_operation_per_cluster_so_the_pools_are_made_one_after_the_other(
    fake_cloud: FakeCloud,
) -> None:
    seed_cluster(fake_cloud)
    fake_cloud.set_latency("container.nodePools.create", 60)
    stack = make_stack(fake_cloud, spot_max_nodes=2)
    spot = nodepools.spot_pool(stack.settings)
    assert spot is not None
    flags = nodepools.create_flags(spot, stack.names)
    stack.gcloud.mutate("container", "node-pools", "create", "spot", *flags, "--async")
    with pytest.raises(StackError, match="Cluster is running incompatible operation"):
        stack.gcloud.mutate("container", "node-pools", "create", "other", *flags, "--async")
    steps = {
        s.name: s
        for s in infra.node_pool_steps(
            make_stack(fake_cloud, gpu_type="nvidia-l4", spot_max_nodes=2), cold=True
        )
    }
    assert "gpu_pool" in steps["spot_pool"].needs
