"""What each Helm release of the stack is: its chart (ours in charts/, or a pinned upstream
one from values/versions.yaml), its values file and the stack's values set on top.

services.up installs them through `ensure` and `uninstall`; the chart tests render them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from metaflow_gcp import kube_names
from metaflow_gcp.app import Stack
from metaflow_gcp.config import Names
from metaflow_gcp.errors import NotFound, StackError
from metaflow_gcp.graph import Outcome, StepRun
from metaflow_gcp.kube import Helm
from metaflow_gcp.kube_names import (
    AIRFLOW_NS,
    ARGO_EVENTS_NS,
    ARGO_NS,
    JOBSET_NS,
    METAFLOW_NS,
    Accounts,
)

# ---------------------------------------------------------------------------------------
# Where the charts and values files are


def repo_root(start: Path | None = None) -> Path:
    """The checkout holding charts/ and values/ (the package is installed editable from lib/)."""
    here = (start or Path(__file__)).resolve()
    for folder in (here, *here.parents):
        if (folder / "charts" / "metaflow" / "Chart.yaml").is_file() and (
            folder / "values" / "versions.yaml"
        ).is_file():
            return folder
    raise StackError(
        "cannot find the charts/ and values/ folders next to the metaflow_gcp package. "
        "Fix: run the tasks from the repository checkout (`pip install -e .` there)"
    )


@dataclass(frozen=True)
class Upstream:
    """One pinned upstream chart from values/versions.yaml."""

    repo: str
    chart: str
    version: str


def load_versions(root: Path) -> dict[str, Upstream]:
    """values/versions.yaml, checked: every entry needs repo, chart and an exact version."""
    import yaml

    path = root / "values" / "versions.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    pins: dict[str, Upstream] = {}
    for name in ("argo-workflows", "argo-events", "airflow", "jobset"):
        entry = data.get(name) if isinstance(data, dict) else None
        fields_ = {k: str((entry or {}).get(k) or "").strip() for k in ("repo", "chart", "version")}
        missing = [k for k, v in fields_.items() if not v]
        if missing:
            raise StackError(
                f"{path}: '{name}' lacks {', '.join(missing)}. Fix: pin repo, chart and an "
                "exact version for it"
            )
        pins[name] = Upstream(**fields_)
    return pins


@cache
def _chart_meta(chart_dir: Path) -> tuple[str, str]:
    import yaml

    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8")) or {}
    return str(meta["name"]), str(meta["version"])


def chart_checksum(chart_dir: Path) -> str:
    """A digest of every file of a local chart: a template edit without a version bump counts."""
    digest = hashlib.sha256()
    for path in sorted(chart_dir.rglob("*")):
        relative = path.relative_to(chart_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Releases

ValuePath = tuple[str, ...]

# values/argo-workflows.yaml leaves the workflow-level account to us: it carries the stack's
# name. Argo runs Metaflow's exit-hook agent pods as this account (charts/metaflow gives the
# steps' account the agent's RBAC and token Secret).
ARGO_WORKFLOW_ACCOUNT: ValuePath = ("controller", "workflowDefaults", "spec", "serviceAccountName")


def argo_workflows_set_string(names: Names) -> tuple[tuple[ValuePath, str], ...]:
    """The --set-string values of the argo-workflows release."""
    return ((ARGO_WORKFLOW_ACCOUNT, kube_names.Accounts.of(names).steps),)


@dataclass(frozen=True)
class Release:
    """One `helm upgrade --install`, and the user-supplied values it should leave behind."""

    name: str
    namespace: str
    chart: str  # a local chart's folder, or the upstream chart's name
    chart_name: str
    version: str
    repo: str = ""  # empty for a local chart; https:// (a chart repository) or oci:// (a registry)
    values_file: Path | None = None
    set_string: tuple[tuple[ValuePath, str], ...] = ()
    set_bool: tuple[tuple[ValuePath, bool], ...] = ()
    timeout_minutes: int = 10

    @property
    def local(self) -> bool:
        return not self.repo

    @property
    def chart_label(self) -> str:
        """How `helm list` shows the chart: NAME-VERSION."""
        return f"{self.chart_name}-{self.version}"

    @property
    def title(self) -> str:
        return f"release {self.name} ({self.namespace})"

    @property
    def oci(self) -> bool:
        return self.repo.startswith("oci://")

    def argv(self) -> list[str]:
        chart = f"{self.repo.rstrip('/')}/{self.chart}" if self.oci else self.chart
        if self.local:
            source = []
        elif self.oci:  # helm takes an OCI chart as one reference; --repo is for index.yaml repos
            source = [f"--version={self.version}"]
        else:
            source = [f"--repo={self.repo}", f"--version={self.version}"]
        values = [f"--values={self.values_file}"] if self.values_file else []
        sets: list[str] = []
        for path, text in self.set_string:
            sets += ["--set-string", f"{_set_key(path)}={_set_value(text)}"]
        for path, flag in self.set_bool:
            sets += ["--set", f"{_set_key(path)}={'true' if flag else 'false'}"]
        return [
            "upgrade",
            "--install",
            self.name,
            chart,
            *source,
            f"--namespace={self.namespace}",
            "--create-namespace",
            *values,
            *sets,
            "--wait",
            f"--timeout={self.timeout_minutes}m",
        ]

    def desired_values(self) -> dict[str, Any]:
        """What `helm get values` should show afterwards: the values file, then the --set's."""
        import yaml

        values: dict[str, Any] = {}
        if self.values_file:
            loaded = yaml.safe_load(self.values_file.read_text(encoding="utf-8"))
            values = loaded if isinstance(loaded, dict) else {}
        for path, text in self.set_string:
            _put(values, path, text)
        for path, flag in self.set_bool:
            _put(values, path, flag)
        return values


