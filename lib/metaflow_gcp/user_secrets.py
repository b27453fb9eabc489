"""User secrets for Metaflow's `@secrets`: stored in Secret Manager under the stack's prefix.

`inv secrets.set NAME` stores secret `mf-<stack>-user-NAME`. The steps' Google account may
read exactly the secrets under that prefix (an IAM condition on the secret name), and the
Metaflow config sets METAFLOW_GCP_SECRET_MANAGER_PREFIX to
`projects/<number>/secrets/mf-<stack>-user-`, so a step writes `@secrets(sources=["NAME"])`
and Metaflow reads `<prefix>NAME/versions/latest` into the environment variable NAME (with
'-' turned into '_'). The value never appears on a command line: it goes to gcloud on stdin.
"""

from __future__ import annotations

import getpass
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from metaflow_gcp.app import Stack, preflight
from metaflow_gcp.config import Names
from metaflow_gcp.errors import AlreadyExists, StackError
from metaflow_gcp.graph import Outcome

# Metaflow's GCP provider accepts a short secret id matching [\w-]+ and makes it the name of
# an environment variable ('-' becomes '_'), which must match [a-zA-Z_][a-zA-Z0-9_]* and
# must not start with METAFLOW_ (metaflow/plugins/secrets/utils.py).
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
SECRET_ID_MAX = 255  # Secret Manager's limit on a secret's id
VALUE_MAX = 64 * 1024  # Secret Manager's limit on a version's payload


def secret_id(n: Names, name: str) -> str:
    return f"{n.user_secret_prefix}{name}"


def check_name(n: Names, name: str) -> None:
    """One line naming the rule and a fix, before any cloud call."""
    if not NAME_RE.match(name):
        suggestion = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("-") or "API_TOKEN"
        if not re.match(r"[A-Za-z_]", suggestion):
            suggestion = f"_{suggestion}"
        raise StackError(
            f"secret name '{name}' must start with a letter or '_' and use only letters, "
            "digits, '_' and '-' (Metaflow turns it into an environment variable). "
            f"Fix: inv secrets.set {suggestion}"
        )
    if name.replace("-", "_").upper().startswith("METAFLOW_"):
        raise StackError(
            f"secret name '{name}' starts with METAFLOW_, which @secrets refuses to set. "
            f"Fix: inv secrets.set {name[len('METAFLOW_') :].lstrip('_-') or 'MY_SECRET'}"
        )
    full = secret_id(n, name)
    if len(full) > SECRET_ID_MAX:
        raise StackError(
            f"secret name '{name}' makes the Secret Manager id {len(full)} characters long; "
            f"the limit is {SECRET_ID_MAX}. Fix: use a name of at most "
            f"{SECRET_ID_MAX - len(n.user_secret_prefix)} characters"
        )


def read_value(from_file: str | None, stdin: IO[str] | None = None) -> str:
    """The value from a file (exactly as stored) or stdin: a prompt without echo on a
    terminal, else the piped text without its final newline (`echo x |` adds one)."""
    if from_file:
        path = Path(from_file)
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StackError(
                f"--from-file {from_file}: no such file. Fix: check the path"
            ) from None
        except UnicodeDecodeError:
            raise StackError(
                f"--from-file {from_file} is not UTF-8 text (Metaflow decodes secrets as UTF-8). "
                "Fix: store binary data base64-encoded"
            ) from None
    else:
        stream = stdin or sys.stdin
        if stream.isatty():
            value = getpass.getpass("Secret value (not shown): ", stream=sys.stderr)
        else:
            value = stream.read()
            value = value[:-1] if value.endswith("\n") else value
            value = value[:-1] if value.endswith("\r") else value
    if not value:
        raise StackError("the secret value is empty. Fix: pipe the value in, or use --from-file")
    if len(value.encode()) > VALUE_MAX:
        raise StackError(
            f"the secret value is {len(value.encode())} bytes; Secret Manager keeps at most "
            f"{VALUE_MAX}. Fix: store a smaller value (or a reference to a file in the datastore)"
        )
    return value


def set_secret(stack: Stack, name: str, value: str) -> Outcome:
    """Create the secret with its first version, or add a new version when it exists."""
    n, g = stack.names, stack.gcloud
    check_name(n, name)
    preflight(stack, "gcloud")
    stack.runner.add_secret(value)
    sid = secret_id(n, name)
    try:
        g.mutate(
            "secrets", "create", sid,
            "--replication-policy=automatic",
            "--data-file=-",
            f"--labels=stack={n.stack},managed-by=metaflow-gcp,kind=user-secret",
            stdin=value, fmt=None,
        )  # fmt: skip
        outcome = Outcome.CREATED
    except AlreadyExists:
        g.mutate("secrets", "versions", "add", sid, "--data-file=-", stdin=value, fmt=None)
        outcome = Outcome.UPDATED
    verb = "stored" if outcome is Outcome.CREATED else "stored a new version of"
    stack.console.print(
        f"[green]✔[/] {verb} secret {sid}. In a flow: "
        f'[bold]@secrets(sources=["{name}"])[/] sets the environment variable '
        f"{name.replace('-', '_')}."
    )
    return outcome


def list_secrets(stack: Stack) -> list[dict[str, Any]]:
    """The stack's user secrets: name, number of versions, created. Never a value."""
    n, g = stack.names, stack.gcloud
    preflight(stack, "gcloud")
    found = g.read("secrets", "list", dry=[]) or []  # the prefix, not a label, grants access
    ours = []
    for secret in found:
        sid = str(secret.get("name", "")).rsplit("/", 1)[-1]
        if sid.startswith(n.user_secret_prefix):
            ours.append((sid, secret))

    def versions(sid: str) -> int:
        listed = g.read("secrets", "versions", "list", sid, "--filter=state=ENABLED", dry=[])
        return len(listed or [])

    with ThreadPoolExecutor(max(1, min(8, len(ours)))) as pool:
        counts = list(pool.map(versions, [sid for sid, _ in ours]))
    rows = [
        {
            "name": sid[len(n.user_secret_prefix) :],
            "secret": sid,
            "versions": count,
            "created": secret.get("createTime", ""),
        }
        for (sid, secret), count in zip(ours, counts, strict=True)
    ]
    rows.sort(key=lambda row: str(row["name"]))
    return rows


def print_list(stack: Stack, rows: list[dict[str, Any]]) -> None:
    if not rows:
        stack.console.print(
            f"No user secrets in stack '{stack.names.stack}'. Add one: "
            "[bold]inv secrets.set NAME < value.txt[/]"
        )
        return
    from rich.table import Table

    table = Table(
        title=f"User secrets of stack '{stack.names.stack}' (values are never shown)",
        title_justify="left",
    )
    for column in ("name", "Secret Manager id", "versions", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["secret"], str(row["versions"]), row["created"])
    stack.console.print(table)
