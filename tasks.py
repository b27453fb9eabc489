"""Metaflow on Google Cloud: the tasks.

A table of contents: each task turns its flags into one call into lib/metaflow_gcp.
Imports of the package happen inside the tasks so `inv --list` stays fast.

    inv infra.up                          # Google Cloud side: bucket, VPC, Cloud SQL, GKE, IAM
    inv services.up --argo --no-airflow   # Metaflow services, Argo Workflows + Events, Airflow
    inv airflow.upload-dag my-dag.py      # ship a Metaflow-compiled DAG to Airflow
    inv teardown                          # remove the stack, keeping data unless asked
"""

from __future__ import annotations

from typing import Any

from invoke import Collection, Context, task

STACK_KEYS = (
    "org_prefix",
    "project",
    "region",
    "zone",
    "stack",
    "state_bucket",
    "data_bucket",
    "db_generation_number",
    "deploy_argo",
    "deploy_airflow",
    "deploy_jobset",
    "db_version",
    "db_tier",
    "node_machine_type",
    "min_nodes",
    "max_nodes",
    "subnet_range",
    "authorized_networks",
    "gpu_type",
    "gpu_per_node",
    "gpu_max_nodes",
    "gpu_spot",
    "gpu_machine_type",
    "spot_max_nodes",
)

COMMON = {
    "var-file": "settings in the Terraform `key = value` format (overrides invoke.yaml)",
    "verbose": "show every command with its full output",
}
CHANGING = {
    **COMMON,
    "dry-run": "print every command that would run; make no call at all",
    "yes": "do not ask for confirmation",
    "force-unlock": "break the lock a dead run left behind (says whose it was)",
}


def _open(
    c: Context,
    var_file: str | None,
    *,
    dry_run: bool = False,
    verbose: bool = False,
    yes: bool = False,
    **overrides: Any,
) -> Any:
    from metaflow_gcp.app import open_stack

    section = c.config.get("stack") or {}
    return open_stack(
        dict(section),
        var_file=var_file,
        dry_run=dry_run,
        verbose=verbose,
        yes=yes,
        overrides={k: v for k, v in overrides.items() if v is not None},
    )


def _boundary(verbose: bool) -> Any:
    from metaflow_gcp.app import boundary

    return boundary(verbose)


def _switch(name: str, on: bool, off: bool) -> bool | None:
    if on and off:
        from invoke.exceptions import Exit

        raise Exit(f"error: --{name} and --no-{name} contradict each other; pick one", code=2)
    return True if on else (False if off else None)


def _positional(task_name: str, value: str) -> str:
    """A positional value that starts with '-' is a flag Invoke handed over as the value.

    Invoke 3.0.3 (pyinvoke/invoke#982) lets a task's missing positional swallow the next
    token, so `inv airflow.upload-dag --help` would run the task with the path '--help'.
    Show the help it asked for; refuse any other flag in that place in one line.
    """
    from invoke.exceptions import Exit

    if value in ("--help", "-h"):
        from invoke import Program

        Program(namespace=ns, binary="inv").run(["inv", "--help", task_name], exit=False)
        raise Exit(code=0)
    if value.startswith("-"):
        raise Exit(
            f"error: {value}: is not a path, and {task_name} takes a path first. "
            f"Fix: inv {task_name} my-dag.py {value}",
            code=2,
        )
    return value


# -- infra ------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    help={**CHANGING, "refresh": "describe every resource even when the stack looks done"},
)
def up(
    c: Context,
    var_file: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    verbose: bool = False,
    force_unlock: bool = False,
    refresh: bool = False,
) -> None:
    """Create (or finish creating) the Google Cloud side of the stack."""
    with _boundary(verbose):
        from metaflow_gcp import infra

        stack = _open(c, var_file, dry_run=dry_run, verbose=verbose, yes=yes)
        infra.up(stack, force_unlock=force_unlock, refresh=refresh)


@task(auto_shortflags=False, help=COMMON)
def plan(c: Context, var_file: str | None = None, verbose: bool = False) -> None:
    """Show what infra.up would create, keep, or finds different (read-only)."""
    with _boundary(verbose):
        from metaflow_gcp import infra

        infra.plan(_open(c, var_file, verbose=verbose))


# -- services ---------------------------------------------------------------------------

SERVICE_FLAGS = {
    **CHANGING,
    "argo": "install Argo Workflows + Argo Events (default: deploy_argo, true)",
    "no-argo": "do not install Argo (removes it if installed, after confirming)",
    "airflow": "install Airflow 2.x (default: deploy_airflow, false)",
    "no-airflow": "do not install Airflow (removes it if installed, after confirming)",
    "jobset": "install the JobSet controller for @parallel (default: deploy_jobset, true)",
    "no-jobset": "do not install JobSet (removes it if installed, after confirming)",
}


@task(auto_shortflags=False, name="up", help=SERVICE_FLAGS)
def services_up(
    c: Context,
    var_file: str | None = None,
    argo: bool = False,
    no_argo: bool = False,
    airflow: bool = False,
    no_airflow: bool = False,
    jobset: bool = False,
    no_jobset: bool = False,
    dry_run: bool = False,
    yes: bool = False,
    verbose: bool = False,
    force_unlock: bool = False,
) -> None:
    """Install the Metaflow services on GKE, Argo, JobSet, optionally Airflow; print next steps."""
    with _boundary(verbose):
        from metaflow_gcp import services

        stack = _open(
            c,
            var_file,
            dry_run=dry_run,
            verbose=verbose,
            yes=yes,
            deploy_argo=_switch("argo", argo, no_argo),
            deploy_airflow=_switch("airflow", airflow, no_airflow),
            deploy_jobset=_switch("jobset", jobset, no_jobset),
        )
        services.up(stack, force_unlock=force_unlock)


