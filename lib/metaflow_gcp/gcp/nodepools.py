"""The optional node pools: GPUs for `@kubernetes(gpu=N)`, Spot VMs for cheap CPU steps.

Both scale from zero, so they cost nothing until a step asks for them, and both are
tainted, so nothing lands there by accident:

* GPU pool: taint nvidia.com/gpu=present:NoSchedule. Metaflow's `@kubernetes(gpu=1)`
  puts `nvidia.com/gpu: 1` in the container's limits, and GKE's ExtendedResourceToleration
  admission gives every pod requesting `nvidia.com/gpu` the matching toleration, so GPU steps
  need no extra argument. GKE taints GPU pools itself when the cluster has a CPU pool; we set
  the taint explicitly so it never depends on that. GKE installs the driver
  (gpu-driver-version=default).
* Spot pool: taint cloud.google.com/gke-spot=true:NoSchedule; GKE labels Spot nodes
  cloud.google.com/gke-spot=true. A step lands there with SPOT_STEP_DECORATOR.

Changing a pool's size changes it in place; changing what its nodes are (machine type,
accelerator, Spot) deletes and re-creates that pool only, never the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import (
    AlreadyExists,
    CommandError,
    NotFound,
    NotOfferedInZone,
    StackError,
)
from metaflow_gcp.gcp import accelerators
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.gcp.operations import OperationFailed, follow
from metaflow_gcp.graph import Outcome, StepRun

GPU_POOL = "gpu"
SPOT_POOL = "spot"
GPU_TAINT = ("nvidia.com/gpu", "present")
SPOT_LABEL = "cloud.google.com/gke-spot"
SPOT_TAINT = (SPOT_LABEL, "true")
GPU_DRIVER = "default"  # GKE's default driver for the node version; "latest" is COS-only
POOL_TIMEOUT = 30 * 60.0
SPOT_STEP_DECORATOR = (
    '@kubernetes(node_selector={"cloud.google.com/gke-spot": "true"}, '
    'tolerations=[{"key": "cloud.google.com/gke-spot", "operator": "Equal", '
    '"value": "true", "effect": "NoSchedule"}])'
)


@dataclass(frozen=True)
class Pool:
    """What one node pool should be."""

    name: str
    machine_type: str
    max_nodes: int
    spot: bool
    taint: tuple[str, str]
    gpu_type: str = ""
    gpu_count: int = 0

    def summary(self) -> str:
        what = (
            f"{self.gpu_count}x {self.gpu_type} on {self.machine_type}"
            if self.gpu_type
            else self.machine_type
        )
        return f"{what}{', Spot' if self.spot else ''}, 0-{self.max_nodes} nodes"


def gpu_pool(s: Settings) -> Pool | None:
    if not s.gpu_type:
        return None
    machine = s.gpu_machine_type or accelerators.default_machine(s.gpu_type, s.gpu_per_node)
    return Pool(
        GPU_POOL, machine, s.gpu_max_nodes, s.gpu_spot, GPU_TAINT, s.gpu_type, s.gpu_per_node
    )


def spot_pool(s: Settings) -> Pool | None:
    if s.spot_max_nodes <= 0:
        return None
    return Pool(SPOT_POOL, s.node_machine_type, s.spot_max_nodes, True, SPOT_TAINT)


def create_flags(p: Pool, n: Names) -> list[str]:
    """The default pool's hardening (node account, Workload Identity metadata, Shielded
    nodes, private nodes, kubelet read-only port off), plus autoscaling from zero and the
    pool's taint. Stated, not inherited, so a pool is hardened whatever the cluster's
    defaults were when it was made."""
    key, value = p.taint
    flags = [
        f"--cluster={n.cluster}",
        f"--location={n.zone}",
        f"--machine-type={p.machine_type}",
        "--num-nodes=0",
        "--enable-autoscaling",
        "--min-nodes=0",
        f"--max-nodes={p.max_nodes}",
        f"--node-taints={key}={value}:NoSchedule",
        f"--service-account={n.node_sa}",
        "--scopes=cloud-platform",
        "--workload-metadata=GKE_METADATA",
        "--shielded-secure-boot",
        "--shielded-integrity-monitoring",
        "--enable-private-nodes",
        "--no-enable-insecure-kubelet-readonly-port",
        f"--labels=stack={n.stack},managed-by=metaflow-gcp",
    ]
    if p.gpu_type:
        flags.append(
            f"--accelerator=type={p.gpu_type},count={p.gpu_count},gpu-driver-version={GPU_DRIVER}"
        )
    if p.spot:
        flags.append("--spot")
    return flags


def _where(n: Names) -> tuple[str, str]:
    return f"--cluster={n.cluster}", f"--location={n.zone}"


def describe(gcloud: Gcloud, n: Names, name: str) -> dict[str, Any] | None:
    return gcloud.describe("container", "node-pools", "describe", name, *_where(n))


def replace_reasons(found: dict[str, Any], p: Pool) -> list[str]:
    """What differs in the nodes themselves: only a new pool can change these."""
    config = found.get("config") or {}
    reasons = []
    if config.get("machineType") != p.machine_type:
        reasons.append(f"machine type {config.get('machineType')} -> {p.machine_type}")
    cards = config.get("accelerators") or []
    have = (
        (cards[0].get("acceleratorType"), int(cards[0].get("acceleratorCount", 0)))
        if cards
        else ("", 0)
    )
    if have != (p.gpu_type, p.gpu_count):
        reasons.append(
            f"GPUs {have[1]}x {have[0] or 'none'} -> {p.gpu_count}x {p.gpu_type or 'none'}"
        )
    if bool(config.get("spot")) != p.spot:
        reasons.append("Spot VMs on" if p.spot else "Spot VMs off")
    key, value = p.taint
    taints = config.get("taints") or []
    if not any(
        t.get("key") == key and t.get("value") == value and t.get("effect") == "NO_SCHEDULE"
        for t in taints
    ):
        reasons.append(f"taint {key}={value}:NoSchedule missing")
    if found.get("status") == "ERROR":
        reasons.append("the pool is in ERROR")
    return reasons


def scaling_change(found: dict[str, Any], p: Pool) -> str:
    scaling = found.get("autoscaling") or {}
    if (
        scaling.get("enabled")
        and int(scaling.get("minNodeCount", 0)) == 0
        and int(scaling.get("maxNodeCount", 0)) == p.max_nodes
    ):
        return ""
    return f"autoscaling 0-{scaling.get('maxNodeCount', 0)} -> 0-{p.max_nodes}"


def _wait(
    gcloud: Gcloud, n: Names, name: str, run: StepRun, what: str, *, gone: bool = False
) -> None:
    def poll() -> tuple[bool, str]:
        found = describe(gcloud, n, name)
        if found is None:
            if gone:
                return True, "DELETED"
            raise OperationFailed(f"node pool {name} disappeared while {what}")
        status = str(found.get("status", "UNKNOWN"))
        if status == "RUNNING" and not gone:
            return True, status
        if status == "ERROR" or (status == "RUNNING_WITH_ERROR" and not gone):
            message = found.get("statusMessage", "")
            raise OperationFailed(
                f"node pool {name} is {status}{': ' + message if message else ''}"
            )
        return False, status

    follow(run, what, poll, timeout=POOL_TIMEOUT)


def _zone_problem(error: CommandError, p: Pool, n: Names) -> StackError | None:
    if p.gpu_type and isinstance(error, NotOfferedInZone):
        return StackError(
            f"gpu_type: zone {n.zone} does not offer {p.gpu_type}. Fix: pick a zone that does "
            f"(`gcloud compute accelerator-types list --filter=name={p.gpu_type}`) and set zone, "
            "or choose another gpu_type"
        )
    return None


def _create(gcloud: Gcloud, n: Names, p: Pool, run: StepRun) -> None:
    run.note(f"creating node pool {p.name}")
    try:
        gcloud.mutate("container", "node-pools", "create", p.name, *create_flags(p, n), "--async")
    except AlreadyExists:
        pass  # a run before us started it: wait for it like our own
    except CommandError as error:
        raise _zone_problem(error, p, n) or error from error
    if not gcloud.dry_run:
        _wait(gcloud, n, p.name, run, f"creating node pool {p.name}")


def _delete(gcloud: Gcloud, n: Names, name: str, run: StepRun) -> None:
    run.note(f"deleting node pool {name}")
    try:
        gcloud.mutate("container", "node-pools", "delete", name, *_where(n), "--async", fmt=None)
    except NotFound:
        return
    if not gcloud.dry_run:
        _wait(gcloud, n, name, run, f"deleting node pool {name}", gone=True)


def ensure(
    gcloud: Gcloud, n: Names, name: str, p: Pool | None, run: StepRun, *, cold: bool = False
) -> Outcome:
    """Make pool `name` match `p`; `p` None means the settings ask for no such pool."""
    found = None if cold else describe(gcloud, n, name)
    if found is not None and found.get("status") in ("PROVISIONING", "RECONCILING"):
        _wait(gcloud, n, name, run, f"node pool {name} (resumed)")
        found = describe(gcloud, n, name)
    if found is not None and found.get("status") == "STOPPING":  # a delete of an earlier run
        _wait(gcloud, n, name, run, f"node pool {name} (deleting)", gone=True)
        found = None
    if p is None:
        if found is None:
            return Outcome.KEPT
        run.before_change(f"delete node pool {name} (the settings no longer ask for it)", new=False)
        _delete(gcloud, n, name, run)
        return Outcome.DELETED
    if found is None:
        run.before_change(f"create node pool {name} ({p.summary()})")
        _create(gcloud, n, p, run)
        return Outcome.CREATED
    reasons = replace_reasons(found, p)
    if reasons:
        run.before_change(
            f"replace node pool {name} (delete + create; the cluster stays): {'; '.join(reasons)}"
        )
        _delete(gcloud, n, name, run)
        _create(gcloud, n, p, run)
        return Outcome.UPDATED
    change = scaling_change(found, p)
    if change:
        run.before_change(f"update node pool {name} in place: {change}", new=False)
        gcloud.mutate(
            "container", "node-pools", "update", name, *_where(n),
            "--enable-autoscaling", "--min-nodes=0", f"--max-nodes={p.max_nodes}", "--async",
        )  # fmt: skip
        if not gcloud.dry_run:
            _wait(gcloud, n, name, run, f"resizing node pool {name}")
        return Outcome.UPDATED
    run.note(p.summary())
    return Outcome.KEPT


def check_zone_offers(gcloud: Gcloud, s: Settings, n: Names, run: StepRun) -> Outcome:
    """Fail early, before anything costs money, when the zone has no such GPU."""
    if not s.gpu_type:
        return Outcome.KEPT
    try:  # a dry run shows the read and takes the answer as "offered"
        found = gcloud.read(
            "compute", "accelerator-types", "describe", s.gpu_type, f"--zone={n.zone}", dry={}
        )
    except NotFound:
        found = None
    if found is not None:
        run.note(f"{n.zone} offers {s.gpu_type}")
        return Outcome.KEPT
    offered = (
        gcloud.read("compute", "accelerator-types", "list", f"--filter=name={s.gpu_type}", dry=[])
        or []
    )
    zones = sorted(
        str(a.get("zone", "")).rsplit("/", 1)[-1]
        for a in offered
        if str(a.get("zone", "")).rsplit("/", 1)[-1].startswith(f"{n.region}-")
    )
    fix = (
        f"set zone to one of {', '.join(zones)}"
        if zones
        else f"no zone of {n.region} offers it: choose another region or gpu_type"
    )
    raise StackError(f"gpu_type: zone {n.zone} does not offer {s.gpu_type}. Fix: {fix}")


def pools_match(cluster: dict[str, Any], s: Settings) -> bool:
    """The no-op check: a cluster's describe lists its pools, so this costs no extra call."""
    found = {p.get("name"): p for p in cluster.get("nodePools") or []}
    for name, wanted in ((GPU_POOL, gpu_pool(s)), (SPOT_POOL, spot_pool(s))):
        pool = found.get(name)
        if wanted is None:
            if pool is not None:
                return False
        elif (
            pool is None
            or pool.get("status") != "RUNNING"
            or replace_reasons(pool, wanted)
            or scaling_change(pool, wanted)
        ):
            return False
    return True


