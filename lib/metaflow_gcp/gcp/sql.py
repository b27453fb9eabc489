"""Cloud SQL for PostgreSQL: private IP only, backups on, named by the generation counter.

Hardened: only the Cloud SQL Auth Proxy and connectors may connect (connector enforcement),
and only over TLS; deletion protection is on (teardown lifts it after its confirmation);
point-in-time recovery keeps the write-ahead log for restores to any second. An instance
made by an earlier version gets these by one in-place patch.

Cloud SQL runs one operation per instance at a time, so the database and the user
are made one after the other, and "another operation is in progress" (a backup
starting right after creation, say) is waited out rather than reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import AlreadyExists, NotFound, OperationInProgress, StackError
from metaflow_gcp.gcp.gcloud import Gcloud, create_or_keep
from metaflow_gcp.gcp.operations import OperationFailed, RetryOn, follow, retry
from metaflow_gcp.graph import Outcome, StepRun

CREATE_TIMEOUT = 45 * 60.0
BUSY_TIMEOUT = 15 * 60.0
FINAL_BACKUP_DAYS = 30  # Cloud SQL's own default; restorable with `gcloud sql backups restore`
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
        *HARDENING_FLAGS,
    ]


HARDENING_FLAGS = (
    "--connector-enforcement=REQUIRED",
    "--ssl-mode=ENCRYPTED_ONLY",
    "--deletion-protection",
    "--enable-point-in-time-recovery",
)


def hardening_gaps(found: dict[str, Any]) -> list[str]:
    """What an instance lacks of the hardened shape; one `instances patch` closes all of it."""
    settings = found.get("settings") or {}
    gaps = []
    if settings.get("connectorEnforcement") != "REQUIRED":
        gaps.append("accepts connections without the Auth Proxy or a connector")
    if (settings.get("ipConfiguration") or {}).get("sslMode") != "ENCRYPTED_ONLY":
        gaps.append("accepts unencrypted connections")
    if not settings.get("deletionProtectionEnabled"):
        gaps.append("has no deletion protection")
    if not (settings.get("backupConfiguration") or {}).get("pointInTimeRecoveryEnabled"):
        gaps.append("has no point-in-time recovery")
    return gaps


def describe(gcloud: Gcloud, name: str) -> dict[str, Any] | None:
    return gcloud.describe("sql", "instances", "describe", name)


def status_facts(found: dict[str, Any] | None) -> dict[str, Any]:
    """What `inv status` shows of the current instance beside whether it exists."""
    return {"state": (found or {}).get("state"), "version": (found or {}).get("databaseVersion")}


def prime_describe(gcloud: Gcloud, name: str, found: dict[str, Any] | None) -> None:
    """The next describe of `name` answers with `found` (read a moment ago)."""
    gcloud.prime(found, "sql", "instances", "describe", name)


def basics(found: dict[str, Any], s: Settings, n: Names) -> list[str]:
    """What an existing instance has that our settings say it should not (not patched)."""
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


def drift(found: dict[str, Any], s: Settings, n: Names) -> list[str]:
    """Everything that differs from what infra.up would make (the no-op check's judge)."""
    return [*basics(found, s, n), *hardening_gaps(found)]


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
    tainted: Callable[[str], bool] = lambda _name: False,
    track: Callable[[str, bool], None] = lambda _name, _healthy: None,
) -> Outcome:
    """Create the instance named after the current generation; on a reserved name, move on.

    generation/bump read and advance the counter in the state file. cold: try the create
    first; a 409 then means "exists" (describe shows it) or "reserved" (describe does not).
    tainted(name): the state shows this tool created it and it never became usable; such
    an instance is deleted and made again under the next generation (Cloud SQL keeps a
    deleted name reserved). track(name, healthy) records what was created and how it went.
    """
    name = n.sql_instance(generation())
    look = not cold
    replacing = ""
    while True:
        found = describe(gcloud, name) if look else None
        if found is not None and found.get("state") == "FAILED" and tainted(name):
            replacing = _replace(gcloud, run, name, found)
            name = n.sql_instance(bump())
            found = None
        if found is not None:
            outcome = _existing(gcloud, s, n, run, name, found)
            track(name, True)
            return outcome
        if not replacing:
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
        track(name, False)
        if gcloud.dry_run:
            return Outcome.CREATED
        wait_operation(gcloud, run, str(result.json()["name"]), f"creating {name}")
        track(name, True)
        return Outcome.CREATED


def _replace(gcloud: Gcloud, run: StepRun, name: str, found: dict[str, Any]) -> str:
    """Delete a FAILED instance this tool made (it never held data); its name stays reserved."""
    run.before_change(
        f"replace Cloud SQL instance {name}: this tool created it and it never became usable "
        f"({found.get('state')}); delete it and create the next generation"
    )
    run.note(f"deleting the failed {name}")
    protected = bool((found.get("settings") or {}).get("deletionProtectionEnabled"))
    delete_instance(gcloud, run, name, protected=protected)
    return name


