"""`inv infra.up` and `inv infra.plan`: the Google Cloud side as a graph of steps.

Chains (the run lasts as long as the longest):
    apis -> network -> psa range -> peering -> SQL instance -> database -> user -> SQL hardening
    apis -> network -> subnet -> GKE cluster -> credentials
    apis -> network -> router -> NAT -> GKE hardening (after the cluster)
    apis -> service accounts -> project IAM (+ project number) -> GKE cluster
    apis -> bucket;  apis -> secret -> user

A resource this tool created that never became usable (GKE in ERROR, Cloud SQL FAILED) is
"tainted": the plan says so, and the run deletes and creates it again. The state file
records, per resource, what was created and whether it ever became healthy; one that was
healthy once is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.config import Settings
from metaflow_gcp.errors import MissingTool, NotAuthenticated, StackError
from metaflow_gcp.gcp import apis, gke, iam, network, nodepools, secrets, sql, storage
from metaflow_gcp.graph import Outcome, Report, Step, StepRun, run_steps
from metaflow_gcp.lifecycle import TaskRun
from metaflow_gcp.state import Doc, db_generation, now

# Settings that do not shape the Google Cloud side. Every other setting is in the
# fingerprint, so a new one cannot be forgotten (tests/unit/test_infra_fingerprint.py).
NOT_GOOGLE_SIDE: dict[str, str] = {
    "state_bucket": "where the state file lives, not part of the stack",
    "db_generation_number": "a floor for the counter; the generation itself is in",
    "deploy_argo": "services.up only",
    "deploy_airflow": "services.up only",
}
KINDS = ("gke", "sql")  # the resources a tainted replace applies to


class InfraRun:
    """The shared, thread-safe bits the steps of one run need: the generation and state."""

    def __init__(self, stack: Stack, doc: Doc, *, describe_first: bool = False) -> None:
        self.stack = stack
        self.doc = doc
        # Never built, or torn down: create first and let "already exists" mean "look".
        # A plan, --refresh, or a stack with history describes every resource first.
        self.cold = not describe_first and not doc.get("infra")
        self._password: str | None = None
        self._lock = threading.Lock()
        infra = doc.get("infra") or {}
        self.project_number: str | None = infra.get("project_number")
        # kind -> {"name", "created" (by this tool), "healthy" (ever)}; see track().
        self.resources: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (infra.get("resources") or {}).items()
        }
        self.created_now: set[str] = set()  # kinds this run created (hardened from birth)

    def adopt(self, doc: Doc) -> None:
        """Continue from the document as read under the lock (it may be newer than the peek)."""
        with self._lock:
            self.doc = dict(doc)
            infra = doc.get("infra") or {}
            self.project_number = self.project_number or infra.get("project_number")
            for kind, record in (infra.get("resources") or {}).items():
                self.resources.setdefault(kind, dict(record))

    def tainted(self, kind: str) -> Callable[[str], bool]:
        """Whether the state shows we created `name` and it never became usable."""

        def check(name: str) -> bool:
            with self._lock:
                record = self.resources.get(kind) or {}
            return bool(
                record.get("name") == name and record.get("created") and not record.get("healthy")
            )

        return check

    def track(self, kind: str) -> Callable[[str, bool], None]:
        """Record a create (healthy=False) and its coming up (healthy=True); healthy sticks."""

        def record(name: str, healthy: bool) -> None:
            with self._lock:
                old = self.resources.get(kind) or {}
                same = old.get("name") == name
                if not healthy:
                    self.created_now.add(kind)
                self.resources[kind] = {
                    "name": name,
                    "created": (not healthy) or (same and bool(old.get("created"))),
                    "healthy": healthy or (same and bool(old.get("healthy"))),
                    "at": old.get("at") if same and old.get("at") else now(),
                }

        return record

    def number(self, r: StepRun) -> Outcome:
        """The project number (Secret Manager names secrets by it), read once, then kept."""
        if self.project_number and not self.stack.dry_run:
            return Outcome.KEPT
        number = iam.project_number(self.stack.gcloud, self.stack.names)
        with self._lock:
            self.project_number = number
        return Outcome.KEPT  # a read: nothing in the project changes

    def known_number(self) -> str:
        return self.project_number or iam.UNKNOWN_PROJECT_NUMBER

    def remember_password(self, password: str) -> None:
        with self._lock:
            self._password = password

    def password(self) -> str:
        """The DB password: kept from the secret step of this run, else read from the secret."""
        with self._lock:
            known = self._password
        return (
            known
            if known is not None
            else secrets.read_password(self.stack.gcloud, self.stack.names)
        )

    def generation(self) -> int:
        with self._lock:
            return db_generation(self.doc, self.stack.settings.db_generation_number)

    def instance(self) -> str:
        return self.stack.names.sql_instance(self.generation())

    def bump(self) -> int:
        """Advance the counter in the state file right away: the next run must not reuse it."""
        new = self.stack.state.bump_db_generation(self.stack.settings.db_generation_number)
        with self._lock:
            self.doc["db_generation"] = new
        self.stack.console.print(
            f"[yellow]![/] Cloud SQL refused the name {self.stack.names.sql_instance(new - 1)} "
            f"(a deleted instance still reserves it); the DB generation is now {new}."
        )
        return new

    def user_ready(self) -> bool:
        infra = self.doc.get("infra") or {}
        return bool(infra.get("sql_user_ready") == self.instance())


def build_steps(stack: Stack, run: InfraRun) -> list[Step]:
    g, s, n = stack.gcloud, stack.settings, stack.names

    def step(
        name: str, title: str, needs: tuple[str, ...], action: Callable[[StepRun], Outcome]
    ) -> Step:
        return Step(name, title, action, needs)

    cold = run.cold
    return [
        step("apis", "APIs", (), lambda r: apis.ensure(g, r, cold=cold)),
        step(
            "network",
            f"network {n.network}",
            ("apis",),
            lambda r: network.ensure_network(g, n, r, cold=cold),
        ),
        step(
            "subnet",
            f"subnet {n.subnet}",
            ("network",),
            lambda r: network.ensure_subnet(g, s, n, r, cold=cold),
        ),
        step(
            "psa_range",
            f"range {n.psa_range}",
            ("network",),
            lambda r: network.ensure_psa_range(g, n, r, cold=cold),
        ),
        step(
            "peering",
            "private services access",
            ("psa_range",),
            lambda r: network.ensure_peering(g, n, r, cold=cold),
        ),
        step(
            "router",
            f"Cloud Router {n.router}",
            ("network",),
            lambda r: network.ensure_router(g, n, r, cold=cold),
        ),
        step(
            "nat",
            f"Cloud NAT {n.nat}",
            ("router",),
            lambda r: network.ensure_nat(g, n, r, cold=cold),
        ),
        step(
            "bucket",
            f"bucket gs://{n.data_bucket}",
            ("apis",),
            lambda r: storage.ensure(g, n, r, cold=cold),
        ),
        step(
            "accounts",
            "service accounts",
            ("apis",),
            lambda r: iam.ensure_accounts(g, n, r, cold=cold),
        ),
        step("project", "project number", ("apis",), run.number),
        step(
            "project_iam",
            "IAM roles",
            ("accounts", "project"),
            lambda r: iam.ensure_project_bindings(g, n, r, project_number=run.known_number()),
        ),
        step(
            "secret",
            f"secret {n.db_secret}",
            ("apis",),
            lambda r: secrets.ensure(g, n, r, cold=cold, remember=run.remember_password),
        ),
        step(
            "sql_instance",
            "Cloud SQL instance",
            ("peering",),
            lambda r: sql.ensure_instance(
                g,
                s,
                n,
                r,
                generation=run.generation,
                bump=run.bump,
                cold=cold,
                tainted=run.tainted("sql"),
                track=run.track("sql"),
            ),
        ),
        step(
            "sql_database",
            f"database {n.database}",
            ("sql_instance",),
            lambda r: sql.ensure_database(g, n, run.instance(), r, cold=cold),
        ),
        step(
            "sql_user",
            f"database user {n.db_user}",
            ("sql_database", "secret"),
            lambda r: sql.ensure_user(
                g,
                n,
                run.instance(),
                r,
                password_known_set=run.user_ready(),
                password=run.password,
                cold=cold,
            ),
        ),
        step(
            "sql_hardening",
            "Cloud SQL hardening",
            ("sql_user",),
            lambda r: sql.ensure_hardened(
                g, run.instance(), r, just_created="sql" in run.created_now
            ),
        ),
        step(
            "gke",
            f"GKE cluster {n.cluster}",
            ("subnet", "project_iam"),
            lambda r: gke.ensure_cluster(
                g, s, n, r, cold=cold, tainted=run.tainted("gke"), track=run.track("gke")
            ),
        ),
        step(
            "gke_hardening",
            "GKE hardening",
            ("gke", "nat"),
            lambda r: gke.ensure_hardened(g, s, n, r, just_created="gke" in run.created_now),
        ),
        step(
            "credentials",
            "kubectl credentials",
            ("gke",),
            lambda r: gke.ensure_credentials(g, n, r, cold=cold),
        ),
        *node_pool_steps(stack, cold=cold),
    ]


def node_pool_steps(stack: Stack, *, cold: bool) -> list[Step]:
    """The optional GPU and Spot pools, after the cluster, one after the other (GKE runs one
    operation per cluster at a time). A stack built before gets them too, to remove a pool
    the settings no longer ask for; a cold stack without them gets none."""
    g, s, n = stack.gcloud, stack.settings, stack.names
    gpu, spot = nodepools.gpu_pool(s), nodepools.spot_pool(s)
    steps: list[Step] = []
    if gpu is not None:
        steps.append(
            Step(
                "gpu_zone",
                f"{s.gpu_type} in {n.zone}",
                lambda r: nodepools.check_zone_offers(g, s, n, r),
                ("apis",),
            )
        )
    if gpu is not None or not cold:
        steps.append(
            Step(
                "gpu_pool",
                f"GPU node pool {nodepools.GPU_POOL}",
                lambda r: nodepools.ensure(g, n, nodepools.GPU_POOL, gpu, r, cold=cold),
                ("gke", "gpu_zone") if gpu is not None else ("gke",),
            )
        )
    if spot is not None or not cold:
        steps.append(
            Step(
                "spot_pool",
                f"Spot node pool {nodepools.SPOT_POOL}",
                lambda r: nodepools.ensure(g, n, nodepools.SPOT_POOL, spot, r, cold=cold),
                ("gke", *(("gpu_pool",) if any(x.name == "gpu_pool" for x in steps) else ())),
            )
        )
    return steps


def fingerprint(stack: Stack, generation: int) -> str:
    return settings_fingerprint(stack.settings, generation)


def settings_fingerprint(settings: Settings, generation: int) -> str:
    """What the Google side was converged for: every setting but NOT_GOOGLE_SIDE."""
    relevant = {k: v for k, v in asdict(settings).items() if k not in NOT_GOOGLE_SIDE}
    relevant["zone"] = settings.resolved_zone
    relevant["db_generation"] = generation
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# The no-op fast path: a finished stack is confirmed by a few witnesses read at once.


def quick_check(stack: Stack) -> tuple[Doc | None, bool]:
    """Read the state and the witness resources concurrently; True if nothing needs doing.

    The witnesses imply the rest: a RUNNABLE private-IP instance on our network implies the
    network, range and peering; a RUNNING cluster with our pool implies the subnet; the project
    policy shows every binding (and a deleted account as `deleted:`); the bucket is checked
    itself. Anything unexpected sends the run down the full path, which describes everything.
    """
    g, s, n = stack.gcloud, stack.settings, stack.names

    with ThreadPoolExecutor(6) as pool:
        doc_f = pool.submit(stack.state.peek)
        sql_f = pool.submit(sql.stack_instances, g, n)
        gke_f = pool.submit(gke.describe, g, n)
        iam_f = pool.submit(iam.project_policy, g, n)
        bucket_f = pool.submit(storage.describe, g, n)
        router_f = pool.submit(network.describe_router, g, n)
        try:
            doc = doc_f.result()
            instances, cluster, project_policy, bucket, router = (
                sql_f.result(),
                gke_f.result(),
                iam_f.result(),
                bucket_f.result(),
                router_f.result(),
            )
        except (NotAuthenticated, MissingTool):
            raise  # the preflight answer: say it now, in one line
        except StackError:
            return None, False
    generation = db_generation(doc or {}, s.db_generation_number)
    instance = next((i for i in instances if i.get("name") == n.sql_instance(generation)), None)
    infra = (doc or {}).get("infra") or {}
    if infra:
        # Work remains on a stack built before: its steps describe first, and the first
        # describe of each of these reuses the answer read a moment ago. (A cold stack
        # creates first and never describes before it changes, so nothing is primed.)
        sql.prime_describe(g, n.sql_instance(generation), instance)
        gke.prime_describe(g, n, cluster)
        iam.prime_project_policy(g, n, project_policy)
        storage.prime_describe(g, n, bucket)
        network.prime_router(g, n, router)
    if doc is None:
        return None, False
    number = infra.get("project_number")
    ok = (
        bool(number)
        and any(nat.get("name") == n.nat for nat in (router or {}).get("nats") or [])
        and infra.get("converged") == fingerprint(stack, generation)
        and infra.get("sql_user_ready") == n.sql_instance(generation)
        and instance is not None
        and instance.get("state") == "RUNNABLE"
        and not sql.drift(instance, s, n)
        and cluster is not None
        and cluster.get("status") == "RUNNING"
        and not gke.drift(cluster, s, n)
        and nodepools.pools_match(cluster, s)
        and not iam.missing_bindings(project_policy, iam.project_bindings(n, str(number)))
        and bucket is not None
        and not storage.drift(bucket)
        and gke.context_is_current(n.kube_context, cluster, stack.runner.env)
    )
    return doc, ok


# ---------------------------------------------------------------------------------------
# Tasks


def plan(stack: Stack) -> Report:
    """Read-only: describe everything and say what up would create, keep, or finds different."""
    doc = stack.state.peek() or {}
    run = InfraRun(stack, doc, describe_first=True)
    report = run_steps(
        build_steps(stack, run), console=stack.console, title="Plan (read-only)", plan=True
    )
    report.raise_for_failure()
    print_plan(stack, report)
    return report


def print_plan(stack: Stack, report: Report) -> None:
    from rich.table import Table

    table = Table(
        title=f"Plan for stack '{stack.names.stack}' in {stack.names.project}", title_justify="left"
    )
    table.add_column("resource")
    table.add_column("plan")
    for state in report.states.values():
        if state.outcome is Outcome.PLANNED:
            table.add_row(state.step.title, f"[green]+[/] {state.note}")
        else:
            note = f" ({state.note})" if state.note else ""
            table.add_row(state.step.title, f"[dim]keep{note}[/]")
    stack.console.print(table)
    changes = sum(1 for s in report.states.values() if s.outcome is Outcome.PLANNED)
    stack.console.print(
        f"{changes} to create or change, {len(report.states) - changes} to keep."
        if changes
        else "Nothing to create: the Google Cloud side matches the settings."
    )


def up(stack: Stack, *, force_unlock: bool = False, refresh: bool = False) -> Report | None:
    """Create what is missing, concurrently, under the stack lock; resume after any failure."""
    task = TaskRun(stack, "infra.up", force_unlock=force_unlock)
    task.require_consent("creates billable resources and needs a confirmation")
    if stack.dry_run:
        task.announce_dry_run()
        report = _apply(task, None, refresh=refresh)
        task.print_dry_run_counts()
        return report

    preflight(stack, "gcloud")
    doc, done = (None, False) if refresh else quick_check(stack)
    if done:
        stack.console.print(
            f"[green]✔[/] Stack '{stack.names.stack}' is up; nothing to do. "
            "Next: [bold]inv services.up[/]"
        )
        return None
    if task.asks():
        report = plan(stack)
        changes = any(s.outcome is Outcome.PLANNED for s in report.states.values())
        if changes and not task.confirm("Create these resources?"):
            raise StackError("nothing was changed (not confirmed)")
    return _apply(task, doc, refresh=refresh)


def _apply(task: TaskRun, doc: Doc | None, *, refresh: bool) -> Report:
    stack = task.stack
    run = InfraRun(stack, dict(doc or {}), describe_first=refresh)

    def take_lock() -> None:
        if doc is None:
            stack.state.ensure_bucket()
        task.lock()
        stack.state.wait_for_versioning()
        assert stack.state.last is not None
        run.adopt(stack.state.last.data)

    with task.recording(lambda d, report: _record(stack, run, d, report)):
        task.report = run_steps(
            build_steps(stack, run),
            console=stack.console,
            title=f"infra.up: stack '{stack.names.stack}'",
            gate=task.gate(take_lock),
            dry_run=stack.dry_run,
        )
    report = task.report
    if stack.dry_run:
        report.raise_for_failure()
    else:
        _summarise(stack, report)
    return report


def _record(stack: Stack, run: InfraRun, doc: Doc, report: Report | None) -> None:
    """What the state file keeps of this run (written with the lock's release)."""
    outcomes = report.outcomes() if report else {}
    generation = run.generation()
    infra = doc["infra"] = doc.get("infra") or {}
    doc["db_generation"] = max(int(doc.get("db_generation", 0)), generation)
    if outcomes.get("sql_user") in (Outcome.CREATED, Outcome.UPDATED, Outcome.KEPT):
        infra["sql_user_ready"] = run.instance()
    if run.project_number and run.project_number != iam.UNKNOWN_PROJECT_NUMBER:
        infra["project_number"] = run.project_number
    if run.resources:
        infra["resources"] = {**(infra.get("resources") or {}), **run.resources}
    if report is not None and report.ok:
        infra["converged"] = fingerprint(stack, generation)
        infra["converged_at"] = now()
    else:
        infra["converged"] = None
    infra["last_run"] = {
        "at": now(),
        "ok": bool(report and report.ok),
        "steps": {k: (v.value if v else None) for k, v in outcomes.items()},
    }


def _summarise(stack: Stack, report: Report) -> None:
    console = stack.console
    if report.gate_error is not None:
        raise report.gate_error  # e.g. the lock is held: nothing was changed
    if report.failed:
        failed = report.failed[0]
        error = failed.error
        reason = error.one_line() if isinstance(error, StackError) else repr(error)
        not_started = [
            s.step.title
            for s in report.states.values()
            if s.outcome is None and s.status.value == "not started"
        ]
        console.print(f"[red]✘[/] {failed.step.title} failed: {reason}")
        if not_started:
            console.print(f"  not started: {', '.join(not_started)}")
        raise StackError(
            f"infra.up stopped at '{failed.step.title}'. Fix the cause above, then run "
            "`inv infra.up` again: it keeps what exists and resumes"
        ) from error
    created = [
        s.step.title
        for s in report.states.values()
        if s.outcome in (Outcome.CREATED, Outcome.UPDATED)
    ]
    console.print(
        f"[green]✔[/] infra.up finished in {report.duration:.0f}s"
        + (f": created {', '.join(created)}." if created else "; everything was already there.")
    )
    last = stack.state.last.data if stack.state.last else {}
    generation = db_generation(last, stack.settings.db_generation_number)
    console.print(f"  Cloud SQL instance: {stack.names.sql_connection_name(generation)}")
    console.print("  Next: [bold]inv services.up[/]")