# -- airflow ----------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    name="upload-dag",
    positional=["path"],
    iterable=["also"],
    help={
        **COMMON,
        "path": "a DAG file, or a folder: all its *.py files",
        "also": "PATH: one more DAG file or folder; repeatable (--also b.py --also dags/)",
        "dest-name": "file name in the DAGs folder (one file only)",
        "namespace": "Airflow's namespace (default: airflow)",
        "dry-run": "check the files and print the commands; touch nothing",
    },
)
def upload_dag(
    c: Context,
    path: str,
    also: list[str] | None = None,
    var_file: str | None = None,
    dest_name: str | None = None,
    namespace: str = "airflow",
    dry_run: bool = False,
    verbose: bool = False,
) -> None:
    """Copy Metaflow-generated Airflow DAG files to the Airflow scheduler, and verify them.

    inv airflow.upload-dag my-dag.py            one file
    inv airflow.upload-dag dags/                every *.py in a folder
    inv airflow.upload-dag a.py --also b.py     several (Invoke takes one positional)
    """
    paths = [_positional("airflow.upload-dag", path), *(also or [])]
    with _boundary(verbose):
        from metaflow_gcp import day2

        stack = _open(c, var_file, dry_run=dry_run, verbose=verbose)
        day2.upload_dag(stack, paths, dest_name=dest_name, namespace=namespace)


# -- day 2 ------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    help={
        **CHANGING,
        "delete-data": "also delete the datastore bucket and skip the metadata DB's final "
        "backup (both kept by default)",
    },
)
def teardown(
    c: Context,
    var_file: str | None = None,
    delete_data: bool = False,
    dry_run: bool = False,
    yes: bool = False,
    verbose: bool = False,
    force_unlock: bool = False,
) -> None:
    """Remove the stack. Keeps your data unless --delete-data; always keeps the state."""
    with _boundary(verbose):
        from metaflow_gcp import teardown as teardown_

        stack = _open(c, var_file, dry_run=dry_run, verbose=verbose, yes=yes)
        teardown_.run(stack, delete_data=delete_data, force_unlock=force_unlock)


@task(auto_shortflags=False, help={**COMMON, "json": "print JSON for machines instead of a table"})
def status(
    c: Context, var_file: str | None = None, json: bool = False, verbose: bool = False
) -> None:
    """One table of the stack: each resource, its key settings, and the state file's view."""
    with _boundary(verbose):
        from metaflow_gcp import day2

        day2.status(_open(c, var_file, verbose=verbose), as_json=json)


@task(auto_shortflags=False, name="port-forward", help=COMMON)
def port_forward(c: Context, var_file: str | None = None, verbose: bool = False) -> None:
    """Keep port-forwards to the Metaflow services and UIs alive until Ctrl-C."""
    with _boundary(verbose):
        from metaflow_gcp import day2

        day2.port_forward(_open(c, var_file, verbose=verbose))


@task(auto_shortflags=False, help={**COMMON, "yes": "do not ask for confirmation"})
def unlock(
    c: Context, var_file: str | None = None, yes: bool = False, verbose: bool = False
) -> None:
    """Break a stale lock left by a run that died (says whose it was)."""
    with _boundary(verbose):
        from metaflow_gcp import day2

        day2.unlock(_open(c, var_file, verbose=verbose, yes=yes))


# -- user secrets (for Metaflow's @secrets) ---------------------------------------------


@task(
    auto_shortflags=False,
    name="set",
    positional=["name"],
    help={
        **COMMON,
        "name": "the secret's name; a flow reads it with @secrets(sources=[NAME])",
        "from-file": "read the value from this file (default: stdin, or a prompt that does "
        "not echo); never pass a value on the command line",
    },
)
def secrets_set(
    c: Context,
    name: str,
    from_file: str | None = None,
    var_file: str | None = None,
    verbose: bool = False,
) -> None:
    """Store a user secret in Secret Manager (a new version if it exists)."""
    with _boundary(verbose):
        from metaflow_gcp import user_secrets

        if name.startswith("-"):  # Invoke hands an option written first to the positional
            from invoke.exceptions import Exit

            raise Exit("usage: inv secrets.set NAME [--from-file FILE] (inv --help secrets.set)", 2)
        stack = _open(c, var_file, verbose=verbose)
        user_secrets.check_name(stack.names, name)  # before reading the value
        user_secrets.set_secret(stack, name, user_secrets.read_value(from_file))


@task(
    auto_shortflags=False,
    name="list",
    help={**COMMON, "json": "print JSON for machines instead of a table"},
)
def secrets_list(
    c: Context, var_file: str | None = None, json: bool = False, verbose: bool = False
) -> None:
    """List the stack's user secrets: names, versions, created (never values)."""
    with _boundary(verbose):
        from metaflow_gcp import user_secrets

        stack = _open(c, var_file, verbose=verbose)
        rows = user_secrets.list_secrets(stack)
        if json:
            import json as json_

            print(json_.dumps(rows, indent=2))
        else:
            user_secrets.print_list(stack, rows)


infra = Collection("infra", up, plan)
services_ns = Collection("services")
services_ns.add_task(services_up, default=False)
airflow_ns = Collection("airflow")
airflow_ns.add_task(upload_dag)

ns = Collection(infra, teardown, status, port_forward, unlock)
ns.add_collection(services_ns, name="services")
ns.add_collection(airflow_ns, name="airflow")
ns.add_collection(Collection("secrets", secrets_set, secrets_list), name="secrets")
# Every stack key exists (as None) so INVOKE_STACK_<KEY> variables are picked up as strings.
ns.configure({"stack": dict.fromkeys(STACK_KEYS)})
