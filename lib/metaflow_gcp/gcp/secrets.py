"""The database password: made here, kept only in Secret Manager, handed on via stdin."""

from __future__ import annotations

import contextlib
import secrets as random_source
from collections.abc import Callable
from typing import Any

from metaflow_gcp.config import Names
from metaflow_gcp.errors import NotFound
from metaflow_gcp.gcp.gcloud import Gcloud, create_or_keep
from metaflow_gcp.graph import Outcome, StepRun

PASSWORD_BYTES = 24


def describe(gcloud: Gcloud, name: str) -> dict[str, Any] | None:
    return gcloud.describe("secrets", "describe", name)


def new_password() -> str:
    return random_source.token_urlsafe(PASSWORD_BYTES)


def ensure(
    gcloud: Gcloud,
    n: Names,
    run: StepRun,
    *,
    cold: bool = False,
    remember: Callable[[str], None] | None = None,
) -> Outcome:
    """Make the secret with a fresh password; `remember` gets it, so no one reads it back."""
    password = new_password()

    def create() -> None:
        gcloud.runner.add_secret(password)
        gcloud.mutate(
            "secrets",
            "create",
            n.db_secret,
            "--replication-policy=automatic",
            "--data-file=-",
            f"--labels=stack={n.stack},managed-by=metaflow-gcp",
            stdin=password,
            fmt=None,
        )

    outcome = create_or_keep(
        run,
        f"create secret {n.db_secret}",
        create,
        lambda: describe(gcloud, n.db_secret),
        cold=cold,
    )
    if outcome is Outcome.CREATED and remember is not None:
        remember(password)
    return outcome


def read_password(gcloud: Gcloud, n: Names) -> str:
    """The password, registered for redaction. A secret left without a version gets one."""
    if gcloud.dry_run:
        gcloud.secret_read("secrets", "versions", "access", "latest", f"--secret={n.db_secret}")
        return ""
    try:
        return gcloud.secret_read(
            "secrets", "versions", "access", "latest", f"--secret={n.db_secret}"
        )
    except NotFound:
        # `secrets create --data-file` is two API calls; a crash between them leaves no version.
        password = new_password()
        gcloud.runner.add_secret(password)
        gcloud.mutate("secrets", "versions", "add", n.db_secret, "--data-file=-", stdin=password)
        return password


def remove_database_passwords(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """teardown --delete-data only: a restore of the final backup needs both passwords."""
    names = [n.db_secret, n.airflow_db_secret]
    found = [name for name in names if gcloud.dry_run or describe(gcloud, name) is not None]
    if not found:
        return Outcome.GONE
    run.before_removal(f"delete secrets {', '.join(found)}")
    for name in found:
        with contextlib.suppress(NotFound):
            gcloud.mutate("secrets", "delete", name, "--quiet", fmt=None)
    return Outcome.DELETED
