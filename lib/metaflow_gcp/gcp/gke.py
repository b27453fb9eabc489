"""A zonal GKE Standard cluster, hardened, with Workload Identity; kubectl credentials for it.

Hardening (GKE hardening guide, CIS GKE benchmark): Dataplane V2 enforces NetworkPolicies,
nodes have no external IP (Cloud NAT carries their image pulls), Shielded nodes boot
with secure boot, the kubelet's unauthenticated read-only port is off, and the control
plane optionally takes connections only from `authorized_networks`.

A cluster made by an earlier version is brought up to this shape in place where GKE
allows it; what GKE fixes at creation (Dataplane V2, secure boot of an existing pool) is
reported with why and what to do, and never changed behind the user's back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import AlreadyExists, NotFound, StackError
from metaflow_gcp.gcp import nodepools
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.gcp.operations import OperationFailed, follow
from metaflow_gcp.graph import Outcome, StepRun

CREATE_TIMEOUT = 40 * 60.0
DELETE_TIMEOUT = 30 * 60.0
UPDATE_TIMEOUT = 60 * 60.0  # a node pool's nodes are re-created one by one


def create_flags(s: Settings, n: Names) -> list[str]:
    return [
        f"--location={n.zone}",
        f"--network={n.network}",
        f"--subnetwork={n.subnet}",
        "--enable-ip-alias",
        f"--workload-pool={n.workload_pool}",
        "--workload-metadata=GKE_METADATA",
        f"--service-account={n.node_sa}",
        "--scopes=cloud-platform",
        "--num-nodes=1",
        "--enable-autoscaling",
        f"--min-nodes={s.min_nodes}",
        f"--max-nodes={s.max_nodes}",
        f"--machine-type={s.node_machine_type}",
        "--release-channel=regular",
        f"--labels=stack={n.stack},managed-by=metaflow-gcp",
        *HARDENING_FLAGS,
        *authorized_network_flags(s),
    ]


HARDENING_FLAGS = (
    "--enable-dataplane-v2",  # eBPF dataplane: NetworkPolicies are enforced
    "--enable-private-nodes",  # nodes get no external IP; Cloud NAT for egress
    "--enable-shielded-nodes",
    "--shielded-secure-boot",
    "--shielded-integrity-monitoring",
    "--no-enable-insecure-kubelet-readonly-port",  # port 10255: unauthenticated reads
)
DATAPLANE_V2 = "ADVANCED_DATAPATH"


def authorized_network_flags(s: Settings) -> list[str]:
    """Off by default: the control plane then answers any address (credentials still needed)."""
    if not s.authorized_networks:
        return ["--no-enable-master-authorized-networks"]
    return [
        "--enable-master-authorized-networks",
        f"--master-authorized-networks={','.join(s.authorized_networks)}",
    ]


@dataclass(frozen=True)
class Gap:
    """One way a cluster falls short of the hardened shape.

    fix: the `gcloud container ...` arguments that close it in place, or None when GKE
    cannot change it on a live cluster; `why` then says why and what to do.
    """

    problem: str
    fix: tuple[str, ...] | None
    why: str = ""


def _authorized(found: dict[str, Any]) -> tuple[bool, list[str]]:
    config = (
        ((found.get("controlPlaneEndpointsConfig") or {}).get("ipEndpointsConfig") or {}).get(
            "authorizedNetworksConfig"
        )
        or found.get("masterAuthorizedNetworksConfig")
        or {}
    )
    cidrs = sorted(str(b.get("cidrBlock")) for b in config.get("cidrBlocks") or [])
    return bool(config.get("enabled")), cidrs


def _private_by_default(found: dict[str, Any]) -> bool:
    return bool(
        (found.get("networkConfig") or {}).get("defaultEnablePrivateNodes")
        or (found.get("privateClusterConfig") or {}).get("enablePrivateNodes")
    )


def _readonly_port_default(found: dict[str, Any]) -> Any:
    defaults = (found.get("nodePoolDefaults") or {}).get("nodeConfigDefaults") or {}
    return (defaults.get("nodeKubeletConfig") or {}).get("insecureKubeletReadonlyPortEnabled")


RECREATE_CLUSTER = (
    "empty it and delete only the cluster (`helm uninstall` the releases, then `gcloud "
    "container clusters delete {cluster} --location={zone}`), then `inv infra.up` creates "
    "it hardened and `inv services.up` reinstalls the services; run history stays in "
    "Cloud SQL and the datastore"
)


def hardening_gaps(found: dict[str, Any], s: Settings, n: Names) -> list[Gap]:
    """Every difference from the hardened shape, each with its in-place fix or its reason."""
    gaps: list[Gap] = []
    cluster = ("clusters", "update", n.cluster, f"--location={n.zone}")
    recreate = RECREATE_CLUSTER.format(cluster=n.cluster, zone=n.zone)
    if (found.get("networkConfig") or {}).get("datapathProvider") != DATAPLANE_V2:
        gaps.append(
            Gap(
                "has no Dataplane V2, so NetworkPolicies are not enforced",
                None,
                f"GKE chooses the dataplane when a cluster is created; to get it, {recreate}",
            )
        )
    if not (found.get("shieldedNodes") or {}).get("enabled", True):
        gaps.append(Gap("has Shielded nodes off", (*cluster, "--enable-shielded-nodes")))
    if not _private_by_default(found):
        gaps.append(Gap("gives new nodes external IPs", (*cluster, "--enable-private-nodes")))
    if _readonly_port_default(found) is not False:
        gaps.append(
            Gap(
                "leaves the kubelet read-only port on for new nodes",
                (*cluster, "--no-enable-insecure-kubelet-readonly-port"),
            )
        )
    enabled, cidrs = _authorized(found)
    wanted = sorted(s.authorized_networks)
    if (enabled, cidrs if enabled else []) != (bool(wanted), wanted):
        gaps.append(
            Gap(
                f"admits the control plane from {', '.join(cidrs) if enabled else 'anywhere'}, "
                f"settings say {', '.join(wanted) or 'anywhere'}",
                (*cluster, *authorized_network_flags(s)),
            )
        )
    for pool in found.get("nodePools") or []:
        gaps.extend(_pool_gaps(pool, n, recreate))
    return gaps


def _pool_gaps(pool: dict[str, Any], n: Names, recreate: str) -> list[Gap]:
    name = str(pool.get("name"))
    update = ("node-pools", "update", name, f"--cluster={n.cluster}", f"--location={n.zone}")
    config = pool.get("config") or {}
    gaps = []
    if not (pool.get("networkConfig") or {}).get("enablePrivateNodes"):
        gaps.append(
            Gap(
                f"node pool {name} has external IPs (its nodes are re-created one by one)",
                (*update, "--enable-private-nodes"),
            )
        )
    if (config.get("kubeletConfig") or {}).get("insecureKubeletReadonlyPortEnabled") is not False:
        gaps.append(
            Gap(
                f"node pool {name} leaves the kubelet read-only port on",
                (*update, "--no-enable-insecure-kubelet-readonly-port"),
            )
        )
    if not (config.get("shieldedInstanceConfig") or {}).get("enableSecureBoot"):
        gaps.append(
            Gap(
                f"node pool {name} boots without secure boot",
                None,
                "GKE sets secure boot when a node pool is created; to get it, create a pool "
                f"with --shielded-secure-boot and delete {name}, or {recreate}",
            )
        )
    return gaps


def describe(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe(*_describe_args(n))


def status_facts(found: dict[str, Any] | None) -> dict[str, Any]:
    """What `inv status` shows of the cluster beside whether it exists."""
    identity = (found or {}).get("workloadIdentityConfig") or {}
    return {"status": (found or {}).get("status"), "workload_pool": identity.get("workloadPool")}


def prime_describe(gcloud: Gcloud, n: Names, found: dict[str, Any] | None) -> None:
    """The next describe of the cluster answers with `found` (read a moment ago)."""
    gcloud.prime(found, *_describe_args(n))


def _describe_args(n: Names) -> tuple[str, ...]:
    return ("container", "clusters", "describe", n.cluster, f"--location={n.zone}")


def drift(found: dict[str, Any], s: Settings, n: Names) -> list[str]:
    """Everything that differs from what infra.up would make (the no-op check's judge)."""
    return [*_basics(found, n), *(gap.problem for gap in hardening_gaps(found, s, n))]


def _basics(found: dict[str, Any], n: Names) -> list[str]:
    problems = []
    pool = found.get("workloadIdentityConfig", {}).get("workloadPool")
    if pool != n.workload_pool:
        problems.append("has no Workload Identity pool")
    if found.get("subnetwork") not in (n.subnet, None) and not str(
        found.get("subnetwork", "")
    ).endswith(f"/{n.subnet}"):
        problems.append(f"is not on subnet {n.subnet}")
    return problems


def _wait_running(gcloud: Gcloud, n: Names, run: StepRun, what: str) -> None:
    def poll() -> tuple[bool, str]:
        found = describe(gcloud, n)
        status = (found or {}).get("status", "MISSING")
        if status == "RUNNING":
            return True, status
        if status in ("ERROR", "DEGRADED", "MISSING", "STOPPING"):
            message = (found or {}).get("statusMessage", "")
            raise OperationFailed(
                f"cluster {n.cluster} is {status}{': ' + message if message else ''}"
            )
        return False, status

    follow(run, what, poll, timeout=CREATE_TIMEOUT)


BROKEN = ("ERROR", "DEGRADED")


def ensure_cluster(
    gcloud: Gcloud,
    s: Settings,
    n: Names,
    run: StepRun,
    *,
    cold: bool = False,
    tainted: Callable[[str], bool] = lambda _name: False,
    track: Callable[[str, bool], None] = lambda _name, _healthy: None,
) -> Outcome:
    """Create the cluster, or keep it; replace it only when `tainted` says we may.

    tainted(name): the state file shows this tool created it and it never became usable.
    track(name, healthy): record in the state what was created and whether it came up.
    """
    found = None if cold else describe(gcloud, n)
    replaced = False
    if found is not None:
        status = found.get("status")
        if status in ("PROVISIONING", "RECONCILING"):
            _wait_running(gcloud, n, run, f"cluster {n.cluster} (resumed)")
            track(n.cluster, True)
            return Outcome.CREATED
        if status in BROKEN and tainted(n.cluster):
            _replace(gcloud, n, run, found)
            replaced = True
        elif status != "RUNNING":
            raise StackError(
                f"GKE cluster {n.cluster} is {status}. Fix: wait for it to settle; if it is "
                "broken, delete it with `gcloud container clusters delete "
                f"{n.cluster} --location={n.zone}` and re-run (it was not made by this tool, "
                "or it once worked, so it is not replaced automatically)"
            )
        else:
            track(n.cluster, True)
            problems = _basics(found, n)
            if problems:
                run.note(f"{n.cluster} {'; '.join(problems)} (not changed automatically)")
            return Outcome.KEPT
    if not replaced:
        run.before_change(f"create GKE cluster {n.cluster} in {n.zone} ({s.node_machine_type})")
    run.note(f"creating {n.cluster}")
    try:
        gcloud.mutate(
            "container", "clusters", "create", n.cluster, *create_flags(s, n), "--async", fmt=None
        )
    except AlreadyExists:
        if cold:  # it was there after all: look at it the normal way
            return ensure_cluster(gcloud, s, n, run, tainted=tainted, track=track)
        raise
    track(n.cluster, False)
    if gcloud.dry_run:
        return Outcome.CREATED
    # The cluster's own status is the operation's outcome: PROVISIONING, then RUNNING or ERROR.
    _wait_running(gcloud, n, run, f"creating {n.cluster}")
    track(n.cluster, True)
    return Outcome.CREATED


def _replace(gcloud: Gcloud, n: Names, run: StepRun, found: dict[str, Any]) -> None:
    """Terraform's "tainted": a cluster our create left broken is deleted and made again."""
    message = found.get("statusMessage") or ""
    run.before_change(
        f"replace GKE cluster {n.cluster}: this tool created it and it never became usable "
        f"({found.get('status')}{': ' + message if message else ''}); delete it and create it "
        "again"
    )
    run.note(f"deleting the broken {n.cluster}")
    delete_cluster(gcloud, n, run, found)


def delete_cluster(gcloud: Gcloud, n: Names, run: StepRun, found: dict[str, Any]) -> None:
    """Delete (or keep waiting for a delete already under way) until the cluster is gone.

    found: the cluster as the caller just described it (its status says whether a delete
    is already under way)."""
    if found.get("status") != "STOPPING":
        try:
            gcloud.mutate(
                "container",
                "clusters",
                "delete",
                n.cluster,
                f"--location={n.zone}",
                "--quiet",
                "--async",
            )
        except NotFound:
            return
    if gcloud.dry_run:
        return

    def gone() -> tuple[bool, str]:
        left = describe(gcloud, n)
        return left is None, "DELETING" if left else "GONE"

    follow(run, f"deleting {n.cluster}", gone, timeout=DELETE_TIMEOUT)


def remove(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """teardown's step: the cluster with its node pools, then our kubeconfig entries."""
    found = describe(gcloud, n)
    if found is None and not gcloud.dry_run:
        forget_credentials(gcloud, n)
        return Outcome.GONE
    run.before_removal(f"delete GKE cluster {n.cluster}{nodepools.teardown_note(found)}")
    delete_cluster(gcloud, n, run, found or {})
    forget_credentials(gcloud, n)
    return Outcome.DELETED


def forget_credentials(gcloud: Gcloud, n: Names) -> None:
    """gcloud leaves its kubeconfig entries behind after an --async delete: remove them,
    so nothing reaches a later cluster of the same name through the old endpoint."""
    runner, context = gcloud.runner, n.kube_context
    if not runner.dry_run and (not has_context(context, runner.env) or not runner.has("kubectl")):
        return
    for entry in ("context", "cluster", "user"):  # all three are named like the context
        runner.run(["kubectl", "config", f"delete-{entry}", context], mutating=True, check=False)


def ensure_hardened(
    gcloud: Gcloud, s: Settings, n: Names, run: StepRun, *, just_created: bool
) -> Outcome:
    """Close what GKE can change in place, one operation at a time; report the rest.

    Runs after Cloud NAT exists: nodes that lose their external IPs still pull images.
    """
    if just_created and not gcloud.dry_run:
        return Outcome.KEPT  # created with every hardening flag
    found = describe(gcloud, n)
    if found is None:
        if gcloud.dry_run:
            return Outcome.KEPT
        raise StackError(f"GKE cluster {n.cluster} is gone. Fix: run `inv infra.up` again")
    gaps = hardening_gaps(found, s, n)
    for gap in gaps:
        if gap.fix is None:
            run.note(f"{n.cluster} {gap.problem}: cannot be changed in place. {gap.why}")
    fixable = [gap for gap in gaps if gap.fix is not None]
    if not fixable:
        return Outcome.KEPT
    run.before_change(
        f"harden GKE cluster {n.cluster} in place: {'; '.join(g.problem for g in fixable)}",
        new=False,
    )
    for gap in fixable:
        assert gap.fix is not None
        run.note(f"fixing: {n.cluster} {gap.problem}")
        gcloud.mutate("container", *gap.fix, "--quiet", fmt=None, timeout=UPDATE_TIMEOUT)
    return Outcome.UPDATED


# -- kubectl credentials ----------------------------------------------------------------


def kubeconfig_path(env: Mapping[str, str] | None = None) -> Path:
    """The file kubectl reads first: KUBECONFIG (the runner's env wins), else ~/.kube/config."""
    value = (env or {}).get("KUBECONFIG") or os.environ.get("KUBECONFIG", "")
    first = value.split(os.pathsep)[0]
    return Path(first) if first else Path.home() / ".kube" / "config"


def _kubeconfig(env: Mapping[str, str] | None) -> dict[str, Any]:
    path = kubeconfig_path(env)
    if not path.is_file():
        return {}
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def context_server(context: str, env: Mapping[str, str] | None = None) -> str | None:
    """The API server a kubeconfig context points at; None when there is no such context."""
    config = _kubeconfig(env)
    entry = next((c for c in config.get("contexts") or [] if c.get("name") == context), None)
    if entry is None:
        return None
    cluster = (entry.get("context") or {}).get("cluster")
    for item in config.get("clusters") or []:
        if item.get("name") == cluster:
            return str((item.get("cluster") or {}).get("server") or "")
    return ""


def has_context(context: str, env: Mapping[str, str] | None = None) -> bool:
    return context_server(context, env) is not None


def context_is_current(
    context: str, cluster: dict[str, Any] | None, env: Mapping[str, str] | None = None
) -> bool:
    """The context exists and points at this cluster's endpoint, not at one torn down.

    gcloud writes and removes kubeconfig entries only when it waits for a create or a
    delete; with --async it does neither, so an entry can outlive its cluster.
    """
    endpoint = (cluster or {}).get("endpoint")
    return bool(endpoint) and context_server(context, env) == f"https://{endpoint}"


def ensure_credentials(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    """Write the cluster's kubectl context (gke_PROJECT_ZONE_CLUSTER) unless it is current.

    cold: the cluster was just created, so any context of that name is an old cluster's.
    """
    env = gcloud.runner.env
    if (
        not gcloud.dry_run
        and not cold
        and context_is_current(n.kube_context, describe(gcloud, n), env)
    ):
        return Outcome.KEPT
    run.before_change(f"write kubectl credentials for {n.cluster}")
    fetch_credentials(gcloud, n)
    return Outcome.CREATED


def fetch_credentials(gcloud: Gcloud, n: Names) -> None:
    """Write (or overwrite) the context gke_PROJECT_ZONE_CLUSTER for the cluster as it is now."""
    gcloud.mutate(
        "container", "clusters", "get-credentials", n.cluster, f"--location={n.zone}", fmt=None
    )
