"""`inv services.up`: Metaflow's services, Argo and (optionally) Airflow on the stack's cluster.

The graph (a step starts once what it needs is done; independent releases install at
the same time, and one failed release does not stop the others):

    Workload Identity (services, steps) ---------------------------------+
    namespaces metaflow, metaflow-services (Pod Security labels) -------+-> release metaflow
    namespace metaflow-services -> Secret metaflow-services/metaflow-db -+
    release metaflow -> old Secret metaflow/metaflow-db and KSA metaflow/metaflow removed
    every release -> the legacy workload account retired (its bindings, then the account)
    namespaces argo, metaflow -> release argo-workflows  (writes a Role into metaflow)
    release argo-events + namespace metaflow -> release metaflow-argo-events (needs the CRDs)
    Airflow's password (Secret Manager) + database -> user airflow ----------+
    namespace airflow -> Secret airflow-webserver-secret, airflow-db-connection -+-> release airflow
    Workload Identity (airflow) -> release metaflow-airflow (DB proxy, KSAs) --+
    release jobset -> release metaflow-jobset (its NetworkPolicy)
    switched off: uninstall metaflow-argo-events -> argo-events; argo-workflows; airflow
                  -> metaflow-airflow -> drop Airflow's Workload Identity; metaflow-jobset, jobset

Airflow's database is a second database on the stack's Cloud SQL instance (airflow_db.py),
reached through the Cloud SQL Auth Proxy of charts/metaflow-airflow. Airflow's step pods run
as the stack's steps account (Google access, no Kubernetes permissions), not as the
scheduler's account, which holds the chart's pod-launcher Role (pods/exec included).

Re-runs do not churn: a release that is deployed with the same chart version and the
same values is left alone, and the DB Secret is only rewritten when Secret Manager has
a newer version. Every command goes through the one Runner, so --dry-run prints them all.
"""

from __future__ import annotations

import secrets as random_source
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaflow_gcp import airflow_db, cluster_objects, kube_names, nextsteps, releases
from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.errors import NotFound, StackError
from metaflow_gcp.gcp import iam, secrets
from metaflow_gcp.graph import GraphRun, Outcome, Report, Status, Step, StepRun, run_steps
from metaflow_gcp.kube import Helm, Kubectl
from metaflow_gcp.kube_names import JOBSET_NS, Accounts
from metaflow_gcp.lifecycle import TaskRun
from metaflow_gcp.releases import Release, chart_checksum, load_versions, releases_for, repo_root
from metaflow_gcp.state import Doc, db_generation, now

# Namespaces and names the charts and values files rely on (charts/README.md).
METAFLOW_NS = kube_names.METAFLOW_NS
SERVICES_NS = kube_names.SERVICES_NS
ARGO_NS = kube_names.ARGO_NS
ARGO_EVENTS_NS = kube_names.ARGO_EVENTS_NS
AIRFLOW_NS = kube_names.AIRFLOW_NS
# Names of Secrets and of their keys (S105: names, not secrets).
DB_SECRET = "metaflow-db"  # noqa: S105 - charts/metaflow database.passwordSecret
DB_SECRET_KEY = "password"  # noqa: S105
AIRFLOW_SECRET = "airflow-webserver-secret"  # noqa: S105 - values/airflow.yaml
AIRFLOW_SECRET_KEY = "webserver-secret-key"  # noqa: S105
# Airflow (data.metadataSecretName) reads its database URL from this Secret.
AIRFLOW_DB_SECRET = airflow_db.CONNECTION_SECRET

ARGO_RELEASES = kube_names.ARGO_RELEASES
AIRFLOW_RELEASES = kube_names.AIRFLOW_RELEASES
JOBSET_RELEASES = kube_names.JOBSET_RELEASES
EVENT_BUS_STATEFULSET = cluster_objects.EVENT_BUS_STATEFULSET


@dataclass(frozen=True)
class Installed:
    """A release found by `helm list` that the settings switch off."""

    name: str
    namespace: str
    status: str


# ---------------------------------------------------------------------------------------
# One run