def _set_key(path: ValuePath) -> str:
    """Helm's --set path syntax: dots separate, so dots inside a key are escaped."""
    return ".".join(part.replace("\\", "\\\\").replace(".", "\\.") for part in path)


def _set_value(text: str) -> str:
    """Commas separate --set pairs and backslashes escape: quote both."""
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _put(values: dict[str, Any], path: ValuePath, value: Any) -> None:
    node = values
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def releases_for(
    stack: Stack, root: Path, pins: dict[str, Upstream], generation: int
) -> dict[str, Release]:
    """Every release the stack can have, with this stack's values filled in."""
    n = stack.names
    accounts = Accounts.of(n)
    charts, values = root / "charts", root / "values"

    def local(name: str, namespace: str = METAFLOW_NS, **kwargs: Any) -> Release:
        chart_dir = charts / name
        chart_name, version = _chart_meta(chart_dir)
        return Release(name, namespace, str(chart_dir), chart_name, version, **kwargs)

    def upstream(name: str, namespace: str, **kwargs: Any) -> Release:
        pin = pins[name]
        return Release(
            name,
            namespace,
            pin.chart,
            pin.chart,
            pin.version,
            repo=pin.repo,
            values_file=values / f"{name}.yaml",
            **kwargs,
        )

    found = [
        local(
            "metaflow",
            set_string=(
                (("serviceAccounts", "steps", "name"), accounts.steps),
                (("serviceAccounts", "steps", "gcpServiceAccount"), n.steps_sa),
                (("serviceAccounts", "services", "name"), accounts.services),
                (("serviceAccounts", "services", "gcpServiceAccount"), n.services_sa),
                (("database", "instanceConnectionName"), n.sql_connection_name(generation)),
                (("datastore", "sysroot"), n.datastore_root),
            ),
            set_bool=(
                (("argoWorkflows", "enabled"), stack.settings.deploy_argo),
                (("networkPolicy", "allowAirflow"), stack.settings.deploy_airflow),
            ),
        ),
        upstream("argo-workflows", ARGO_NS, set_string=argo_workflows_set_string(n)),
        upstream("argo-events", ARGO_EVENTS_NS),
        local("metaflow-argo-events"),
        airflow_side(stack, local, generation),
        # No Google identity for the scheduler: the step pods it launches have their own.
        upstream("airflow", AIRFLOW_NS, timeout_minutes=15),
        upstream("jobset", JOBSET_NS),
        local("metaflow-jobset", JOBSET_NS),
    ]
    return {release.name: release for release in found}


