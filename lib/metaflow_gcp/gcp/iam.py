"""Service accounts and their least-privilege roles.

Project bindings are written as one policy edit (read, add what is missing, write
with the etag), not one `add-iam-policy-binding` per role: fewer calls, and no
two edits of ours can race each other. A concurrent edit by someone else makes the
write fail with ABORTED; we re-read and try again.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaflow_gcp.config import Names
from metaflow_gcp.errors import (
    AlreadyExists,
    ConcurrentChange,
    NotFound,
    NotYetPropagated,
    StackError,
)
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.gcp.operations import RetryOn, retry
from metaflow_gcp.graph import Outcome, StepRun

WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
NEW_ACCOUNT_GRACE = 90.0  # a new service account can take about a minute to be usable
POLICY_ATTEMPTS = 9


class _Written(Exception):
    """A policy write went through: read once more to see it (and anything that raced it)."""


# The races of a read-modify-write on an IAM policy, and what each one waits for.
RE_READ = RetryOn(ConcurrentChange, pause=0, note="the policy changed under us; re-reading")
_VERIFY = RetryOn(_Written, pause=0)
NEW_ACCOUNTS = RetryOn(
    NotYetPropagated,
    pause=5,
    within=NEW_ACCOUNT_GRACE,
    note="waiting for new service accounts to become usable",
)


@dataclass(frozen=True)
class Condition:
    title: str
    expression: str
    description: str = ""

    def as_json(self) -> dict[str, str]:
        found = {"title": self.title, "expression": self.expression}
        if self.description:
            found["description"] = self.description
        return found


@dataclass(frozen=True)
class Binding:
    role: str
    member: str
    condition: Condition | None = None


def accounts(n: Names) -> dict[str, str]:
    """Account id -> display name, for the three accounts the stack owns."""
    return {
        n.services_sa_id: f"Metaflow services ({n.stack}): metadata DB, UI",
        n.steps_sa_id: f"Metaflow steps ({n.stack}): user code",
        n.node_sa_id: f"GKE nodes of Metaflow ({n.stack})",
    }


# In a dry run, or before the first run read it, the project number is not known.
UNKNOWN_PROJECT_NUMBER = "PROJECT_NUMBER"


def _datastore(n: Names, purpose: str) -> Condition:
    return Condition(
        f"metaflow-{n.stack}-datastore-only",
        f'resource.name == "projects/_/buckets/{n.data_bucket}" || '
        f'resource.name.startsWith("projects/_/buckets/{n.data_bucket}/")',
        purpose,
    )


def user_secrets_condition(n: Names, project_number: str) -> Condition:
    """Secret Manager names resources by project number, never by id."""
    return Condition(
        f"metaflow-{n.stack}-user-secrets-only",
        f'resource.name.startsWith("projects/{project_number}/secrets/{n.user_secret_prefix}")',
        "user steps may read this stack's user secrets only",
    )


def project_bindings(n: Names, project_number: str) -> list[Binding]:
    """Least privilege, one identity per trust level.

    The services (metadata service, UI backend) reach Cloud SQL and read artifacts; user
    steps read and write the datastore and read the stack's user secrets, and cannot reach
    the database; the nodes get the node basics.
    """
    services = f"serviceAccount:{n.services_sa}"
    steps = f"serviceAccount:{n.steps_sa}"
    return [
        Binding(
            "roles/cloudsql.client",
            services,
            Condition(
                f"metaflow-{n.stack}-sql-only",
                'resource.service == "sqladmin.googleapis.com" && resource.name.startsWith('
                f'"projects/{n.project}/instances/{n.sql_prefix}")',
                "the Cloud SQL proxy may connect to this stack's instances only",
            ),
        ),
        Binding(
            "roles/storage.objectViewer",
            services,
            _datastore(n, "the UI backend may read artifacts in its own datastore bucket only"),
        ),
        Binding(
            "roles/storage.objectUser",
            steps,
            _datastore(n, "user steps may read and write objects in their datastore bucket only"),
        ),
        Binding(
            "roles/secretmanager.secretAccessor",
            steps,
            user_secrets_condition(n, project_number),
        ),
        Binding("roles/container.defaultNodeServiceAccount", f"serviceAccount:{n.node_sa}"),
    ]


def project_number(gcloud: Gcloud, n: Names) -> str:
    """The number Secret Manager (and IAM conditions on it) name the project by."""
    found = gcloud.read(
        "projects", "describe", n.project, dry={"projectNumber": UNKNOWN_PROJECT_NUMBER}
    )
    return str(found["projectNumber"])


# -- service accounts -------------------------------------------------------------------


def existing_accounts(gcloud: Gcloud) -> set[str]:
    found = gcloud.read("iam", "service-accounts", "list", dry=[]) or []
    return {str(a["email"]) for a in found}


def ensure_accounts(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    have = set() if cold else existing_accounts(gcloud)
    todo = {
        account_id: display
        for account_id, display in accounts(n).items()
        if f"{account_id}@{n.project}.iam.gserviceaccount.com" not in have
    }
    if not todo:
        return Outcome.KEPT
    run.before_change(f"create service accounts {', '.join(todo)}")
    made = 0
    for account_id, display in todo.items():
        try:
            gcloud.mutate(
                "iam", "service-accounts", "create", account_id, f"--display-name={display}"
            )
            made += 1
        except AlreadyExists:
            pass
    return Outcome.CREATED if made else Outcome.KEPT


# -- policy edits -----------------------------------------------------------------------


def _condition_key(c: dict[str, Any] | None) -> tuple[str, str] | None:
    return (c.get("title", ""), c.get("expression", "")) if c else None


def missing_bindings(policy: dict[str, Any], wanted: list[Binding]) -> list[Binding]:
    present = {
        (b["role"], member, _condition_key(b.get("condition")))
        for b in policy.get("bindings", [])
        for member in b.get("members", [])
    }
    return [
        w
        for w in wanted
        if (w.role, w.member, _condition_key(w.condition.as_json() if w.condition else None))
        not in present
    ]


def with_bindings(policy: dict[str, Any], add: list[Binding]) -> dict[str, Any]:
    """A copy of `policy` with `add` merged in; version 3 because conditions need it."""
    result: dict[str, Any] = json.loads(json.dumps(policy))
    bindings: list[dict[str, Any]] = result.setdefault("bindings", [])
    for new in add:
        condition = new.condition.as_json() if new.condition else None
        for existing in bindings:
            if existing["role"] == new.role and _condition_key(
                existing.get("condition")
            ) == _condition_key(condition):
                if new.member not in existing.setdefault("members", []):
                    existing["members"].append(new.member)
                break
        else:
            entry: dict[str, Any] = {"role": new.role, "members": [new.member]}
            if condition:
                entry["condition"] = condition
            bindings.append(entry)
    result["version"] = 3
    return result


def _holds(binding: dict[str, Any], role: str | None) -> bool:
    """Whether a binding is one `remove_members` edits: any, or `role` without a condition."""
    return role is None or (binding.get("role") == role and not binding.get("condition"))


def without_members(
    policy: dict[str, Any], members: set[str], *, role: str | None = None
) -> dict[str, Any]:
    """A copy of `policy` without `members` (in bindings of `role` only, when given)."""
    result: dict[str, Any] = json.loads(json.dumps(policy))
    kept = []
    for binding in result.get("bindings", []):
        if _holds(binding, role):
            binding["members"] = [m for m in binding.get("members", []) if m not in members]
        if binding.get("members"):
            kept.append(binding)
    result["bindings"] = kept
    result["version"] = 3
    return result


def remove_members(
    gcloud: Gcloud,
    get: list[str],
    target: list[str],
    members: set[str],
    run: StepRun,
    *,
    role: str | None = None,
    attempts: int = 5,
) -> bool:
    """Take `members` out of a resource's IAM policy; True if it changed.

    Read, edit, write with the etag; when someone else wrote in between (ABORTED), read
    again. A dry run shows the read and the write.
    """
    tries = 0

    def once() -> bool:
        nonlocal tries
        tries += 1
        policy = gcloud.read(*get, dry={}) or {}
        present = members & {
            m for b in policy.get("bindings", []) if _holds(b, role) for m in b.get("members", [])
        }
        if not present and not gcloud.dry_run:
            return tries > 1
        what = f"{role} of " if role else "the IAM bindings of "
        run.before_change(f"remove {what}{', '.join(sorted(present or members))}", new=False)
        set_policy(gcloud, target, without_members(policy, members, role=role))
        return True

    try:
        return retry(once, RE_READ, run=run, attempts=attempts)
    except ConcurrentChange:
        raise StackError(
            f"could not update the IAM policy of {target[-1]} after {attempts} tries"
        ) from None


def set_policy(gcloud: Gcloud, target: list[str], policy: dict[str, Any]) -> None:
    """`gcloud ... set-iam-policy TARGET FILE` from a temp file (policies hold no secrets)."""
    if gcloud.dry_run:  # show the command's shape, not a temp path that won't exist
        gcloud.mutate(*target[:-1], "set-iam-policy", target[-1], "POLICY.json")
        return
    with tempfile.TemporaryDirectory(prefix="mf-iam-") as tmp:
        path = Path(tmp) / "policy.json"
        path.write_text(json.dumps(policy), encoding="utf-8")
        gcloud.mutate(*target[:-1], "set-iam-policy", target[-1], str(path))


def edit_policy(
    gcloud: Gcloud,
    get: list[str],
    target: list[str],
    wanted: list[Binding],
    run: StepRun,
    *,
    what: str,
) -> Outcome:
    """Add `wanted` to a resource's IAM policy: read, merge, write with etag; retry the races."""
    tries = 0

    def once() -> Outcome:
        """One read, merge and write; the next call reads again to see the write took."""
        nonlocal tries
        tries += 1
        policy = gcloud.read(*get, dry={}) or {}
        add = missing_bindings(policy, wanted)
        if not add:
            return Outcome.KEPT if tries == 1 else Outcome.UPDATED
        run.before_change(f"grant {', '.join(sorted({b.role for b in add}))} ({what})", new=False)
        set_policy(gcloud, target, with_bindings(policy, add))
        if gcloud.dry_run:
            return Outcome.UPDATED
        raise _Written

    try:
        return retry(once, _VERIFY, RE_READ, NEW_ACCOUNTS, run=run, attempts=POLICY_ATTEMPTS)
    except (_Written, ConcurrentChange):
        raise StackError(
            f"could not update the IAM policy ({what}) after {POLICY_ATTEMPTS} tries"
        ) from None


