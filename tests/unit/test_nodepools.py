"""What the node-pool steps decide from a pool's describe, and the commands they would run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp import infra
from metaflow_gcp.app import open_stack
from metaflow_gcp.config import load_settings
from metaflow_gcp.gcp import nodepools, operations
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, Step, run_steps
from metaflow_gcp.shell import Runner
from tests.support.console import CapturedConsole

GOOD = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}


def pool(**changes: Any) -> nodepools.Pool:
    s = load_settings({**GOOD, "gpu_type": "nvidia-l4", **changes})
    found = nodepools.gpu_pool(s)
    assert found is not None
    return found


def described(p: nodepools.Pool, **changes: Any) -> dict[str, Any]:
    """A pool as the Container API describes one created from `p`."""
    key, value = p.taint
    config: dict[str, Any] = {
        "machineType": p.machine_type,
        "taints": [{"key": key, "value": value, "effect": "NO_SCHEDULE"}],
    }
    if p.gpu_type:
        config["accelerators"] = [
            {"acceleratorType": p.gpu_type, "acceleratorCount": str(p.gpu_count)}
        ]
    if p.spot:
        config["spot"] = True
    found = {
        "name": p.name,
        "status": "RUNNING",
        "config": config,
        "autoscaling": {"enabled": True, "maxNodeCount": p.max_nodes},
    }
    found.update(changes)
    return found


def test_a_pool_as_created_needs_nothing() -> None:
    p = pool()
    assert nodepools.replace_reasons(described(p), p) == []
    assert nodepools.scaling_change(described(p), p) == ""


def test_only_the_size_changes_in_place() -> None:
    p = pool(gpu_max_nodes=5)
    found = described(pool())
    assert nodepools.replace_reasons(found, p) == []
    assert nodepools.scaling_change(found, p) == "autoscaling 0-2 -> 0-5"
    assert nodepools.scaling_change(described(p, autoscaling={"enabled": False}), p)


def test_what_the_nodes_are_needs_a_new_pool() -> None:
    found = described(pool())
    assert nodepools.replace_reasons(found, pool(gpu_per_node=2)) == [
        "machine type g2-standard-4 -> g2-standard-24",
        "GPUs 1x nvidia-l4 -> 2x nvidia-l4",
    ]
    assert nodepools.replace_reasons(found, pool(gpu_spot=True)) == ["Spot VMs on"]
    untainted = described(pool())
    untainted["config"]["taints"] = []
    assert nodepools.replace_reasons(untainted, pool()) == [
        "taint nvidia.com/gpu=present:NoSchedule missing"
    ]
    assert nodepools.replace_reasons(described(pool(), status="ERROR"), pool()) == [
        "the pool is in ERROR"
    ]


def test_the_no_op_check_reads_the_pools_from_the_cluster_describe() -> None:
    gpu_only = load_settings({**GOOD, "gpu_type": "nvidia-l4"})
    p = nodepools.gpu_pool(gpu_only)
    assert p is not None
    default = {"name": "default-pool", "status": "RUNNING"}
    assert nodepools.pools_match({"nodePools": [default, described(p)]}, gpu_only)
    assert not nodepools.pools_match({"nodePools": [default]}, gpu_only)  # deleted by hand
    assert not nodepools.pools_match(
        {"nodePools": [default, described(p, status="RECONCILING")]}, gpu_only
    )
    # The settings ask for no pool, but one is left: work to do.
    assert not nodepools.pools_match({"nodePools": [default, described(p)]}, load_settings(GOOD))
    assert nodepools.pools_match({"nodePools": [default]}, load_settings(GOOD))


def test_the_create_command_carries_the_hardening_autoscaling_from_zero_and_the_driver() -> None:
    s = load_settings({**GOOD, "gpu_type": "nvidia-tesla-t4", "gpu_per_node": 2, "gpu_spot": True})
    p = nodepools.gpu_pool(s)
    assert p is not None
    assert nodepools.create_flags(p, s.names()) == [
        "--cluster=mf-dev",
        "--location=us-west2-a",
        "--machine-type=n1-standard-8",
        "--num-nodes=0",
        "--enable-autoscaling",
        "--min-nodes=0",
        "--max-nodes=2",
        "--node-taints=nvidia.com/gpu=present:NoSchedule",
        "--service-account=mf-dev-nodes@acme-ml-prod.iam.gserviceaccount.com",
        "--scopes=cloud-platform",
        "--workload-metadata=GKE_METADATA",
        "--shielded-secure-boot",
        "--shielded-integrity-monitoring",
        "--enable-private-nodes",
        "--no-enable-insecure-kubelet-readonly-port",
        "--labels=stack=dev,managed-by=metaflow-gcp",
        "--accelerator=type=nvidia-tesla-t4,count=2,gpu-driver-version=default",
        "--spot",
    ]


def test_a_dry_run_shows_the_pools_after_the_cluster() -> None:
    stack = open_stack(
        {**GOOD, "gpu_type": "nvidia-l4", "spot_max_nodes": 2},
        dry_run=True,
        console=CapturedConsole(width=400),
    )
    infra.up(stack)
    commands = [r.command for r in stack.runner.history]
    create = [c for c in commands if " node-pools create " in c]
    assert [c.split(" ")[4] for c in create] == ["gpu", "spot"]
    cluster = next(i for i, c in enumerate(commands) if " clusters create " in c)
    assert all(commands.index(c) > cluster for c in create)
    # The zone is asked whether it has the GPU before anything is created.
    check = next(i for i, c in enumerate(commands) if "accelerator-types describe nvidia-l4" in c)
    assert "--zone=us-west2-a" in commands[check]
    assert check < commands.index(create[0])


def test_a_cold_stack_without_pools_gets_no_pool_steps() -> None:
    stack = open_stack(GOOD, dry_run=True, console=CapturedConsole())
    assert infra.node_pool_steps(stack, cold=True) == []
    names = [s.name for s in infra.node_pool_steps(stack, cold=False)]
    assert names == ["gpu_pool", "spot_pool"]  # a stack built before: remove leftovers


def test_a_pool_still_being_deleted_is_waited_for_then_made_again(
    fp: FakeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted replace left the pool STOPPING: it is not kept as if it were fine."""
    monkeypatch.setattr(operations, "interval", lambda age: 0.0)
    s = load_settings({**GOOD, "gpu_type": "nvidia-l4"})
    p = nodepools.gpu_pool(s)
    assert p is not None
    describe = ["gcloud", "container", "node-pools", "describe", "gpu", fp.any()]
    create = ["gcloud", "container", "node-pools", "create", "gpu", fp.any()]
    fp.register(describe, stdout=json.dumps(described(p, status="STOPPING")), occurrences=2)
    fp.register(describe, returncode=1, stderr="ERROR: (gcloud) NOT_FOUND: Not found: gpu.")
    fp.register(create, stdout="{}")
    fp.register(describe, stdout=json.dumps(described(p)))
    g = Gcloud(Runner(), "acme-ml-prod")
    step = Step("p", "p", lambda r: nodepools.ensure(g, s.names(), "gpu", p, r))
    report = run_steps([step], console=CapturedConsole(), title="t")
    assert report.outcomes()["p"] is Outcome.CREATED, report.failed
    assert fp.call_count(create) == 1