def delete_instance(
    gcloud: Gcloud, run: StepRun, name: str, *, protected: bool, flags: Sequence[str] = ()
) -> bool:
    """Lift the deletion protection if set, delete, and wait; False if it was already gone.

    Nothing is listed first: an instance busy with another operation (a backup, or this
    very delete started by an interrupted run) answers "in progress", and is waited for.
    """
    try:
        if protected:
            run.note(f"lifting the deletion protection of {name}")
            lift_deletion_protection(gcloud, run, name)
        result = _retry_busy(
            run,
            lambda: gcloud.mutate("sql", "instances", "delete", name, *flags, "--quiet", "--async"),
        )
    except NotFound:
        return False
    if not gcloud.dry_run:
        wait_operation(gcloud, run, str(result.json()["name"]), f"deleting {name}")
    return True


def remove_stack_instances(
    gcloud: Gcloud, n: Names, run: StepRun, *, expected: str, keep_backup: bool
) -> Outcome:
    """teardown's step: every instance of the stack, whatever its generation.

    The user confirmed the teardown, so deletion protection may be lifted. Without
    --delete-data Cloud SQL takes a final backup as it deletes (the run history is data).
    expected: the instance a dry run shows, as nothing is listed there.
    """
    instances = stack_instances(gcloud, n, dry=[{"name": expected}])
    names = [str(i["name"]) for i in instances]
    if not names:
        return Outcome.GONE
    listed = ", ".join(names)
    run.before_removal(
        f"delete Cloud SQL instance {listed}, keeping a final backup for {FINAL_BACKUP_DAYS} days"
        if keep_backup
        else f"delete Cloud SQL instance {listed} and its backups"
    )
    flags = final_backup_flags(n) if keep_backup else []
    for found in instances:
        protected = gcloud.dry_run or bool(
            (found.get("settings") or {}).get("deletionProtectionEnabled")
        )
        delete_instance(gcloud, run, str(found["name"]), protected=protected, flags=flags)
    return Outcome.DELETED


def final_backup_flags(n: Names) -> list[str]:
    return [
        "--enable-final-backup",
        f"--final-backup-retention-days={FINAL_BACKUP_DAYS}",
        f"--final-backup-description=metaflow-gcp teardown of stack {n.stack}",
    ]


def lift_deletion_protection(gcloud: Gcloud, run: StepRun, name: str) -> None:
    """Only after the user's word (teardown's confirmation, or a tainted replace)."""
    result = _retry_busy(
        run,
        lambda: gcloud.mutate(
            "sql", "instances", "patch", name, "--no-deletion-protection", "--quiet", "--async"
        ),
    )
    if not gcloud.dry_run:
        what = f"{name}: lifting deletion protection"
        wait_operation(gcloud, run, str(result.json()["name"]), what)


def ensure_hardened(gcloud: Gcloud, instance: str, run: StepRun, *, just_created: bool) -> Outcome:
    """Patch an instance of an earlier version to the hardened shape, all in one operation.

    Connector enforcement cuts off clients that connect without the Auth Proxy: the
    services of this stack all use it.
    """
    if just_created and not gcloud.dry_run:
        return Outcome.KEPT  # made by this run, with every hardening flag
    found = describe(gcloud, instance) or {}
    gaps = hardening_gaps(found) if found else ["(to be checked)"]
    if found and not gaps:
        return Outcome.KEPT
    run.before_change(f"harden Cloud SQL instance {instance}: {'; '.join(gaps)}", new=False)
    run.note(f"patching {instance}")
    result = _retry_busy(
        run,
        lambda: gcloud.mutate(
            "sql", "instances", "patch", instance, *HARDENING_FLAGS, "--quiet", "--async"
        ),
    )
    if not gcloud.dry_run:
        wait_operation(gcloud, run, str(result.json()["name"]), f"hardening {instance}")
    return Outcome.UPDATED


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
            "if it is broken, delete it and re-run (a new generation is used). It was not "
            "made by this tool, or it once worked, so it is not replaced automatically"
        )
    problems = basics(found, s, n)
    if problems:
        run.note(f"{name} {'; '.join(problems)} (not changed automatically)")
    return Outcome.KEPT


def _retry_busy(run: StepRun, call: Callable[[], T]) -> T:
    """Cloud SQL runs one operation per instance at a time: wait for the one under way."""
    busy = RetryOn(
        OperationInProgress,
        pause=5,
        within=BUSY_TIMEOUT,
        note="the instance is busy with another operation; waiting",
    )
    return retry(call, busy, run=run)


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
