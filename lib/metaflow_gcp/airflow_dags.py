"""Upload Airflow DAG files (as written by `python flow.py airflow create`) to the stack's Airflow.

The DAGs folder of the scheduler is a persistent volume, so a file copied there survives
restarts. Every file is checked locally first (exists, is Python, compiles, defines a DAG)
so that a typo costs one line of output, not a broken DAG in the Airflow UI. Each copy
lands under a temporary name Airflow ignores, is verified by checksum and is then renamed
into place, so the scheduler never parses a half-written or corrupted file.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from metaflow_gcp import kube_names
from metaflow_gcp.errors import CommandError, StackError
from metaflow_gcp.kube import Kubectl, pod_readiness
from metaflow_gcp.shell import Result

NAMESPACE = kube_names.AIRFLOW_NS
CONTAINER = "scheduler"
DAGS_DIR = "/opt/airflow/dags"
SCHEDULER_SELECTOR = "tier=airflow,component=scheduler,release=airflow"
DRY_RUN_POD = "<scheduler-pod>"
UP_HINT = "run `inv services.up --airflow`"

# Where the DAG class and the @dag decorator live in Airflow 2.x.
_DAG_CLASSES = frozenset({"airflow.DAG", "airflow.models.DAG", "airflow.models.dag.DAG"})
_DAG_DECORATORS = frozenset({"airflow.decorators.dag", "airflow.models.dag.dag"})
_STAR_EXPORTS = {
    "airflow": ("DAG",),
    "airflow.models": ("DAG",),
    "airflow.decorators": ("dag",),
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.py$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Uploaded:
    """One file now in Airflow's DAGs folder; `verified` is False only in a dry run."""

    local: Path
    pod: str
    remote: str
    sha256: str
    verified: bool

    def __str__(self) -> str:
        return f"{self.local} -> {self.pod}:{self.remote} (sha256 {self.sha256[:12]})"


# ---------------------------------------------------------------------------------------
# Local checks: no cluster needed, nothing imported or executed.


def check_dag_file(path: Path) -> None:
    """Raise StackError (one line naming the file) unless `path` is a Python file defining a DAG.

    The file is parsed and compiled but never imported: a DAG file imports Airflow,
    which need not be installed here, and running user code is not ours to do.
    """
    if not path.exists():
        raise StackError(f"{path}: no such file")
    if path.is_dir():
        raise StackError(
            f"{path}: is a folder, not a file (pass the folder to upload all its *.py)"
        )
    if not path.is_file():
        raise StackError(f"{path}: is not a regular file")
    if path.suffix != ".py":
        raise StackError(
            f"{path}: is not a .py file (Airflow only loads DAGs from Python files; "
            "Metaflow writes one with `python flow.py airflow create my_dag.py`)"
        )
    try:
        source = path.read_bytes()
    except OSError as error:
        raise StackError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        tree = ast.parse(source, filename=str(path))
        # The full compile also catches what the parser lets through ('return' outside a
        # function, misplaced 'nonlocal', ...): what Airflow would report as an import error.
        compile(tree, str(path), "exec", dont_inherit=True)
    except SyntaxError as error:
        where = f"line {error.lineno}: " if error.lineno else ""
        raise StackError(f"{path}: {where}{error.msg} (not valid Python)") from None
    except ValueError as error:  # e.g. null bytes in the source
        raise StackError(f"{path}: {error} (not valid Python)") from None
    problem = _dag_problem(tree)
    if problem:
        raise StackError(f"{path}: {problem}")


