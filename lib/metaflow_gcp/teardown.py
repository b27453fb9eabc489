"""`inv teardown`: remove the stack in the order Google Cloud allows, losing no data by surprise.

    Helm releases -> (GKE cluster || Cloud SQL instances) -> peering, range, subnet, network
                  -> IAM bindings -> service accounts;  Cloud Router (and its NAT) -> network
    secrets and data bucket only with --delete-data

Data is kept unless --delete-data: the datastore bucket, a final backup of the Cloud SQL
instance (Metaflow's and Airflow's databases; Cloud SQL takes it as it deletes the
instance), and the two database password secrets a restore of that backup needs. The
instance's deletion protection is lifted only after the user confirmed. A namespace that
still holds the bundled Postgres volume of earlier versions' Airflow is not deleted.

The state bucket is never touched except to record what happened; the DB generation
counter moves on as soon as the instance is deleted, so the next infra.up uses a fresh name.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from metaflow_gcp.app import Stack, lock_stack, preflight
from metaflow_gcp.errors import (
    CommandError,
    InUse,
    MissingTool,
    NotAuthenticated,
    NotFound,
    StackError,
)
from metaflow_gcp.gcp import gke, iam, network, nodepools, sql, storage
from metaflow_gcp.gcp.operations import follow
from metaflow_gcp.graph import Outcome, Report, Step, StepRun, run_steps
from metaflow_gcp.kube import Helm, Kubectl
from metaflow_gcp.kube_names import AIRFLOW_NS, NAMESPACES, RELEASES
from metaflow_gcp.shell import INSTALL_HINTS
from metaflow_gcp.state import Doc, db_generation, now

# Earlier versions ran Airflow's database in the cluster (the chart's bundled Postgres).
LEGACY_AIRFLOW_PVC = "data-airflow-postgresql-0"
IN_USE_WAIT = 15 * 60.0  # peering and network deletes wait for the producers to let go
FINAL_BACKUP_DAYS = 30  # Cloud SQL's own default; restorable with `gcloud sql backups restore`


class Teardown:
    def __init__(self, stack: Stack, *, delete_data: bool) -> None:
        self.stack = stack
        self.delete_data = delete_data
        self.g = stack.gcloud
        self.n = stack.names
        self.deleted_instances = threading.Event()  # set by the sql step: move the counter on

    # -- what runs on the cluster ------------------------------------------------------------

    def _about_to(self, run: StepRun, what: str) -> None:
        """Every teardown change removes something, which never hides what depends on it:
        a preview goes on to look at the later steps (new=False)."""
        run.before_change(what, new=False)

    def releases(self, run: StepRun) -> Outcome:
        """Empty the cluster first: disks (PVCs) and load balancers outlive a deleted cluster.

        Helm uninstalls our releases, then deleting our namespaces takes every PVC and
        Service left in them. Without helm the namespaces alone do that; without kubectl
        the step fails, so nothing after it (the cluster above all) is deleted.
        """
        runner, dry = self.stack.runner, self.stack.dry_run
        cluster = None if dry else gke.describe(self.g, self.n)
        if not dry and not run.planning:  # the cluster step, next on this chain, starts here
            gke.prime_describe(self.g, self.n, cluster)
        if not dry and cluster is None:
            run.note("cluster already gone; nothing to uninstall")
            return Outcome.GONE
        if not dry and not runner.has("kubectl"):
            raise MissingTool(
                "kubectl",
                f"{INSTALL_HINTS['kubectl']}; it empties the cluster before it is deleted",
            )
        with_helm = dry or runner.has("helm")
        if not dry and not gke.context_is_current(self.n.kube_context, cluster, runner.env):
            # None here, or one of an earlier cluster of this name: it would reach nothing.
            self._about_to(run, f"fetch credentials for {self.n.cluster}, then empty it")
            gke.fetch_credentials(self.g, self.n)
        helm = Helm(self.stack.runner, self.n.kube_context)
        kubectl = Kubectl(self.stack.runner, self.n.kube_context)
        try:
            listed = helm.releases() if with_helm else []
            found = kubectl.read(
                "get", "namespaces", dry={"items": [{"metadata": {"name": n}} for n in NAMESPACES]}
            )
        except NotAuthenticated:
            raise  # e.g. no gke-gcloud-auth-plugin: fixable here, so stop before the cluster
        except CommandError as error:
            self.stack.console.print(
                f"[yellow]![/] the cluster did not answer ({error.one_line()}); going on. "
                "Disks of its volumes may outlive it: `gcloud compute disks list "
                f"--filter=name~^pvc- --project={self.n.project}` shows them"
            )
            return Outcome.SKIPPED
        installed = {(r.get("name"), r.get("namespace")) for r in listed}
        present = {str(i.get("metadata", {}).get("name")) for i in found.get("items") or []}
        ours = [r for r in RELEASES if r in installed or dry]
        namespaces = [ns for ns in NAMESPACES if ns in present]
        if AIRFLOW_NS in namespaces and not self.delete_data and not dry:
            self._refuse_legacy_airflow_history(kubectl)
        if not ours and not namespaces:
            return Outcome.GONE
        what = [f"uninstall {', '.join(r for r, _ in ours)}"] if ours else []
        if namespaces:
            what.append(f"delete namespaces {', '.join(namespaces)}")
        self._about_to(run, " and ".join(what))
        if not with_helm:
            run.note("helm not found: deleting the namespaces removes the releases' objects")
        for release, namespace in ours:
            run.note(f"uninstalling {release}")
            helm.run(
                "uninstall",
                release,
                f"--namespace={namespace}",
                "--wait",
                "--timeout=10m",
                timeout=900,
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

    def _refuse_legacy_airflow_history(self, kubectl: Kubectl) -> None:
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
            f"it with `kubectl --context={self.n.kube_context} patch pv "
            f"{volume or '<its volume>'} -p "
            """'{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}'` (its disk then outlives """
            "the cluster) and run teardown again, or pass --delete-data to delete it"
        )

    # -- the big two -------------------------------------------------------------------------

    def cluster(self, run: StepRun) -> Outcome:
        found = gke.describe(self.g, self.n)
        if not self._exists(found):
            self._forget_credentials()
            return Outcome.GONE
        self._about_to(run, f"delete GKE cluster {self.n.cluster}{nodepools.teardown_note(found)}")
        gke.delete_cluster(self.g, self.n, run, found or {})
        self._forget_credentials()
        return Outcome.DELETED

    def _forget_credentials(self) -> None:
        """gcloud leaves its kubeconfig entries behind after an --async delete: remove them,
        so nothing reaches a later cluster of the same name through the old endpoint."""
        runner, context = self.stack.runner, self.n.kube_context
        if not runner.dry_run and (
            not gke.has_context(context, runner.env) or not runner.has("kubectl")
        ):
            return
        for entry in ("context", "cluster", "user"):  # all three are named like the context
            runner.run(
                ["kubectl", "config", f"delete-{entry}", context], mutating=True, check=False
            )

    def sql_instances(self, run: StepRun) -> Outcome:
        dry = [{"name": self.n.sql_instance(self._generation())}]
        instances = sql.stack_instances(self.g, self.n, dry=dry)
        names = [str(i["name"]) for i in instances]
        if not names:
            return Outcome.GONE
        listed = ", ".join(names)
        self._about_to(
            run,
            f"delete Cloud SQL instance {listed} and its backups"
            if self.delete_data
            else f"delete Cloud SQL instance {listed}, keeping a final backup for "
            f"{FINAL_BACKUP_DAYS} days",
        )
        protected = {
            str(i["name"])
            for i in instances
            if self.g.dry_run or (i.get("settings") or {}).get("deletionProtectionEnabled")
        }
        for name in names:  # the user confirmed this teardown: protection may be lifted
            sql.delete_instance(
                self.g, run, name, protected=name in protected, flags=self._final_backup()
            )
        self.deleted_instances.set()  # even one found gone: its name stays reserved
        return Outcome.DELETED

    def _final_backup(self) -> list[str]:
        """The run history in the metadata DB is data too: without --delete-data it is kept."""
        if self.delete_data:
            return []
        return [
            "--enable-final-backup",
            f"--final-backup-retention-days={FINAL_BACKUP_DAYS}",
            f"--final-backup-description=metaflow-gcp teardown of stack {self.n.stack}",
        ]

    def db_generation(self, run: StepRun) -> Outcome:
        """Cloud SQL keeps a deleted name reserved: the next infra.up must use a new one.

        A step of its own, started the moment the instance is gone, so that this state
        write runs beside the network chain instead of in front of it."""
        if not self.deleted_instances.is_set():
            return Outcome.SKIPPED
        new = self.stack.state.bump_db_generation(self.stack.settings.db_generation_number)
        self.stack.console.print(
            f"  the next Cloud SQL instance will be {self.n.sql_instance(new)}"
        )
        return Outcome.UPDATED

    def _generation(self) -> int:
        doc = self.stack.state.last.data if self.stack.state.last else {}
        return db_generation(doc, self.stack.settings.db_generation_number)

    def _exists(self, found: object) -> bool:
        """In a dry run nothing is looked up, so everything is shown as if it existed."""
        return self.g.dry_run or found is not None

    # -- network -----------------------------------------------------------------------------

    def _delete_in_use(self, run: StepRun, what: str, call: Callable[[], object]) -> None:
        """Deletes that fail while a producer (SQL, GKE) still lets go are retried for a while."""

        def attempt() -> tuple[bool, str]:
            try:
                call()
            except NotFound:
                return True, "GONE"
            except InUse:  # a 400, or an operation that failed for it
                return False, "STILL IN USE"
            return True, "DELETED"

        follow(run, what, attempt, timeout=IN_USE_WAIT)

    def _must_look_first(self, run: StepRun) -> bool:
        """Only a preview needs to know what exists before it says what it would delete; a
        real teardown deletes straight away and takes 'not found' as already gone, which
        saves a describe on every link of the network chain."""
        return run.planning

    def peering(self, run: StepRun) -> Outcome:
        """Private services access, removed from the network's side of the peering (as the
        Cloud Console does). Service Networking's own delete is refused for days after a
        Cloud SQL instance is deleted, and the network goes next anyway: removing its side
        frees the range and the network at once."""
        if self._must_look_first(run) and not network.peerings(self.g, self.n):
            return Outcome.GONE
        self._about_to(run, f"delete private services access on {self.n.network}")
        run.note("removing the network's peering with Service Networking")
        try:
            self.g.mutate(
                "compute",
                "networks",
                "peerings",
                "delete",
                network.PEERING,
                f"--network={self.n.network}",
                "--quiet",
                fmt=None,
                timeout=900,
            )
        except NotFound:
            return Outcome.GONE
        return Outcome.DELETED

    def _simple(self, run: StepRun, kind: list[str], name: str, scope: list[str]) -> Outcome:
        if self._must_look_first(run) and not self._exists(
            self.g.describe(*kind, "describe", name, *scope)
        ):
            return Outcome.GONE
        self._about_to(run, f"delete {' '.join(kind[1:])} {name}")
        gone = False

        def delete() -> None:
            nonlocal gone
            try:
                self.g.mutate(*kind, "delete", name, *scope, "--quiet", fmt=None, timeout=900)
            except NotFound:
                gone = True

        self._delete_in_use(run, f"deleting {name}", delete)
        return Outcome.GONE if gone else Outcome.DELETED

    def psa_range(self, run: StepRun) -> Outcome:
        return self._simple(run, ["compute", "addresses"], self.n.psa_range, ["--global"])

    def subnet(self, run: StepRun) -> Outcome:
        return self._simple(
            run, ["compute", "networks", "subnets"], self.n.subnet, [f"--region={self.n.region}"]
        )

    def network(self, run: StepRun) -> Outcome:
        return self._simple(run, ["compute", "networks"], self.n.network, [])

    def router(self, run: StepRun) -> Outcome:
        """The Cloud Router; its Cloud NAT goes with it."""
        if self._must_look_first(run) and not self._exists(network.describe_router(self.g, self.n)):
            return Outcome.GONE
        self._about_to(run, f"delete Cloud Router {self.n.router} and its NAT {self.n.nat}")
        try:
            network.delete_router(self.g, self.n)
        except NotFound:
            return Outcome.GONE
        return Outcome.DELETED

    # -- identity, secret, data ----------------------------------------------------------------

    def _accounts(self) -> list[str]:
        """Ours, the legacy account of earlier versions included. Deleting an account also
        deletes its own policy, so the Workload Identity members go with it."""
        n = self.n
        return [n.services_sa, n.steps_sa, n.node_sa, n.legacy_workload_sa]

    def bindings(self, run: StepRun) -> Outcome:
        changed = iam.remove_project_members(self.g, self.n, self._accounts(), run)
        return Outcome.DELETED if changed else Outcome.GONE

    def accounts(self, run: StepRun) -> Outcome:
        return iam.delete_accounts(self.g, self._accounts(), run)

    def secrets(self, run: StepRun) -> Outcome:
        """Both database passwords: only with --delete-data (a restore needs them)."""
        names = [self.n.db_secret, self.n.airflow_db_secret]
        found = [
            name for name in names if self._exists(self.g.describe("secrets", "describe", name))
        ]
        if not found:
            return Outcome.GONE
        self._about_to(run, f"delete secrets {', '.join(found)}")
        for name in found:
            with contextlib.suppress(NotFound):
                self.g.mutate("secrets", "delete", name, "--quiet", fmt=None)
        return Outcome.DELETED

    def data_bucket(self, run: StepRun) -> Outcome:
        if not self._exists(storage.describe(self.g, self.n)):
            return Outcome.GONE
        url = f"gs://{self.n.data_bucket}"
        self._about_to(run, f"EMPTY AND DELETE {url} (--delete-data)")
        run.note(f"deleting every object in {url}")
        with contextlib.suppress(NotFound):  # NotFound: already empty
            self.g.mutate(
                "storage",
                "rm",
                "--recursive",
                "--all-versions",
                f"{url}/**",
                fmt=None,
                timeout=3600,
            )
        self.g.mutate("storage", "buckets", "delete", url, fmt=None)
        return Outcome.DELETED

    # -- the graph ------------------------------------------------------------------------------

    def steps(self) -> list[Step]:
        n = self.n
        steps = [
            Step("releases", "Helm releases", self.releases),
            Step("gke", f"GKE cluster {n.cluster}", self.cluster, ("releases",)),
            Step("sql", "Cloud SQL instances", self.sql_instances, ("releases",)),
            Step("generation", "DB generation counter", self.db_generation, ("sql",)),
            Step("peering", "private services access", self.peering, ("sql",)),
            Step("psa_range", f"range {n.psa_range}", self.psa_range, ("peering",)),
            Step("subnet", f"subnet {n.subnet}", self.subnet, ("gke",)),
            Step("router", f"Cloud Router {n.router}", self.router, ("gke",)),
            Step(
                "network",
                f"network {n.network}",
                self.network,
                ("subnet", "psa_range", "peering", "router"),
            ),
            Step("bindings", "IAM bindings", self.bindings, ("gke", "sql")),
            Step("accounts", "service accounts", self.accounts, ("bindings",)),
        ]
        if self.delete_data:
            steps.append(Step("secrets", "database password secrets", self.secrets, ("sql",)))
            steps.append(
                Step(
                    "bucket", f"bucket gs://{n.data_bucket}", self.data_bucket, ("releases", "gke")
                )
            )
        return steps


def run(stack: Stack, *, delete_data: bool = False, force_unlock: bool = False) -> Report:
    console = stack.console
    if not stack.dry_run and not stack.assume_yes and not stack.interactive():
        raise StackError(
            "teardown deletes resources and needs a confirmation. Fix: run it on a terminal "
            "(you will type the stack name), or pass --yes"
        )
    preflight(stack, "gcloud")
    work = Teardown(stack, delete_data=delete_data)
    if stack.interactive() and not stack.assume_yes and not stack.dry_run:
        preview = run_steps(
            work.steps(),
            console=console,
            title="What teardown would delete",
            plan=True,
            keep_going=True,
        )
        _print_preview(stack, preview, delete_data)
        if not any(s.outcome is Outcome.PLANNED for s in preview.states.values()):
            console.print("Nothing to delete.")
        from rich.prompt import Prompt

        typed = Prompt.ask(
            f"Type the stack name ([bold]{stack.names.stack}[/]) to delete it", console=console
        )
        if typed.strip() != stack.names.stack:
            raise StackError("nothing was deleted (the stack name did not match)")
    held = threading.Event()

    def take_lock() -> None:
        lock_stack(stack, "teardown", force=force_unlock)
        held.set()

    if stack.dry_run:
        console.print(
            f"[bold]Dry run[/]: the commands teardown would run for stack "
            f"'{stack.names.stack}' (nothing is called):"
        )
        take_lock()
    report: Report | None = None
    try:
        report = run_steps(
            work.steps(),
            console=console,
            title=f"teardown: {stack.names.stack}",
            gate=None if stack.dry_run else take_lock,
            dry_run=stack.dry_run,
        )
    finally:
        if held.is_set():
            _save(stack, report)
    report.raise_for_failure()
    if not stack.dry_run:
        _summary(stack, report, delete_data)
    return report


def _print_preview(stack: Stack, preview: Report, delete_data: bool) -> None:
    console = stack.console
    for state in preview.states.values():
        if state.outcome is Outcome.PLANNED:
            console.print(f"  [red]-[/] {state.note}")
    n = stack.names
    console.print(f"  [green]kept[/]: state bucket gs://{n.state_bucket}")
    if not delete_data:
        console.print(
            f"  [green]kept[/]: datastore gs://{n.data_bucket}; a final backup of the Cloud SQL "
            f"instance (Metaflow's and Airflow's databases) for {FINAL_BACKUP_DAYS} days; the "
            f"secrets {n.db_secret} and {n.airflow_db_secret} a restore needs "
            "(--delete-data deletes all of these)"
        )


def _save(stack: Stack, report: Report | None) -> None:
    def record(doc: Doc) -> None:
        if report is not None and report.ok:
            doc["infra"] = None  # nothing of it is left: the next infra.up starts cold
        else:
            doc["infra"] = {**(doc.get("infra") or {}), "converged": None}
        doc["services"] = None
        doc["teardown"] = {
            "at": now(),
            "ok": bool(report and report.ok),
            "steps": {
                k: (v.value if v else None)
                for k, v in (report.outcomes() if report else {}).items()
            },
        }
        if doc.get("lock") and doc["lock"].get("id") == stack.state.lock_id:
            doc["lock"] = None

    stack.state.update(record)


def _summary(stack: Stack, report: Report, delete_data: bool) -> None:
    console = stack.console
    deleted = [s.step.title for s in report.states.values() if s.outcome is Outcome.DELETED]
    console.print(
        f"[green]✔[/] teardown finished in {report.duration:.0f}s"
        + (f": deleted {', '.join(deleted)}." if deleted else "; nothing was left.")
    )
    console.print(f"  kept: state gs://{stack.names.state_bucket}/{stack.names.state_object}")
    if not delete_data:
        console.print(
            f"  kept: your data in gs://{stack.names.data_bucket} "
            "(`inv teardown --delete-data` removes it)"
        )
        if report.outcomes().get("sql") is Outcome.DELETED:
            console.print(
                f"  kept: a final backup of the metadata database for {FINAL_BACKUP_DAYS} days "
                f"(`gcloud sql backups list --instance=- --project={stack.names.project}`)"
            )
        console.print(
            f"  kept: the secrets {stack.names.db_secret} and {stack.names.airflow_db_secret} "
            "(the passwords inside that backup)"
        )
