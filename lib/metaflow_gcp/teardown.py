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

Each step is the resource module's own `remove`; this module is the order and the record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from metaflow_gcp import cluster_contents
from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.config import Names
from metaflow_gcp.errors import StackError
from metaflow_gcp.gcp import gke, iam, network, secrets, sql, storage
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.gcp.sql import FINAL_BACKUP_DAYS
from metaflow_gcp.graph import Action, Outcome, Report, Step, StepRun, run_steps
from metaflow_gcp.lifecycle import TaskRun
from metaflow_gcp.state import Doc, db_generation, now


class Teardown:
    """The steps, bound to one stack; the two that are more than a call are methods."""

    def __init__(self, stack: Stack, *, delete_data: bool) -> None:
        self.stack = stack
        self.delete_data = delete_data
        self.deleted_instances = threading.Event()  # set by the sql step: move the counter on

    def steps(self) -> list[Step]:
        g, n, data = self.stack.gcloud, self.stack.names, self.delete_data

        def call(remove: Callable[[Gcloud, Names, StepRun], Outcome]) -> Action:
            return lambda run: remove(g, n, run)

        steps = [
            Step("releases", "Helm releases", self.empty_cluster),
            Step("gke", f"GKE cluster {n.cluster}", call(gke.remove), ("releases",)),
            # Listed while the cluster empties; deleted only once it is empty.
            Step("sql", "Cloud SQL instances", self.sql_instances, changes_after=("releases",)),
            Step("generation", "DB generation counter", self.next_generation, ("sql",)),
            Step("peering", "private services access", call(network.remove_peering), ("sql",)),
            Step("psa_range", f"range {n.psa_range}", call(network.remove_psa_range), ("peering",)),
            Step("subnet", f"subnet {n.subnet}", call(network.remove_subnet), ("gke",)),
            Step("router", f"Cloud Router {n.router}", call(network.remove_router), ("gke",)),
            Step(
                "network",
                f"network {n.network}",
                call(network.remove_network),
                ("subnet", "psa_range", "peering", "router"),
            ),
            Step("bindings", "IAM bindings", self.bindings, ("gke", "sql")),
            Step("accounts", "service accounts", self.accounts, ("bindings",)),
        ]
        if data:
            steps += [
                Step(
                    "secrets",
                    "database password secrets",
                    call(secrets.remove_database_passwords),
                    ("sql",),
                ),
                Step(
                    "bucket",
                    f"bucket gs://{n.data_bucket}",
                    call(storage.remove),
                    ("releases", "gke"),
                ),
            ]
        return steps

    def empty_cluster(self, run: StepRun) -> Outcome:
        return cluster_contents.empty(self.stack, run, delete_data=self.delete_data)

    def sql_instances(self, run: StepRun) -> Outcome:
        doc = self.stack.state.last.data if self.stack.state.last else {}
        expected = self.stack.names.sql_instance(
            db_generation(doc, self.stack.settings.db_generation_number)
        )
        outcome = sql.remove_stack_instances(
            self.stack.gcloud,
            self.stack.names,
            run,
            expected=expected,
            keep_backup=not self.delete_data,
        )
        if outcome is Outcome.DELETED:
            self.deleted_instances.set()  # even one found gone: its name stays reserved
        return outcome

    def next_generation(self, run: StepRun) -> Outcome:
        """Cloud SQL keeps a deleted name reserved: the next infra.up must use a new one.

        A step of its own, started the moment the instance is gone, so that this state
        write runs beside the network chain instead of in front of it."""
        if not self.deleted_instances.is_set():
            return Outcome.SKIPPED
        new = self.stack.state.bump_db_generation(self.stack.settings.db_generation_number)
        self.stack.console.print(
            f"  the next Cloud SQL instance will be {self.stack.names.sql_instance(new)}"
        )
        return Outcome.UPDATED

    def _accounts(self) -> list[str]:
        """Ours, the legacy account of earlier versions included. Deleting an account also
        deletes its own policy, so the Workload Identity members go with it."""
        n = self.stack.names
        return [n.services_sa, n.steps_sa, n.node_sa, n.legacy_workload_sa]

    def bindings(self, run: StepRun) -> Outcome:
        changed = iam.remove_project_members(
            self.stack.gcloud, self.stack.names, self._accounts(), run
        )
        return Outcome.DELETED if changed else Outcome.GONE

    def accounts(self, run: StepRun) -> Outcome:
        return iam.delete_accounts(self.stack.gcloud, self._accounts(), run)


def run(stack: Stack, *, delete_data: bool = False, force_unlock: bool = False) -> Report:
    task = TaskRun(stack, "teardown", force_unlock=force_unlock)
    task.require_consent(
        "deletes resources and needs a confirmation",
        fix="run it on a terminal (you will type the stack name), or pass --yes",
    )
    preflight(stack, "gcloud")
    work = Teardown(stack, delete_data=delete_data)
    if task.asks():
        preview = run_steps(
            work.steps(),
            console=stack.console,
            title="What teardown would delete",
            plan=True,
            keep_going=True,
        )
        _print_preview(stack, preview, delete_data)
        if not any(s.outcome is Outcome.PLANNED for s in preview.states.values()):
            stack.console.print("Nothing to delete.")
        if not task.confirm_by_typing_name():
            raise StackError("nothing was deleted (the stack name did not match)")
    task.announce_dry_run()
    with task.recording(_record):
        task.report = run_steps(
            work.steps(),
            console=stack.console,
            title=f"teardown: {stack.names.stack}",
            gate=task.gate(task.lock),
            dry_run=stack.dry_run,
        )
    report = task.report
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


def _record(doc: Doc, report: Report | None) -> None:
    """Nothing of the stack is left after a finished teardown: the next infra.up starts cold."""
    if report is not None and report.ok:
        doc["infra"] = None
    else:
        doc["infra"] = {**(doc.get("infra") or {}), "converged": None}
    doc["services"] = None
    doc["teardown"] = {
        "at": now(),
        "ok": bool(report and report.ok),
        "steps": {
            k: (v.value if v else None) for k, v in (report.outcomes() if report else {}).items()
        },
    }


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