def _dag_problem(tree: ast.Module) -> str:
    """Why `tree` is not an Airflow DAG file, or '' if it defines one.

    Imports are collected from the whole file, not just the top: Metaflow's generated
    file imports DAG inside a method (`Workflow.compile`) and calls it there.
    """
    aliases = _import_aliases(tree)
    if not any(
        target.split(".")[0] == "airflow" for targets in aliases.values() for target in targets
    ):
        return (
            "is not an Airflow DAG file: it never imports airflow "
            "(Metaflow writes one with `python flow.py airflow create my_dag.py`)"
        )
    uses_sdk = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            targets = _qualified(node.func, aliases)
            if targets & _DAG_CLASSES:
                return ""
            uses_sdk = uses_sdk or any(t.startswith("airflow.sdk.") for t in targets)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                func = decorator.func if isinstance(decorator, ast.Call) else decorator
                targets = _qualified(func, aliases)
                if targets & _DAG_DECORATORS:
                    return ""
                uses_sdk = uses_sdk or any(t.startswith("airflow.sdk.") for t in targets)
    if uses_sdk:
        return "uses the Airflow 3 SDK (airflow.sdk), but this stack runs Airflow 2.11"
    return (
        "imports airflow but defines no DAG (expected a DAG(...) call, `with DAG(...)` "
        "or an @dag-decorated function, with DAG/dag imported from airflow)"
    )


def _import_aliases(tree: ast.Module) -> dict[str, set[str]]:
    """Local name -> the dotted names it may stand for (a set: scopes are not tracked)."""
    aliases: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases.setdefault(alias.asname, set()).add(alias.name)
                else:
                    top = alias.name.split(".")[0]
                    aliases.setdefault(top, set()).add(top)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.name == "*":
                    for name in _STAR_EXPORTS.get(node.module, ()):
                        aliases.setdefault(name, set()).add(f"{node.module}.{name}")
                else:
                    local = alias.asname or alias.name
                    aliases.setdefault(local, set()).add(f"{node.module}.{alias.name}")
    return aliases


def _qualified(expr: ast.expr, aliases: dict[str, set[str]]) -> set[str]:
    """`models.DAG` -> {'airflow.models.DAG'} after `from airflow import models`."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return set()
    rest = ".".join(reversed(parts))
    return {f"{base}.{rest}" if rest else base for base in aliases.get(expr.id, ())}


def check_dag_files(paths: Sequence[Path]) -> None:
    """Check every file; one line per bad file, all of them at once, before any cluster call."""
    problems: list[str] = []
    for path in paths:
        try:
            check_dag_file(path)
        except StackError as error:
            problems.append(error.one_line())
            continue
        if ":" in str(path):
            problems.append(
                f"{path}: kubectl cp cannot copy a path containing ':'; rename or move the file"
            )
    if problems:
        raise StackError("\n".join(problems))


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files stay as given; a folder becomes its *.py files (not recursive, hidden ones skipped).

    The result keeps the given order, without duplicates; the files are not checked here.
    """
    if not paths:
        raise StackError("no DAG file given (pass one or more .py files or a folder)")
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            members = sorted(
                p for p in path.glob("*.py") if not p.name.startswith(".") and p.is_file()
            )
            if not members:
                raise StackError(f"{path}: folder has no *.py files to upload")
        else:
            members = [path]
        for member in members:
            key = member.resolve()
            if key not in seen:
                seen.add(key)
                found.append(member)
    return found


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------
# Finding the scheduler


def find_scheduler_pod(
    kubectl: Kubectl, namespace: str = NAMESPACE, *, container: str = CONTAINER
) -> str:
    """The name of a Running scheduler pod whose containers are all Ready.

    The newest such pod wins (after a rollout the old one is on its way out); ties go to
    the name, so the choice never depends on the order kubectl lists pods in.
    A dry run lists the pods (the command is shown) and answers a placeholder.
    """
    return _pod_name(_find_scheduler(kubectl, namespace, container))


