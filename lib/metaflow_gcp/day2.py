"""Day-2 tasks: status, unlock, and the glue for upload-dag and port-forward."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from metaflow_gcp import kube_names
from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.config import Names
from metaflow_gcp.errors import StackError
from metaflow_gcp.gcp import gke, iam, network, nodepools, secrets, sql, storage
from metaflow_gcp.kube import Kubectl
from metaflow_gcp.lifecycle import lock_holder
from metaflow_gcp.state import db_generation


def upload_dag(
    stack: Stack, paths: Sequence[str], *, dest_name: str | None, namespace: str
) -> None:
    from metaflow_gcp import airflow_dags

    if not paths:
        raise StackError("name at least one DAG file. Fix: inv airflow.upload-dag my-dag.py")
    files = airflow_dags.expand_paths(paths)
    airflow_dags.check_dag_files(files)  # a bad file is one line, before any cluster call
    preflight(stack, "kubectl")
    _require_context(stack)
    kubectl = Kubectl(stack.runner, stack.names.kube_context)
    for done in airflow_dags.upload_dags(kubectl, files, namespace=namespace, dest_name=dest_name):
        stack.console.print(f"  would copy {done}" if stack.dry_run else f"[green]✔[/] {done}")
    if stack.dry_run:
        return
    stack.console.print(
        "Airflow picks new DAG files up within its scan interval; the Airflow UI is on "
        f"{kube_names.local_url('airflow')} with `inv port-forward`."
    )


def _require_context(stack: Stack) -> None:
    """Every kubectl call names the stack's context: without it, say how to get it."""
    n = stack.names
    if not stack.dry_run and not gke.has_context(n.kube_context, stack.runner.env):
        raise StackError(
            f"kubectl has no context '{n.kube_context}' (no cluster credentials here). Fix: "
            f"run `inv infra.up`, or `gcloud container clusters get-credentials {n.cluster} "
            f"--location={n.zone} --project={n.project}`"
        )


def port_forward(stack: Stack) -> None:
    from metaflow_gcp import portforward

    preflight(stack, "kubectl")
    _require_context(stack)
    kubectl = Kubectl(stack.runner, stack.names.kube_context)
    forwards = portforward.forwards_for(stack.settings.deploy_argo, stack.settings.deploy_airflow)
    portforward.run_port_forward(kubectl, forwards, stack.console)


def unlock(stack: Stack) -> None:
    doc = stack.state.peek()
    held = (doc or {}).get("lock")
    if not held:
        stack.console.print(f"Stack '{stack.names.stack}' is not locked.")
        return
    who = lock_holder(held)
    if not stack.assume_yes:
        if not stack.interactive():
            raise StackError(f"the lock is held by {who}. Fix: pass --yes to break it")
        from rich.prompt import Confirm

        if not Confirm.ask(f"Break the lock held by {who}?", console=stack.console):
            raise StackError("the lock was left in place")
    removed = stack.state.force_unlock()
    if removed:
        stack.console.print(f"[yellow]![/] broke the lock of {who}")


# -- status ---------------------------------------------------------------------------------
#
# status says only what it read. A read that failed makes that resource "unknown" (never a
# guess of "yes" or "no"), its cause is said once (however many reads it broke), and the
# task exits non-zero, in the table and in --json alike.


@dataclass(frozen=True)
class Read:
    """One read's answer, or why it has none."""

    value: Any = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def _read_all(reads: dict[str, Callable[[], Any]]) -> dict[str, Read]:
    with ThreadPoolExecutor(len(reads)) as pool:
        futures = {key: pool.submit(read) for key, read in reads.items()}
        found: dict[str, Read] = {}
        for key, future in futures.items():
            try:
                found[key] = Read(future.result())
            except StackError as error:
                found[key] = Read(error=error.one_line())
    return found