def project_policy(gcloud: Gcloud, n: Names) -> dict[str, Any]:
    return dict(gcloud.read(*_project_policy_args(n), dry={}) or {})


def prime_project_policy(gcloud: Gcloud, n: Names, policy: dict[str, Any]) -> None:
    """The next read of the project policy answers with `policy` (read a moment ago)."""
    gcloud.prime(policy, *_project_policy_args(n))


def _project_policy_args(n: Names) -> list[str]:
    return ["projects", "get-iam-policy", n.project]


def ensure_project_bindings(
    gcloud: Gcloud, n: Names, run: StepRun, *, project_number: str
) -> Outcome:
    return edit_policy(
        gcloud,
        _project_policy_args(n),
        ["projects", n.project],
        project_bindings(n, project_number),
        run,
        what=f"project {n.project}",
    )


def workload_identity_bindings(n: Names, ksas: list[tuple[str, str]]) -> list[Binding]:
    """The members that let these Kubernetes service accounts (namespace, name) act as a GSA."""
    return [
        Binding(WORKLOAD_IDENTITY_USER, f"serviceAccount:{n.workload_pool}[{ns}/{ksa}]")
        for ns, ksa in ksas
    ]


def _account_policy(gsa_email: str) -> tuple[list[str], list[str]]:
    return (
        ["iam", "service-accounts", "get-iam-policy", gsa_email],
        ["iam", "service-accounts", gsa_email],
    )


