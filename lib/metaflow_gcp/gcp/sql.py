"""Cloud SQL for PostgreSQL: private IP only, backups on, named by the generation counter.

Cloud SQL runs one operation per instance at a time, so the database and the user
are made one after the other, and "another operation is in progress" (a backup
starting right after creation, say) is waited out rather than reported.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import AlreadyExists, OperationInProgress, StackError
from metaflow_gcp.gcp.gcloud import Gcloud, create_or_keep
from metaflow_gcp.gcp.operations import OperationFailed, follow
from metaflow_gcp.graph import Outcome, StepRun

CREATE_TIMEOUT = 45 * 60.0
BUSY_TIMEOUT = 15 * 60.0
T = TypeVar("T")
# gcloud logs every parsed flag, --password included, to its log files unless told not to.
NO_FILE_LOG = {"CLOUDSDK_CORE_DISABLE_FILE_LOGGING": "1"}


def create_flags(s: Settings, n: Names) -> list[str]:
    return [
        f"--database-version={s.db_version}",
        # Some projects default to Enterprise Plus, which refuses small custom tiers.
        "--edition=enterprise",
        f"--tier={s.db_tier}",
        f"--region={n.region}",
        f"--network={n.network_path}",
        "--no-assign-ip",  # private IP only, from the private services range on that network
        "--backup-start-time=03:00",
        "--storage-auto-increase",
    ]


def describe(gcloud: Gcloud, name: str) -> dict[str, Any] | None:
    return gcloud.describe("sql", "instances", "describe", name)


def drift(found: dict[str, Any], s: Settings, n: Names) -> list[str]:
    """What an existing instance has that our settings say it should not."""
    problems = []
    ip = found.get("settings", {}).get("ipConfiguration", {})
    if ip.get("ipv4Enabled"):
        problems.append("has a public IP")
    if ip.get("privateNetwork", "").rsplit("networks/", 1)[-1] != n.network:
        problems.append(f"is not on network {n.network}")
    if not found.get("settings", {}).get("backupConfiguration", {}).get("enabled"):
        problems.append("has automated backups off")
    if found.get("databaseVersion") != s.db_version:
        problems.append(f"runs {found.get('databaseVersion')}, settings say {s.db_version}")
    return problems


def wait_operation(gcloud: Gcloud, run: StepRun, operation: str, what: str) -> None:
    def poll() -> tuple[bool, str]:
        op = gcloud.read("sql", "operations", "describe", operation, dry={"status": "DONE"})
        if op.get("status") != "DONE":
            return False, str(op.get("status", "RUNNING"))
        errors = op.get("error", {}).get("errors", [])
        if errors:
            raise OperationFailed(f"{what} failed: {errors[0].get('message', errors[0])}")
        return True, "DONE"

    follow(run, what, poll, timeout=CREATE_TIMEOUT)


def stack_instances(
    gcloud: Gcloud, n: Names, *, dry: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every instance of this stack, whatever its generation (one call, no name needed)."""
    found = gcloud.read("sql", "instances", "list", f"--filter=name:{n.sql_prefix}*", dry=dry or [])
    ours = re.compile(rf"{re.escape(n.sql_prefix)}\d+")
    return [i for i in found or [] if ours.fullmatch(str(i.get("name", "")))]


def pending_operations(gcloud: Gcloud, instance: str) -> list[str]:
    ops = gcloud.read("sql", "operations", "list", f"--instance={instance}", dry=[]) or []
    return [str(op["name"]) for op in ops if op.get("status") != "DONE"]