def collect_status(stack: Stack) -> dict[str, Any]:
    """Every resource and the state file, read concurrently; nothing is changed."""
    g, n, s = stack.gcloud, stack.names, stack.settings
    found = _read_all(
        {
            "state": stack.state.peek,
            "network": lambda: network.describe_network(g, n),
            "subnet": lambda: network.describe_subnet(g, n),
            "psa_range": lambda: network.describe_psa_range(g, n),
            "peering": lambda: network.peerings(g, n),
            "bucket": lambda: storage.describe(g, n),
            "accounts": lambda: iam.existing_accounts(g),
            "sql": lambda: sql.stack_instances(g, n),
            "gke": lambda: gke.describe(g, n),
            "secret": lambda: secrets.describe(g, n.db_secret),
        }
    )
    state = found["state"]
    doc: dict[str, Any] = state.value or {}
    generation = None if state.failed else db_generation(doc, s.db_generation_number)
    subnet, bucket, cluster = found["subnet"], found["bucket"], found["gke"]
    rows = [
        _row("network", n.network, found["network"]),
        _row("subnet", n.subnet, subnet, **network.subnet_status_facts(_found(subnet))),
        _row("private services range", n.psa_range, found["psa_range"]),
        _row("private services access", n.network, found["peering"]),
        _row(
            "datastore bucket",
            f"gs://{n.data_bucket}",
            bucket,
            **storage.status_facts(_found(bucket)),
        ),
        *_account_rows(n, found["accounts"]),
        _sql_row(n, found["sql"], generation),
        _row("GKE cluster", n.cluster, cluster, **gke.status_facts(_found(cluster))),
        # The optional GPU and Spot pools, from the cluster's describe (no extra call).
        *(
            _row(kind, name, Read(pool, cluster.error), **facts)
            for kind, name, pool, facts in nodepools.status_rows(cluster.value, s)
        ),
        _row("DB password secret", n.db_secret, found["secret"]),
    ]
    errors = list(dict.fromkeys(r.error for r in found.values() if r.error))
    return {
        "stack": n.stack,
        "project": n.project,
        "ok": not errors,
        "errors": errors,
        "resources": rows,
        "state": {
            "url": stack.state.url,
            "exists": None if state.failed else state.value is not None,
            "error": state.error,
            "db_generation": generation,
            "lock": None if state.failed else doc.get("lock"),
            "infra_converged": None
            if state.failed
            else bool((doc.get("infra") or {}).get("converged")),
            "services": None if state.failed else doc.get("services"),
        },
    }


def _found(read: Read) -> dict[str, Any] | None:
    return read.value if isinstance(read.value, dict) else None


def _row(kind: str, name: str, read: Read, **settings: Any) -> dict[str, Any]:
    """exists: True or False from a read that answered, None (unknown) from one that failed."""
    return {
        "resource": kind,
        "name": name,
        "exists": None if read.failed else bool(read.value),
        "error": read.error,
        "settings": {k: v for k, v in settings.items() if v is not None},
    }


def _account_rows(n: Names, listed: Read) -> list[dict[str, Any]]:
    emails = {n.sa_email(account_id) for account_id in iam.accounts(n)}
    have: set[str] = set() if listed.failed else set(listed.value or ())
    if n.legacy_workload_sa in have:
        emails.add(n.legacy_workload_sa)  # still there until services.up retires it
    return [
        _row(
            "service account",
            email,
            listed if listed.failed else Read(email in have),
        )
        for email in sorted(emails)
    ]


def _sql_row(n: Names, listed: Read, generation: int | None) -> dict[str, Any]:
    """Which instance is current comes from the state file's counter."""
    if listed.failed:
        return _row("Cloud SQL instance", f"{n.sql_prefix}?", listed)
    instances = [i for i in listed.value or [] if isinstance(i, dict)]
    if generation is None:  # the state file could not be read: list what is there
        names = [str(i.get("name")) for i in instances]
        return _row(
            "Cloud SQL instance", f"{n.sql_prefix}?", Read(bool(names)), instances=names or None
        )
    instance = n.sql_instance(generation)
    current = next((i for i in instances if i.get("name") == instance), None)
    others = [str(i.get("name")) for i in instances if i.get("name") != instance]
    return _row(
        "Cloud SQL instance",
        instance,
        Read(current),
        **sql.status_facts(current),
        other_generations=others or None,
    )


def status(stack: Stack, *, as_json: bool = False) -> dict[str, Any]:
    """Print what was read; then, if any read failed, stop with its cause(s), once each."""
    report = collect_status(stack)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, default=sorted))
    elif any(not row["error"] for row in report["resources"]) or not report["state"]["error"]:
        _print_table(stack, report)
    if report["errors"]:
        raise StackError("\nerror: ".join(report["errors"]))
    return report


def _print_table(stack: Stack, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Stack '{report['stack']}' in {report['project']}", title_justify="left")
    for column in ("resource", "name", "exists", "settings"):
        table.add_column(column)
    for row in report["resources"]:
        exists = (
            "[yellow]unknown[/]"
            if row["exists"] is None
            else "[green]yes[/]"
            if row["exists"]
            else "[dim]no[/]"
        )
        detail = (
            "could not be read (below)"
            if row["error"]
            else ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        )
        table.add_row(row["resource"], row["name"], exists, detail)
    stack.console.print(table)
    st = report["state"]
    if st["error"]:
        stack.console.print(f"state {st['url']}: unknown, could not be read (below)")
        return
    lock = st["lock"]
    held = (
        f"[yellow]locked by {lock.get('holder')} ({lock.get('task')}, since {lock.get('since')})[/]"
        if lock
        else "not locked"
    )
    presence = "present" if st["exists"] else "absent"
    stack.console.print(
        f"state {st['url']}: {presence}, DB generation {st['db_generation']}, {held}"
    )
