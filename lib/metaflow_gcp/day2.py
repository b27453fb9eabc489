"""Day-2 tasks: status, unlock, and the glue for upload-dag and port-forward."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.errors import StackError
from metaflow_gcp.gcp import gke, iam, network, nodepools, sql, storage
from metaflow_gcp.kube import Kubectl
from metaflow_gcp.state import db_generation


def upload_dag(
    stack: Stack, paths: Sequence[str], *, dest_name: str | None, namespace: str
) -> None:
    from metaflow_gcp import airflow_dags

    if not paths:
        raise StackError("name at least one DAG file. Fix: inv airflow.upload-dag my-dag.py")
    files = airflow_dags.expand_paths(paths)  # checks every file before any cluster call
    preflight(stack, "kubectl")
    kubectl = Kubectl(stack.runner, stack.names.kube_context)
    for done in airflow_dags.upload_dags(kubectl, files, namespace=namespace, dest_name=dest_name):
        stack.console.print(f"[green]✔[/] {done}")
    stack.console.print(
        "Airflow picks new DAG files up within its scan interval; the Airflow UI is on "
        "http://localhost:9090 with `inv port-forward`."
    )


def port_forward(stack: Stack) -> None:
    from metaflow_gcp import portforward

    preflight(stack, "kubectl")
    kubectl = Kubectl(stack.runner, stack.names.kube_context)
    forwards = portforward.forwards_for(stack.settings.deploy_argo, stack.settings.deploy_airflow)
    portforward.run_port_forward(kubectl, forwards, stack.console)


def unlock(stack: Stack) -> None:
    doc = stack.state.peek()
    held = (doc or {}).get("lock")
    if not held:
        stack.console.print(f"Stack '{stack.names.stack}' is not locked.")
        return
    who = f"{held.get('holder')} ({held.get('task')}, since {held.get('since')})"
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


def collect_status(stack: Stack) -> dict[str, Any]:
    """Every resource and the state file, read concurrently; nothing is changed."""
    g, n, s = stack.gcloud, stack.names, stack.settings

    reads: dict[str, Callable[[], Any]] = {
        "state": stack.state.peek,
        "network": lambda: g.describe("compute", "networks", "describe", n.network),
        "subnet": lambda: g.describe(
            "compute", "networks", "subnets", "describe", n.subnet, f"--region={n.region}"
        ),
        "psa_range": lambda: g.describe(
            "compute", "addresses", "describe", n.psa_range, "--global"
        ),
        "peering": lambda: network.peerings(g, n),
        "bucket": lambda: storage.describe(g, n),
        "accounts": lambda: iam.existing_accounts(g),
        "sql": lambda: sql.stack_instances(g, n),
        "gke": lambda: gke.describe(g, n),
        "secret": lambda: g.describe("secrets", "describe", n.db_secret),
    }
    with ThreadPoolExecutor(len(reads)) as pool:
        futures = {key: pool.submit(read) for key, read in reads.items()}
        found: dict[str, Any] = {}
        for key, future in futures.items():
            try:
                found[key] = future.result()
            except StackError as error:
                found[key] = {"error": error.one_line()}
    doc = found["state"] or {}
    generation = db_generation(doc, s.db_generation_number)
    instance = n.sql_instance(generation)
    sql_found = next(
        (i for i in found["sql"] or [] if isinstance(i, dict) and i.get("name") == instance), None
    )
    others = [
        i.get("name")
        for i in found["sql"] or []
        if isinstance(i, dict) and i.get("name") != instance
    ]
    accounts = found["accounts"] if isinstance(found["accounts"], set) else set()
    cluster = found["gke"]
    bucket = found["bucket"]
    rows = [
        _row("network", n.network, found["network"]),
        _row("subnet", n.subnet, found["subnet"], range=(found["subnet"] or {}).get("ipCidrRange")),
        _row("private services range", n.psa_range, found["psa_range"]),
        _row("private services access", n.network, bool(found["peering"]) or None),
        _row(
            "datastore bucket",
            f"gs://{n.data_bucket}",
            bucket,
            public_access_prevention=(bucket or {}).get("public_access_prevention"),
            uniform_access=(bucket or {}).get("uniform_bucket_level_access"),
        ),
        _row("workload service account", n.workload_sa, n.workload_sa in accounts or None),
        _row("node service account", n.node_sa, n.node_sa in accounts or None),
        _row(
            "Cloud SQL instance",
            instance,
            sql_found,
            state=(sql_found or {}).get("state"),
            version=(sql_found or {}).get("databaseVersion"),
            other_generations=others or None,
        ),
        _row(
            "GKE cluster",
            n.cluster,
            cluster,
            status=(cluster or {}).get("status"),
            workload_pool=(cluster or {}).get("workloadIdentityConfig", {}).get("workloadPool"),
        ),
        # The optional GPU and Spot pools, from the cluster's describe (no extra call).
        *(_row(*row[:3], **row[3]) for row in nodepools.status_rows(cluster, s)),
        _row("DB password secret", n.db_secret, found["secret"]),
    ]
    lock = doc.get("lock")
    return {
        "stack": n.stack,
        "project": n.project,
        "resources": rows,
        "state": {
            "url": stack.state.url,
            "exists": found["state"] is not None,
            "db_generation": generation,
            "lock": lock,
            "infra_converged": bool((doc.get("infra") or {}).get("converged")),
            "services": doc.get("services"),
        },
    }


def _row(kind: str, name: str, found: Any, **settings: Any) -> dict[str, Any]:
    error = found.get("error") if isinstance(found, dict) else None
    return {
        "resource": kind,
        "name": name,
        "exists": None if error else bool(found),
        "error": error,
        "settings": {k: v for k, v in settings.items() if v is not None} if found else {},
    }


def status(stack: Stack, *, as_json: bool = False) -> dict[str, Any]:
    report = collect_status(stack)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, default=sorted))
        return report
    from rich.table import Table

    table = Table(title=f"Stack '{report['stack']}' in {report['project']}", title_justify="left")
    for column in ("resource", "name", "exists", "settings"):
        table.add_column(column)
    for row in report["resources"]:
        exists = (
            "[red]error[/]" if row["error"] else "[green]yes[/]" if row["exists"] else "[dim]no[/]"
        )
        detail = row["error"] or ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        table.add_row(row["resource"], row["name"], exists, detail)
    stack.console.print(table)
    st = report["state"]
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
    return report