def ensure_workload_identity(
    gcloud: Gcloud, n: Names, gsa_email: str, ksas: list[tuple[str, str]], run: StepRun
) -> Outcome:
    """Let exactly these (namespace, KSA) pairs act as `gsa_email` (adds what is missing)."""
    get, target = _account_policy(gsa_email)
    return edit_policy(
        gcloud,
        get,
        target,
        workload_identity_bindings(n, ksas),
        run,
        what=f"Workload Identity on {gsa_email.split('@', maxsplit=1)[0]}",
    )


def prune_workload_identity(
    gcloud: Gcloud, n: Names, gsa_email: str, ksas: list[tuple[str, str]], run: StepRun
) -> Outcome:
    """Take these (namespace, KSA) members off `gsa_email`; GONE when the account is gone."""
    if not gcloud.dry_run and gsa_email not in existing_accounts(gcloud):
        return Outcome.GONE
    get, target = _account_policy(gsa_email)
    members = {b.member for b in workload_identity_bindings(n, ksas)}
    changed = remove_members(gcloud, get, target, members, run, role=WORKLOAD_IDENTITY_USER)
    return Outcome.DELETED if changed else Outcome.KEPT


def remove_project_members(gcloud: Gcloud, n: Names, emails: list[str], run: StepRun) -> bool:
    """Every project binding of these accounts, conditional or not; True if any went."""
    return remove_members(
        gcloud,
        _project_policy_args(n),
        ["projects", n.project],
        {f"serviceAccount:{e}" for e in emails},
        run,
    )


def delete_accounts(gcloud: Gcloud, emails: list[str], run: StepRun) -> Outcome:
    """Delete those of `emails` that exist (a dry run shows them all)."""
    have = set() if gcloud.dry_run else existing_accounts(gcloud)
    ours = [e for e in emails if gcloud.dry_run or e in have]
    if not ours:
        return Outcome.GONE
    run.before_change(f"delete service accounts {', '.join(ours)}", new=False)
    for email in ours:
        try:
            gcloud.mutate("iam", "service-accounts", "delete", email, "--quiet", fmt=None)
        except NotFound:
            continue
    return Outcome.DELETED


def retire_legacy_account(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """The one `mf-<stack>-workload` account of earlier versions: unbind it, then delete it.

    Call it only once nothing runs as it any more (services.up, after the releases moved).
    """
    if not gcloud.dry_run and n.legacy_workload_sa not in existing_accounts(gcloud):
        return Outcome.GONE
    remove_project_members(gcloud, n, [n.legacy_workload_sa], run)
    return delete_accounts(gcloud, [n.legacy_workload_sa], run)