@dataclass
class ServicesRun:
    """What the steps of one run share: the clients, the state document, chart digests."""

    stack: Stack
    helm: Helm
    kubectl: Kubectl
    root: Path
    doc: Doc = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    generation: int = 0  # of the SQL instance, from the state file
    airflow_database: airflow_db.AirflowDatabase | None = None
    airflow_legacy_claim: bool = False  # found the bundled Postgres' volume claim

    # -- Workload Identity --------------------------------------------------------------

    @property
    def accounts(self) -> Accounts:
        return Accounts.of(self.stack.names)

    def wanted_ksas(self) -> dict[str, list[tuple[str, str]]]:
        """Google account -> the (namespace, KSA) pairs that act as it.

        The services' KSA acts as the services' account (Cloud SQL, datastore read), the
        steps' KSA as the steps' account (datastore read/write, the stack's user secrets).
        """
        n, a = self.stack.names, self.accounts
        wanted = {
            n.services_sa: [(SERVICES_NS, a.services)],
            n.steps_sa: [(METAFLOW_NS, a.steps)],
        }
        return wanted  # Airflow's accounts: airflow_identities

    def ensure_workload_identity(self, run: StepRun) -> Outcome:
        """Both Google accounts, each bound to its own KSAs only."""
        outcomes = [
            iam.ensure_workload_identity(self.stack.gcloud, self.stack.names, gsa, ksas, run)
            for gsa, ksas in self.wanted_ksas().items()
        ]
        return _combined(outcomes)

    def retire_legacy_account(self, run: StepRun) -> Outcome:
        """Earlier versions' single workload account: gone once nothing runs as it."""
        return iam.retire_legacy_account(self.stack.gcloud, self.stack.names, run)

    # -- Airflow ---------------------------------------------------------------------------

    def airflow_identities(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(Google account, its KSAs in the airflow namespace): the DB proxy acts as the
        services account (Cloud SQL), Airflow's step pods as the steps account."""
        n, accounts = self.stack.names, Accounts.of(self.stack.names)
        return [
            (n.services_sa, [(AIRFLOW_NS, accounts.airflow_db)]),
            (n.steps_sa, [(AIRFLOW_NS, accounts.steps)]),
        ]

    def ensure_airflow_identities(self, run: StepRun) -> Outcome:
        g, n = self.stack.gcloud, self.stack.names
        outcomes = [
            iam.ensure_workload_identity(g, n, gsa, ksas, run)
            for gsa, ksas in self.airflow_identities()
        ]
        return _combined(outcomes)

    def prune_workload_identity(self, run: StepRun) -> Outcome:
        """Airflow is off: its proxy and step pods no longer act as the stack's accounts."""
        g, n = self.stack.gcloud, self.stack.names
        outcomes = [
            iam.prune_workload_identity(g, n, gsa, ksas, run)
            for gsa, ksas in self.airflow_identities()
        ]
        return Outcome.DELETED if Outcome.DELETED in outcomes else Outcome.KEPT

    def airflow_database_of_run(self) -> airflow_db.AirflowDatabase:
        if self.airflow_database is None:
            n = self.stack.names
            self.airflow_database = airflow_db.AirflowDatabase(
                self.stack.gcloud, n, n.sql_instance(self.generation)
            )
        return self.airflow_database

    def airflow_connection_current(self) -> bool:
        """The connection Secret names the current password version and this instance."""
        db = self.airflow_database_of_run()
        version = airflow_db.secret_version(self.stack.gcloud, self.stack.names)
        if not version:
            return False
        made_from = cluster_objects.secret_annotation(
            self.kubectl, AIRFLOW_NS, AIRFLOW_DB_SECRET, airflow_db.VERSION_ANNOTATION
        )
        made_for = cluster_objects.secret_annotation(
            self.kubectl, AIRFLOW_NS, AIRFLOW_DB_SECRET, airflow_db.INSTANCE_ANNOTATION
        )
        return made_from == version and made_for == db.instance

    def ensure_airflow_user(self, run: StepRun) -> Outcome:
        """Database user airflow with the password of Secret Manager (Cloud SQL takes one
        operation per instance at a time, so this runs after the database step)."""
        db = self.airflow_database_of_run()
        return db.ensure_user(run, password_known_set=self.airflow_connection_current())

    def ensure_airflow_connection(self, run: StepRun) -> Outcome:
        """Secret airflow-db-connection: the URL with the password, built in memory and
        handed to kubectl on stdin; rewritten only when the password or instance changed."""
        db = self.airflow_database_of_run()
        if self.airflow_connection_current():
            return Outcome.KEPT
        exists = cluster_objects.secret_exists(self.kubectl, AIRFLOW_NS, AIRFLOW_DB_SECRET)
        run.before_change(f"{'update' if exists else 'create'} Secret {AIRFLOW_DB_SECRET}")
        password = db.password()
        version = airflow_db.secret_version(self.stack.gcloud, self.stack.names)
        annotations = {airflow_db.INSTANCE_ANNOTATION: db.instance}
        if version:
            annotations[airflow_db.VERSION_ANNOTATION] = version
        self.kubectl.apply_stdin(
            cluster_objects.secret_manifest(
                AIRFLOW_DB_SECRET,
                AIRFLOW_NS,
                {airflow_db.CONNECTION_KEY: airflow_db.connection_url(self.stack.names, password)},
                annotations=annotations,
            ),
            namespace=AIRFLOW_NS,
        )
        return Outcome.UPDATED if exists else Outcome.CREATED

    def find_airflow_legacy_claim(self, run: StepRun) -> Outcome:
        """The bundled Postgres' volume claim of earlier versions: kept, never deleted."""
        found = self.kubectl.get(
            "persistentvolumeclaim", airflow_db.LEGACY_CLAIM, namespace=AIRFLOW_NS
        )
        self.airflow_legacy_claim = found is not None
        if found is not None:
            run.note(f"kept {airflow_db.LEGACY_CLAIM}: its history was not moved (see below)")
        return Outcome.KEPT

    # -- namespaces and Secrets ----------------------------------------------------------

    def ensure_namespace(self, name: str, run: StepRun) -> Outcome:
        return cluster_objects.ensure_namespace(self.kubectl, name, run)

    def secret_manager_version(self) -> str:
        """The full name of the password's latest version ('' if it has none yet)."""
        n = self.stack.names
        try:
            found = self.stack.gcloud.read(
                "secrets", "versions", "describe", "latest", f"--secret={n.db_secret}", dry={}
            )
        except NotFound:
            return ""
        return str((found or {}).get("name") or "")

    def ensure_db_secret(self, run: StepRun) -> Outcome:
        """Copy the DB password from Secret Manager into Secret metaflow-services/metaflow-db,
        via stdin only. Only the services' namespace holds it: no user step can mount it."""
        n, g = self.stack.names, self.stack.gcloud
        version = self.secret_manager_version()
        have = cluster_objects.secret_annotation(
            self.kubectl, SERVICES_NS, DB_SECRET, cluster_objects.VERSION_ANNOTATION
        )
        if version and have == version:
            return Outcome.KEPT
        try:
            password = secrets.read_password(g, n)
        except NotFound:
            raise StackError(
                f"Secret Manager has no secret {n.db_secret} in {n.project}. Fix: run "
                "`inv infra.up` first (it creates the database password)"
            ) from None
        if not password and not g.dry_run:
            raise StackError(f"the secret {n.db_secret} is empty. Fix: run `inv infra.up`")
        if not version and not g.dry_run:
            version = self.secret_manager_version()  # read_password may have added the first
        run.before_change(f"{'update' if have is not None else 'create'} Secret {DB_SECRET}")
        self.kubectl.apply_stdin(
            cluster_objects.secret_manifest(
                DB_SECRET,
                SERVICES_NS,
                {DB_SECRET_KEY: password},
                annotations={cluster_objects.VERSION_ANNOTATION: version} if version else {},
            ),
            namespace=SERVICES_NS,
        )
        return Outcome.UPDATED if have is not None else Outcome.CREATED

    def remove_legacy_objects(self, run: StepRun) -> Outcome:
        return cluster_objects.remove_legacy_objects(self.kubectl, DB_SECRET, run)

    def ensure_airflow_secrets(self, run: StepRun) -> Outcome:
        """The webserver session key, made once and never replaced (logins survive upgrades)."""
        made = cluster_objects.create_secret_once(
            self.kubectl,
            AIRFLOW_NS,
            AIRFLOW_SECRET,
            lambda: _webserver_key(self.stack.runner.add_secret),
            run,
        )
        return Outcome.CREATED if made else Outcome.KEPT

    # -- Helm releases -------------------------------------------------------------------

    def recorded_checksum(self, name: str) -> str | None:
        services = self.doc.get("services")
        charts = services.get("charts") if isinstance(services, dict) else None
        value = charts.get(name) if isinstance(charts, dict) else None
        return str(value) if value else None

    def ensure_release(self, release: Release, run: StepRun) -> Outcome:
        unchanged = self.recorded_checksum(release.name) == self.checksums.get(release.name)
        return releases.ensure(self.helm, release, run, files_unchanged=unchanged)

    def uninstall(self, installed: Installed, run: StepRun) -> Outcome:
        return releases.uninstall(self.helm, installed.name, installed.namespace, run)

    # -- Argo Events ---------------------------------------------------------------------

    def ensure_event_bus_on_disks(self, run: StepRun) -> Outcome:
        return cluster_objects.ensure_event_bus_on_disks(self.kubectl, run)


def _combined(outcomes: list[Outcome]) -> Outcome:
    """One outcome for a step that did several things: the strongest change wins."""
    for outcome in (Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED):
        if outcome in outcomes:
            return outcome
    return Outcome.KEPT


def _webserver_key(register: Callable[[str], None]) -> dict[str, str]:
    key = random_source.token_hex(32)
    register(key)
    return {AIRFLOW_SECRET_KEY: key}


# ---------------------------------------------------------------------------------------
# The graph


def build_steps(
    stack: Stack, run: ServicesRun, releases: dict[str, Release], removals: list[Installed]
) -> list[Step]:
    """The steps, listed in the order a dry run prints them (each after what it needs)."""
    s = stack.settings
    wanted = run.wanted_ksas()
    ksas = ", ".join(f"{ns}/{ksa}" for pairs in wanted.values() for ns, ksa in pairs)

    def release_step(name: str, needs: tuple[str, ...]) -> Step:
        release = releases[name]
        return Step(
            f"release:{name}",
            f"{release.title} {release.version}",
            lambda r: run.ensure_release(release, r),
            needs,
        )

    def namespace_step(name: str) -> Step:
        return namespace_step_of(run, name)

    steps = [
        Step("wi", f"Workload Identity ({ksas})", run.ensure_workload_identity),
        namespace_step(METAFLOW_NS),
        namespace_step(SERVICES_NS),
        Step(
            "secret:db",
            f"Secret {SERVICES_NS}/{DB_SECRET}",
            run.ensure_db_secret,
            (f"ns:{SERVICES_NS}",),
        ),
        release_step("metaflow", ("wi", f"ns:{METAFLOW_NS}", "secret:db")),
        Step(
            "legacy:objects",
            f"old Secret {cluster_objects.LEGACY_DB_SECRET_NS}/{DB_SECRET} and ServiceAccount "
            f"{METAFLOW_NS}/{cluster_objects.LEGACY_KSA} (earlier versions)",
            run.remove_legacy_objects,
            ("release:metaflow",),
        ),
    ]
    if s.deploy_argo:
        steps += [
            namespace_step(ARGO_NS),
            namespace_step(ARGO_EVENTS_NS),
            # Its workflow Role and RoleBinding go into the metaflow namespace.
            release_step("argo-workflows", (f"ns:{ARGO_NS}", f"ns:{METAFLOW_NS}")),
            release_step("argo-events", (f"ns:{ARGO_EVENTS_NS}",)),
            # EventBus, EventSource and friends are Argo Events CRDs, in the metaflow namespace.
            release_step("metaflow-argo-events", ("release:argo-events", f"ns:{METAFLOW_NS}")),
            # After the EventBus asks for disks: an older bus's StatefulSet cannot get them.
            Step(
                "eventbus:disks",
                f"EventBus {kube_names.EVENT_BUS} on persistent disks",
                run.ensure_event_bus_on_disks,
                ("release:metaflow-argo-events",),
            ),
        ]
    if s.deploy_airflow:
        steps += airflow_steps(stack, run, release_step)
    if s.deploy_jobset:
        steps += [
            namespace_step(JOBSET_NS),
            release_step("jobset", (f"ns:{JOBSET_NS}",)),
            # Its NetworkPolicy selects the controller's pods; the namespace comes with jobset.
            release_step("metaflow-jobset", ("release:jobset",)),
        ]
    removed: set[str] = set()
    for installed in removals:
        needs: tuple[str, ...] = ()
        if installed.name == "argo-events" and "metaflow-argo-events" in removed:
            needs = ("remove:metaflow-argo-events",)  # its objects first, while the controller runs
        if installed.name == "metaflow-airflow" and "airflow" in removed:
            needs = ("remove:airflow",)  # Airflow's pods use the proxy until they are gone
        steps.append(
            Step(
                f"remove:{installed.name}",
                f"remove release {installed.name} ({installed.namespace})",
                _uninstall_action(run, installed),
                needs,
            )
        )
        removed.add(installed.name)
    if not s.deploy_airflow:
        # After the uninstall, so Airflow's pods keep their identity until they are gone.
        needs = tuple(f"remove:{name}" for name, _ in AIRFLOW_RELEASES if name in removed)
        steps.append(
            Step(
                "wi:prune",
                f"Workload Identity ({AIRFLOW_NS} accounts not needed)",
                run.prune_workload_identity,
                needs,
            )
        )
    # Last: every release has moved its pods to the new accounts, so nothing acts as the
    # legacy account any more (after a failed step it waits for the next run).
    moved = tuple(
        step.name for step in steps if step.name.startswith(("release:", "ksa:", "remove:", "wi"))
    )
    steps.append(
        Step(
            "wi:retire",
            f"legacy Google account {stack.names.legacy_workload_sa_id} (earlier versions)",
            run.retire_legacy_account,
            moved,
        )
    )
    return steps


def namespace_step_of(run: ServicesRun, name: str) -> Step:
    """Step `ns:<name>`: one of kube_names.NAMESPACES, with its Pod Security labels."""
    enforce = kube_names.POD_SECURITY[name]
    return Step(
        f"ns:{name}",
        f"namespace {name} (Pod Security: enforce {enforce})",
        lambda r: run.ensure_namespace(name, r),
    )


def airflow_steps(
    stack: Stack, run: ServicesRun, release_step: Callable[[str, tuple[str, ...]], Step]
) -> list[Step]:
    """Airflow's database on Cloud SQL, its Secrets, identities, proxy, then Airflow itself."""
    n = stack.names
    ksas = ", ".join(ksa for _, pairs in run.airflow_identities() for _, ksa in pairs)
    db = run.airflow_database_of_run

    return [
        namespace_step_of(run, AIRFLOW_NS),
        Step("airflow:password", f"secret {n.airflow_db_secret}", lambda r: db().ensure_secret(r)),
        Step(
            "airflow:database",
            f"database {n.airflow_database} on {n.sql_instance(run.generation)}",
            lambda r: db().ensure_database(r),
        ),
        Step(
            "airflow:user",
            f"database user {n.airflow_db_user}",
            run.ensure_airflow_user,
            ("airflow:database", "airflow:password"),
        ),
        Step(
            "secret:airflow",
            f"Secret {AIRFLOW_NS}/{AIRFLOW_SECRET}",
            run.ensure_airflow_secrets,
            ("ns:airflow",),
        ),
        Step(
            "secret:airflow-db",
            f"Secret {AIRFLOW_NS}/{AIRFLOW_DB_SECRET}",
            run.ensure_airflow_connection,
            ("ns:airflow", "airflow:user"),
        ),
        Step("wi:airflow", f"Workload Identity ({ksas})", run.ensure_airflow_identities),
        release_step("metaflow-airflow", ("ns:airflow", "wi:airflow")),
        release_step(
            "airflow", ("secret:airflow", "secret:airflow-db", "release:metaflow-airflow")
        ),
        Step(
            "airflow:legacy",
            f"volume claim {AIRFLOW_NS}/{airflow_db.LEGACY_CLAIM} (kept)",
            run.find_airflow_legacy_claim,
            ("ns:airflow",),
        ),
    ]


def _uninstall_action(run: ServicesRun, installed: Installed) -> Callable[[StepRun], Outcome]:
    return lambda r: run.uninstall(installed, r)


def _run_graph(stack: Stack, steps: list[Step]) -> Report:
    if stack.dry_run:
        # One step at a time in the listed order (GraphRun still honours needs), so the
        # printed commands read like the story: identity, secret, Metaflow, Argo, events.
        return GraphRun(steps, sequential=True).run()
    return run_steps(
        steps,
        console=stack.console,
        title=f"services.up: stack '{stack.names.stack}'",
        keep_going=True,
    )


# ---------------------------------------------------------------------------------------
# The task


def up(stack: Stack, *, force_unlock: bool = False) -> Report:
    """Install what the settings ask for, remove what they switch off, print the next steps."""
    console = stack.console
    task = TaskRun(stack, "services.up", force_unlock=force_unlock)
    preflight(stack, "gcloud", "kubectl", "helm")
    if not stack.dry_run:
        _check_context(stack)
    root = repo_root()
    pins = load_versions(root)
    context = stack.names.kube_context
    run = ServicesRun(stack, Helm(stack.runner, context), Kubectl(stack.runner, context), root)
    task.announce_dry_run()
    removals = switched_off(stack, run.helm)
    if removals:
        confirm_removal(task, removals)

    with task.recording(lambda doc, report: _record(stack, run, doc, report)):
        task.lock()  # before the graph: what to install depends on the recorded state
        run.doc = dict(stack.state.last.data) if stack.state.last else {}
        if not stack.dry_run:
            _check_infra(stack, run.doc)
        generation = run.generation = db_generation(run.doc, stack.settings.db_generation_number)
        releases = releases_for(stack, root, pins, generation)
        run.checksums = {
            r.name: chart_checksum(Path(r.chart)) for r in releases.values() if r.local
        }
        task.report = _run_graph(stack, build_steps(stack, run, releases, removals))
    report = task.report

    profiles = nextsteps.metaflow_profiles(
        stack.names,
        argo=stack.settings.deploy_argo,
        airflow=stack.settings.deploy_airflow,
        project_number=_project_number(run.doc),
    )
    if stack.dry_run:
        report.raise_for_failure()
        task.print_dry_run_counts()
        written = nextsteps.write_profiles(profiles, stack=stack.names.stack, dry_run=True)
        nextsteps.print_next_steps(stack, written)
        return report
    _summarise(stack, report)
    if run.airflow_legacy_claim:
        for line in airflow_db.legacy_notice(stack.names):
            console.print(
                f"[yellow]![/] {line}" if not line.startswith(" ") else line, soft_wrap=True
            )
    written = nextsteps.write_profiles(profiles, stack=stack.names.stack)
    nextsteps.print_next_steps(stack, written)
    return report


def switched_off(stack: Stack, helm: Helm) -> list[Installed]:
    """Releases of a switched-off component that are still installed (one `helm list -A`)."""
    off: list[tuple[str, str]] = []
    if not stack.settings.deploy_argo:
        off += ARGO_RELEASES
    if not stack.settings.deploy_airflow:
        off += AIRFLOW_RELEASES
    if not stack.settings.deploy_jobset:
        off += JOBSET_RELEASES
    if not off:
        return []
    listed = {(r.get("name"), r.get("namespace")): r for r in helm.releases(every_state=True)}
    return [
        Installed(name, ns, str(listed[(name, ns)].get("status") or "?"))
        for name, ns in off
        if (name, ns) in listed and listed[(name, ns)].get("status") != "uninstalled"
    ]


def confirm_removal(task: TaskRun, removals: list[Installed]) -> None:
    """Show what goes away and ask; --yes skips the question, no terminal refuses."""
    stack, console = task.stack, task.stack.console
    console.print(
        "[yellow]![/] Switched off in the settings but installed; services.up uninstalls:"
    )
    for item in removals:
        console.print(f"    - {item.name} (namespace {item.namespace}, {item.status})")
    console.print(
        "    Kept: the namespaces, the Argo CRDs (with the workflows and events stored in "
        "them) and volumes the releases do not own."
    )
    if stack.assume_yes or stack.dry_run:
        return
    keep = " or ".join(
        flag
        for flag, names in (
            ("--argo", ARGO_RELEASES),
            ("--airflow", AIRFLOW_RELEASES),
            ("--jobset", JOBSET_RELEASES),
        )
        if any(item.name == name for item in removals for name, _ in names)
    )
    task.require_consent(
        f"would uninstall {', '.join(i.name for i in removals)}; nothing was changed",
        fix=f"pass --yes to confirm, or {keep} to keep them",
    )
    if not task.confirm("Uninstall them?"):
        raise StackError("nothing was changed (not confirmed)")


def _check_context(stack: Stack) -> None:
    """kubectl and helm name the context explicitly; it has to be in the kubeconfig."""
    from metaflow_gcp.gcp.gke import has_context

    n = stack.names
    if not has_context(n.kube_context, stack.runner.env):
        raise StackError(
            f"kubectl has no context '{n.kube_context}'. Fix: run `inv infra.up` (it fetches "
            f"the credentials) or `gcloud container clusters get-credentials {n.cluster} "
            f"--location={n.zone} --project={n.project}`"
        )


def _project_number(doc: Doc) -> str:
    """What infra.up recorded (the @secrets prefix names the project by number)."""
    infra = doc.get("infra")
    return str(infra.get("project_number") or "") if isinstance(infra, dict) else ""


def _check_infra(stack: Stack, doc: Doc) -> None:
    infra = doc.get("infra")
    if not isinstance(infra, dict):
        raise StackError(
            f"stack '{stack.names.stack}' has no Google Cloud side yet (its state file has no "
            "infra record). Fix: run `inv infra.up` first"
        )
    if not infra.get("converged"):
        stack.console.print(
            "[yellow]![/] the last `inv infra.up` did not finish; if a step below fails, "
            "run it again first"
        )


def _record(stack: Stack, run: ServicesRun, doc: Doc, report: Report | None) -> None:
    """What is installed, so the next run compares charts afresh only where it must."""
    if report is not None:
        previous = doc.get("services")
        previous = previous if isinstance(previous, dict) else {}
        charts = dict(previous.get("charts") or {})
        for name, state in _release_states(report):
            if name not in run.checksums:
                continue
            if state.status is Status.DONE and state.outcome is not Outcome.DELETED:
                charts[name] = run.checksums[name]
            elif state.status is Status.FAILED or state.outcome in (
                Outcome.DELETED,
                Outcome.GONE,
            ):
                charts.pop(name, None)  # half-upgraded or gone: compare afresh next time
        doc["services"] = {
            "argo": stack.settings.deploy_argo,
            "airflow": stack.settings.deploy_airflow,
            "jobset": stack.settings.deploy_jobset,
            "ok": report.ok,
            "at": now(),
            "steps": {
                name: (state.outcome.value if state.outcome else state.status.value)
                for name, state in report.states.items()
            },
            "charts": charts,
        }


def _release_states(report: Report) -> Iterator[tuple[str, Any]]:
    for step_name, state in report.states.items():
        kind, _, name = step_name.partition(":")
        if kind in ("release", "remove"):
            yield name, state


def _summarise(stack: Stack, report: Report) -> None:
    console = stack.console
    if report.failed:
        for state in report.failed:
            error = state.error
            reason = error.one_line() if isinstance(error, StackError) else repr(error)
            console.print(f"[red]✘[/] {state.step.title} failed: {reason}", soft_wrap=True)
        waiting = [s.step.title for s in report.states.values() if s.status is Status.NOT_STARTED]
        if waiting:
            console.print(f"  not started (they need what failed): {', '.join(waiting)}")
        names = ", ".join(s.step.title for s in report.failed)
        raise StackError(
            f"services.up: {names} failed; everything independent of it finished. Fix the "
            "cause above, then run `inv services.up` again (it keeps what is installed)"
        ) from report.failed[0].error
    changed = _by_outcome(report, Outcome.CREATED, Outcome.UPDATED)
    removed = _by_outcome(report, Outcome.DELETED)
    parts = []
    if changed:
        parts.append(f"installed or updated {', '.join(changed)}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    console.print(
        f"[green]✔[/] services.up finished in {report.duration:.0f}s"
        + (f": {'; '.join(parts)}." if parts else "; everything was already in place.")
    )


def _by_outcome(report: Report, *outcomes: Outcome) -> list[str]:
    return [s.step.title for s in report.states.values() if s.outcome in outcomes]