def ensure_instance(
    gcloud: Gcloud,
    s: Settings,
    n: Names,
    run: StepRun,
    *,
    generation: Callable[[], int],
    bump: Callable[[], int],
    cold: bool = False,
) -> Outcome:
    """Create the instance named after the current generation; on a reserved name, move on.

    generation/bump read and advance the counter in the state file. cold: try the create
    first; a 409 then means "exists" (describe shows it) or "reserved" (describe does not).
    """
    name = n.sql_instance(generation())
    look = not cold
    while True:
        found = describe(gcloud, name) if look else None
        if found is not None:
            return _existing(gcloud, s, n, run, name, found)
        run.before_change(f"create Cloud SQL instance {name} ({s.db_version}, {s.db_tier})")
        run.note(f"creating {name}")
        try:
            result = gcloud.mutate(
                "sql", "instances", "create", name, *create_flags(s, n), "--async"
            )
        except AlreadyExists:
            if not look:  # we did not look first: maybe it is simply there
                look = True
                continue
            # The name is held by an instance deleted recently (or one we cannot see).
            new_name = n.sql_instance(bump())
            run.note(f"{name} is reserved by a deleted instance; using {new_name}")
            name = new_name
            continue
        if gcloud.dry_run:
            return Outcome.CREATED
        wait_operation(gcloud, run, str(result.json()["name"]), f"creating {name}")
        return Outcome.CREATED


def _existing(
    gcloud: Gcloud, s: Settings, n: Names, run: StepRun, name: str, found: dict[str, Any]
) -> Outcome:
    state = found.get("state")
    if state == "PENDING_CREATE":
        # A previous run started it: follow its operation instead of starting another.
        for operation in pending_operations(gcloud, name):
            wait_operation(gcloud, run, operation, f"creating {name} (resumed)")
        return Outcome.CREATED
    if state not in ("RUNNABLE", "MAINTENANCE"):
        raise StackError(
            f"Cloud SQL instance {name} is {state}. Fix: check it in the Cloud Console; "
            "if it is broken, delete it and re-run (a new generation is used)"
        )
    problems = drift(found, s, n)
    if problems:
        run.note(f"{name} {'; '.join(problems)} (not changed automatically)")
    return Outcome.KEPT


def _retry_busy(run: StepRun, call: Callable[[], T]) -> T:
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return call()
        except OperationInProgress:
            if time.monotonic() > deadline:
                raise
            run.note("the instance is busy with another operation; waiting")
            run.sleep(5)


def ensure_database(
    gcloud: Gcloud, n: Names, instance: str, run: StepRun, *, cold: bool = False
) -> Outcome:
    def present() -> object | None:
        found = gcloud.read("sql", "databases", "list", f"--instance={instance}", dry=[]) or []
        return True if any(d.get("name") == n.database for d in found) else None

    return create_or_keep(
        run,
        f"create database {n.database} on {instance}",
        lambda: _retry_busy(
            run,
            lambda: gcloud.mutate(
                "sql", "databases", "create", n.database, f"--instance={instance}", timeout=900
            ),
        ),
        present,
        cold=cold,
    )


def ensure_user(
    gcloud: Gcloud,
    n: Names,
    instance: str,
    run: StepRun,
    *,
    password_known_set: bool,
    password: Callable[[], str],
    cold: bool = False,
) -> Outcome:
    """The `metaflow` user, whose password only ever travels on stdin.

    Cloud SQL for PostgreSQL refuses a built-in user without a password, and gcloud takes
    one only as `--password` (a command line any local user can read) or from a prompt.
    So the flag comes from `--flags-file=-`, that is from stdin, and gcloud's file log
    (which records every parsed flag) is off for these commands.
    password_known_set: the state file says a past run finished setting it.
    password: gives the password (from memory if this run made it, else Secret Manager).
    """
    exists = False
    if not cold:
        found = gcloud.read("sql", "users", "list", f"--instance={instance}", dry=[]) or []
        exists = any(u.get("name") == n.db_user for u in found)
    if exists and password_known_set:
        return Outcome.KEPT
    run.before_change(f"create database user {n.db_user} on {instance}")
    secret = password()

    def with_password(verb: str) -> object:
        return gcloud.mutate(
            "sql",
            "users",
            verb,
            n.db_user,
            f"--instance={instance}",
            "--flags-file=-",
            stdin=json.dumps({"--password": secret}),
            extra_env=NO_FILE_LOG,
            timeout=900,
            fmt=None,
        )

    if not exists:
        try:
            _retry_busy(run, lambda: with_password("create"))
        except AlreadyExists:
            exists = True  # made by a run that stopped before it was recorded: set it anew
    if exists:
        _retry_busy(run, lambda: with_password("set-password"))
    return Outcome.CREATED if not exists else Outcome.UPDATED