def airflow_side(stack: Stack, local: Callable[..., Release], generation: int) -> Release:
    """charts/metaflow-airflow for this stack: the proxy to its instance, its accounts."""
    n = stack.names
    accounts = Accounts.of(n)
    return local(
        "metaflow-airflow",
        AIRFLOW_NS,
        set_string=(
            (("database", "instanceConnectionName"), n.sql_connection_name(generation)),
            (("serviceAccounts", "dbProxy", "name"), accounts.airflow_db),
            (("serviceAccounts", "dbProxy", "gcpServiceAccount"), n.services_sa),
            (("serviceAccounts", "steps", "name"), accounts.steps),
            (("serviceAccounts", "steps", "gcpServiceAccount"), n.steps_sa),
        ),
    )


# ---------------------------------------------------------------------------------------
# Bringing a release to that state

# States in which Helm refuses another upgrade until someone looks.
_STUCK = {"pending-install", "pending-upgrade", "pending-rollback", "uninstalling"}
HELM_GRACE = 120.0  # seconds on top of helm's own --timeout before the runner gives up


def ensure(helm: Helm, release: Release, run: StepRun, *, files_unchanged: bool) -> Outcome:
    """`helm upgrade --install` unless it is deployed as wanted already (no churn on re-runs).

    files_unchanged: a local chart's files are those of the last install (a template edit
    without a version bump counts as a change).
    """
    listed = helm.release(release.name, release.namespace)
    status = str(listed.get("status") or "") if listed else ""
    if status == "uninstalled":  # kept history only; `upgrade --install` installs it anew
        listed, status = None, ""
    if status in _STUCK:
        raise StackError(_stuck_message(helm.context, release, status))
    if listed and _up_to_date(helm, release, listed, files_unchanged):
        return Outcome.KEPT
    verb = "upgrade" if listed else "install"
    run.before_change(f"{verb} {release.name} {release.version}")
    run.note(f"helm {verb}; waits up to {release.timeout_minutes}m for the pods")
    helm.run(*release.argv(), timeout=release.timeout_minutes * 60 + HELM_GRACE)
    return Outcome.UPDATED if listed else Outcome.CREATED


def uninstall(helm: Helm, name: str, namespace: str, run: StepRun) -> Outcome:
    run.before_change(f"uninstall {name}")
    try:
        helm.run(
            "uninstall",
            name,
            f"--namespace={namespace}",
            "--timeout=5m",
            timeout=5 * 60 + HELM_GRACE,
        )
    except NotFound:
        return Outcome.GONE
    return Outcome.DELETED


def _up_to_date(
    helm: Helm, release: Release, listed: dict[str, Any], files_unchanged: bool
) -> bool:
    """Deployed, same chart version, same chart files (local charts), same values."""
    if listed.get("status") != "deployed" or listed.get("chart") != release.chart_label:
        return False
    if release.local and not files_unchanged:
        return False
    current = helm.user_values(release.name, release.namespace)
    return _canonical(current) == _canonical(release.desired_values())


def _canonical(values: Any) -> str:
    return json.dumps(values or {}, sort_keys=True)


def _stuck_message(context: str, release: Release, status: str) -> str:
    helm = f"helm --kube-context={context}"
    if status == "pending-install":
        fix = f"`{helm} uninstall {release.name} --namespace={release.namespace}`"
    elif status == "uninstalling":
        fix = "wait for the uninstall to finish"
    else:
        fix = f"`{helm} rollback {release.name} --namespace={release.namespace}`"
    return (
        f"release {release.name} in {release.namespace} is '{status}' (an earlier helm run "
        f"was interrupted). Fix: {fix}, then run `inv services.up` again"
    )