# -- status and teardown: both read the pools from the cluster's describe ------------------

_KINDS = {GPU_POOL: "GPU node pool", SPOT_POOL: "Spot node pool"}


def status_rows(
    cluster: dict[str, Any] | None, s: Settings
) -> list[tuple[str, str, dict[str, Any] | None, dict[str, Any]]]:
    """(kind, name, pool as found or None, key facts) for each pool asked for or present."""
    found = {p.get("name"): p for p in (cluster or {}).get("nodePools") or []}
    rows = []
    for name, wanted in ((GPU_POOL, gpu_pool(s)), (SPOT_POOL, spot_pool(s))):
        pool = found.get(name)
        if pool is None and wanted is None:
            continue
        config, scaling = (pool or {}).get("config") or {}, (pool or {}).get("autoscaling") or {}
        cards = config.get("accelerators") or []
        facts: dict[str, Any] = {
            "status": (pool or {}).get("status"),
            "machine_type": config.get("machineType"),
            "gpus": f"{cards[0].get('acceleratorCount')}x {cards[0].get('acceleratorType')}"
            if cards
            else None,
            "nodes": f"{scaling.get('minNodeCount', 0)}-{scaling.get('maxNodeCount', 0)}"
            if scaling.get("enabled")
            else None,
            "spot": True if config.get("spot") else None,
        }
        if wanted is None:
            facts["pending"] = "the settings no longer ask for it: infra.up deletes it"
        elif pool is not None and (replace_reasons(pool, wanted) or scaling_change(pool, wanted)):
            facts["pending"] = "differs from the settings: see inv infra.plan"
        rows.append((_KINDS[name], name, pool, facts))
    return rows


def teardown_note(cluster: dict[str, Any] | None) -> str:
    """The preview names the pools that go with the cluster."""
    ours = [
        p.get("name") for p in (cluster or {}).get("nodePools") or [] if p.get("name") in _KINDS
    ]
    return f" with its node pools {', '.join(map(str, ours))}" if ours else ""
