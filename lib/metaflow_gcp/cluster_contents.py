"""Emptying the cluster before teardown deletes it: disks (PVCs) and load balancers outlive
a deleted cluster, and keep costing money where nobody looks for them."""

from __future__ import annotations

from metaflow_gcp.app import Stack
from metaflow_gcp.errors import CommandTimeout, MissingTool, StackError, Unreachable
from metaflow_gcp.gcp import gke
from metaflow_gcp.graph import Outcome, StepRun
from metaflow_gcp.kube import Helm, Kubectl
from metaflow_gcp.kube_names import AIRFLOW_NS, NAMESPACES, RELEASES
from metaflow_gcp.shell import INSTALL_HINTS

# Earlier versions ran Airflow's database in the cluster (the chart's bundled Postgres).
LEGACY_AIRFLOW_PVC = "data-airflow-postgresql-0"


def empty(stack: Stack, run: StepRun, *, delete_data: bool) -> Outcome:
    """Helm uninstalls our releases, then deleting our namespaces takes every PVC and
    Service left in them. Without helm the namespaces alone do that; without kubectl the
    step fails, so nothing after it (the cluster above all) is deleted.
    """
    g, n, runner, dry = stack.gcloud, stack.names, stack.runner, stack.dry_run
    cluster = None if dry else gke.describe(g, n)
    if not dry and not run.planning:  # the cluster step, next on this chain, starts here
        gke.prime_describe(g, n, cluster)
    if not dry and cluster is None:
        run.note("cluster already gone; nothing to uninstall")
        return Outcome.GONE
    if not dry and not runner.has("kubectl"):
        raise MissingTool(
            "kubectl", f"{INSTALL_HINTS['kubectl']}; it empties the cluster before it is deleted"
        )
    with_helm = dry or runner.has("helm")
    if not dry and not gke.context_is_current(n.kube_context, cluster, runner.env):
        # None here, or one of an earlier cluster of this name: it would reach nothing.
        # Only our kubeconfig changes, so this goes ahead while the lock is being taken.
        run.before_change(
            f"fetch credentials for {n.cluster}, then empty it", new=False, locked=False
        )
        gke.fetch_credentials(g, n)
    helm = Helm(runner, n.kube_context)
    kubectl = Kubectl(runner, n.kube_context)
    try:
        listed = helm.releases() if with_helm else []
        found = kubectl.read(
            "get", "namespaces", dry={"items": [{"metadata": {"name": ns}} for ns in NAMESPACES]}
        )
    except (Unreachable, CommandTimeout) as error:
        # Only silence is passed over; a refusal (Forbidden, a missing auth plugin) or an
        # error we cannot name stops here, before the cluster is deleted with its disks.
        stack.console.print(
            f"[yellow]![/] the cluster did not answer ({error.one_line()}); going on. "
            "Disks of its volumes may outlive it: `gcloud compute disks list "
            f"--filter=name~^pvc- --project={n.project}` shows them"
        )
        return Outcome.SKIPPED
    installed = {(r.get("name"), r.get("namespace")) for r in listed}
    present = {str(i.get("metadata", {}).get("name")) for i in found.get("items") or []}
    ours = [r for r in RELEASES if r in installed or dry]
    namespaces = [ns for ns in NAMESPACES if ns in present]
    if AIRFLOW_NS in namespaces and not delete_data and not dry:
        _refuse_legacy_airflow_history(stack, kubectl)
    if not ours and not namespaces:
        return Outcome.GONE
    what = [f"uninstall {', '.join(r for r, _ in ours)}"] if ours else []
    if namespaces:
        what.append(f"delete namespaces {', '.join(namespaces)}")
    run.before_removal(" and ".join(what))
    if not with_helm:
        run.note("helm not found: deleting the namespaces removes the releases' objects")
    for release, namespace in ours:
        run.note(f"uninstalling {release}")
        helm.run(
            "uninstall", release, f"--namespace={namespace}", "--wait", "--timeout=10m", timeout=900
        )
    for namespace in namespaces:
        run.note(f"deleting namespace {namespace}")
        kubectl.run(
            "delete",
            "namespace",
            namespace,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=5m",
            timeout=600,
        )
    return Outcome.DELETED


def _refuse_legacy_airflow_history(stack: Stack, kubectl: Kubectl) -> None:
    """Deleting the namespace deletes the claim, and with it the disk (policy Delete).

    A volume set to Retain outlives namespace and cluster, so it needs no refusal.
    """
    claim = kubectl.get("persistentvolumeclaim", LEGACY_AIRFLOW_PVC, namespace=AIRFLOW_NS)
    if claim is None:
        return
    volume = str((claim.get("spec") or {}).get("volumeName") or "")
    pv = kubectl.get("persistentvolume", volume) if volume else None
    if (pv or {}).get("spec", {}).get("persistentVolumeReclaimPolicy") == "Retain":
        return
    raise StackError(
        f"namespace {AIRFLOW_NS} still holds Airflow's run history in the bundled Postgres "
        f"volume {LEGACY_AIRFLOW_PVC}, which deleting the namespace would destroy. Fix: keep "
        f"it with `kubectl --context={stack.names.kube_context} patch pv "
        f"{volume or '<its volume>'} -p "
        """'{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}'` (its disk then outlives """
        "the cluster) and run teardown again, or pass --delete-data to delete it"
    )