def _find_scheduler(kubectl: Kubectl, namespace: str, container: str) -> dict[str, Any]:
    found = kubectl.read(
        "get", "pods", "-l", SCHEDULER_SELECTOR, namespace=namespace, dry={"items": []}
    )
    if kubectl.dry_run:
        return {"metadata": {"name": DRY_RUN_POD}}
    pods = [p for p in (found or {}).get("items", []) if isinstance(p, dict)]
    if not pods:
        if kubectl.get("namespace", namespace) is None:
            raise StackError(
                f"Airflow is not deployed: namespace '{namespace}' does not exist in context "
                f"{kubectl.context}. Fix: {UP_HINT}"
            )
        raise StackError(
            f"Airflow is not deployed: no scheduler pod ({SCHEDULER_SELECTOR}) in namespace "
            f"'{namespace}'. Fix: {UP_HINT}"
        )
    ready = [p for p in pods if pod_readiness(p)[0]]
    if not ready:
        states = "; ".join(f"{_pod_name(p)} is {pod_readiness(p)[1]}" for p in _newest_first(pods))
        raise StackError(
            f"no Airflow scheduler pod is ready in namespace '{namespace}': {states}. "
            f"Fix: wait and retry (watch with `kubectl --context={kubectl.context} "
            f"--namespace={namespace} get pods -w`), or {UP_HINT} to repair the install"
        )
    pod = _newest_first(ready)[0]
    names = [c.get("name") for c in pod.get("spec", {}).get("containers", [])]
    if container not in names:
        raise StackError(
            f"scheduler pod {_pod_name(pod)} has no container '{container}' "
            f"(it has: {', '.join(str(n) for n in names) or 'none'})"
        )
    return pod


