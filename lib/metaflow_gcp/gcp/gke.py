"""A zonal GKE Standard cluster with Workload Identity, and kubectl credentials for it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import AlreadyExists, StackError
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.gcp.operations import OperationFailed, follow
from metaflow_gcp.graph import Outcome, StepRun

CREATE_TIMEOUT = 40 * 60.0


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
    ]


def describe(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe("container", "clusters", "describe", n.cluster, f"--location={n.zone}")


def drift(found: dict[str, Any], n: Names) -> list[str]:
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


def ensure_cluster(
    gcloud: Gcloud, s: Settings, n: Names, run: StepRun, *, cold: bool = False
) -> Outcome:
    found = None if cold else describe(gcloud, n)
    if found is not None:
        status = found.get("status")
        if status in ("PROVISIONING", "RECONCILING"):
            _wait_running(gcloud, n, run, f"cluster {n.cluster} (resumed)")
            return Outcome.CREATED
        if status != "RUNNING":
            raise StackError(
                f"GKE cluster {n.cluster} is {status}. Fix: wait for it to settle, or delete it "
                "with `inv teardown` and re-run"
            )
        problems = drift(found, n)
        if problems:
            run.note(f"{n.cluster} {'; '.join(problems)} (not changed automatically)")
        return Outcome.KEPT
    run.before_change(f"create GKE cluster {n.cluster} in {n.zone} ({s.node_machine_type})")
    run.note(f"creating {n.cluster}")
    try:
        gcloud.mutate(
            "container", "clusters", "create", n.cluster, *create_flags(s, n), "--async", fmt=None
        )
    except AlreadyExists:
        if cold:  # it was there after all: look at it the normal way
            return ensure_cluster(gcloud, s, n, run)
        raise
    if gcloud.dry_run:
        return Outcome.CREATED
    # The cluster's own status is the operation's outcome: PROVISIONING, then RUNNING or ERROR.
    _wait_running(gcloud, n, run, f"creating {n.cluster}")
    return Outcome.CREATED


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