def _pod_name(pod: dict[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def _newest_first(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    # RFC 3339 UTC timestamps sort as text. Two passes give: newest first, then name A-Z.
    by_name = sorted(pods, key=_pod_name)
    return sorted(
        by_name,
        key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", "")),
        reverse=True,
    )


def _check_dags_volume(pod: dict[str, Any], container: str, dags_dir: str) -> None:
    """Refuse when the DAGs folder is not on a persistent volume: the upload would vanish."""
    spec = pod.get("spec") or {}
    mounts = next(
        (
            c.get("volumeMounts") or []
            for c in spec.get("containers", [])
            if c.get("name") == container
        ),
        [],
    )
    target = PurePosixPath(dags_dir)
    covering = [
        (len(where.parts), m)
        for m in mounts
        if (where := PurePosixPath(m.get("mountPath") or "/nowhere")) == target
        or where in target.parents
    ]
    mount = max(covering, key=lambda pair: pair[0])[1] if covering else None  # the deepest
    name = _pod_name(pod)
    fix = "Fix: enable dags.persistence in the Airflow values and " + UP_HINT
    if mount is None:
        raise StackError(
            f"{dags_dir} is not on a volume in pod {name} (container {container}): uploaded "
            f"DAGs would be lost when the pod restarts. {fix}"
        )
    if mount.get("readOnly"):
        raise StackError(f"{dags_dir} is mounted read-only in pod {name}. {fix}")
    volume: dict[str, Any] = next(
        (v for v in spec.get("volumes", []) if v.get("name") == mount.get("name")), {}
    )
    if "persistentVolumeClaim" not in volume:
        kinds = ", ".join(k for k in volume if k != "name") or "unknown"
        raise StackError(
            f"{dags_dir} in pod {name} is on a volume of type {kinds}, not a persistent volume "
            "claim: "
            f"uploaded DAGs would be lost when the pod restarts. {fix}"
        )


# ---------------------------------------------------------------------------------------
# Uploading


def upload_dags(
    kubectl: Kubectl,
    paths: Sequence[Path],
    *,
    namespace: str = NAMESPACE,
    dest_name: str | None = None,
    container: str = CONTAINER,
    dags_dir: str = DAGS_DIR,
) -> list[Uploaded]:
    """Check every file, then copy each into the scheduler's DAGs folder and verify it arrived.

    Nothing touches the cluster until all files pass the local checks. Per file:
    `kubectl cp` to a temporary name (not *.py, so Airflow ignores it), compare its
    sha256 inside the pod with the local one, then `mv` it into place (atomic: same folder).
    """
    plan = _plan(paths, dest_name, dags_dir)
    pod_doc = _find_scheduler(kubectl, namespace, container)
    if not kubectl.dry_run:
        _check_dags_volume(pod_doc, container, dags_dir)
    target = _Target(kubectl, _pod_name(pod_doc), namespace, container, dags_dir.rstrip("/"))
    done: list[Uploaded] = []
    for path, name, digest in plan:
        try:
            done.append(target.upload(path, name, digest))
        except StackError as error:
            if done:
                earlier = ", ".join(u.local.name for u in done)
                raise StackError(f"{error.one_line()} (already uploaded: {earlier})") from error
            raise
    return done


def _plan(
    paths: Sequence[Path], dest_name: str | None, dags_dir: str
) -> list[tuple[Path, str, str]]:
    """(local file, name in the DAGs folder, sha256) per file, after checking them all."""
    if not paths:
        raise StackError("no DAG file given (pass one or more .py files or a folder)")
    if dest_name is not None and len(paths) != 1:
        raise StackError(
            f"--dest-name names one file, but {len(paths)} files were given; "
            "rename the files locally or upload them one at a time"
        )
    if dest_name is not None and not _SAFE_NAME.match(dest_name):
        raise StackError(
            f"--dest-name '{dest_name}' must be a plain file name ending in .py "
            "(letters, digits, '_', '-', '.'; no folders, not hidden)"
        )
    check_dag_files(paths)

    plan: list[tuple[Path, str, str]] = []
    by_name: dict[str, Path] = {}
    for path in paths:
        name = dest_name or path.name
        if name in by_name:
            raise StackError(
                f"{path} and {by_name[name]} would both become {dags_dir}/{name}; "
                "rename one of them"
            )
        by_name[name] = path
        plan.append((path, name, file_sha256(path)))
    return plan


@dataclass(frozen=True)
class _Target:
    """The scheduler container that receives the files."""

    kubectl: Kubectl
    pod: str
    namespace: str
    container: str
    dags_dir: str

    def _exec(
        self, *command: str, mutating: bool, dry_stdout: str = "", check: bool = True
    ) -> Result:
        return self.kubectl.exec(
            self.pod,
            *command,
            container=self.container,
            namespace=self.namespace,
            mutating=mutating,
            dry_stdout=dry_stdout,
            check=check,
        )

    def upload(self, path: Path, name: str, digest: str) -> Uploaded:
        final = f"{self.dags_dir}/{name}"
        staging = f"{self.dags_dir}/.{name}.uploading"
        try:
            self.kubectl.copy_to(
                str(path), self.pod, staging, container=self.container, namespace=self.namespace
            )
        except CommandError as error:
            # No clean-up call: the cluster may be unreachable, and a partial staging file is
            # harmless (not *.py, so Airflow ignores it; the next upload overwrites it).
            raise StackError(
                f"{path}: copy to {self.pod}:{final} failed: {error.one_line()}"
            ) from error

        try:
            result = self._exec(
                "sha256sum", staging, mutating=False, dry_stdout=f"{digest}  {staging}\n"
            )
        except CommandError as error:
            raise StackError(
                f"{path}: could not verify the copy in {self.pod}: {error.one_line()}"
            ) from error
        remote = (result.stdout.split() or [""])[0].lower()
        if remote != digest:
            with contextlib.suppress(StackError):  # best effort; a leftover is ignored anyway
                self._exec("rm", "-f", staging, mutating=True, check=False)
            seen = remote[:12] if _SHA256.match(remote) else repr(result.stdout.strip()[:40])
            raise StackError(
                f"{path}: the copy in {self.pod} does not match the local file (sha256 {seen} "
                f"in the pod, {digest[:12]} here); nothing was replaced - upload it again"
            )

        try:
            self._exec("mv", "-f", staging, final, mutating=True)
        except CommandError as error:
            raise StackError(
                f"{path}: copied and verified, but moving it into place as {final} failed: "
                f"{error.one_line()}"
            ) from error
        return Uploaded(path, self.pod, final, digest, verified=not result.dry_run)
