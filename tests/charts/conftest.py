"""Helpers for the chart tests: render our charts with the real Helm engine, look inside them.

Rendering goes through helm_python (Helm's Go SDK in-process), so templates, values
coalescing and values.schema.json validation behave exactly as `helm template` would.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARTS_DIR = REPO_ROOT / "charts"
VALUES_DIR = REPO_ROOT / "values"
METAFLOW_CHART = CHARTS_DIR / "metaflow"
ARGO_EVENTS_CHART = CHARTS_DIR / "metaflow-argo-events"

# Kubernetes version the manifests are validated and linted against. 1.33 is the first release
# with native sidecars GA and is offered by GKE; kubernetes-validate ships its schemas.
KUBE_VERSION = "1.33.0"

Manifest = dict[str, Any]
Values = dict[str, Any]

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})

# How Helm splits a rendered file into manifests (releaseutil.SplitManifests): a "---" needs
# no whitespace after it, so "---apiVersion: v1" (what the argo charts' extraObjects template
# produces) still starts a new manifest. YAML itself would not split there.
HELM_SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")


@dataclass(frozen=True)
class Rendered:
    """One `helm template` run: the manifests plus the NOTES text."""

    manifests: list[Manifest]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        matches = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {m["metadata"]["name"] for m in self.of_kind(kind)}

    @property
    def text(self) -> str:
        """Everything Helm produced, as one YAML stream (plus NOTES)."""
        return yaml.safe_dump_all(self.manifests) + self.notes


def render_chart(
    chart_dir: Path,
    values: Values | None = None,
    *,
    release: str,
    namespace: str,
) -> Rendered:
    """Render a chart like `helm template RELEASE CHART -n NAMESPACE -f values`."""
    with helm_python.Chart.load(chart_dir) as chart:
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
    manifests: list[Manifest] = []
    notes = ""
    for path in sorted(files):
        if path.endswith("NOTES.txt"):
            notes += files[path]
            continue
        for chunk in HELM_SEPARATOR.split(files[path]):
            manifests.extend(doc for doc in yaml.safe_load_all(chunk) if doc)
    return Rendered(manifests=manifests, notes=notes)


def lint_chart(chart_dir: Path, values: Values | None = None, *, namespace: str) -> list[str]:
    """`helm lint --strict`: returns every warning or error (info messages are dropped)."""
    report = helm_python.lint(
        chart_dir,
        values,
        strict=True,
        namespace=namespace,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [str(e) for e in report["errors"]]
    problems += [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems


def schema_problem(manifest: Manifest) -> str | None:
    """Strict OpenAPI validation of one built-in object; None when it is valid.

    Raises SchemaNotFoundError for kinds with no bundled schema (custom resources).
    """
    try:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"{manifest['kind']}/{manifest['metadata']['name']} at {where}: {exc.message}"
    return None


def is_custom_resource(manifest: Manifest) -> bool:
    return str(manifest["apiVersion"]).split("/")[0].endswith("argoproj.io")


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: Manifest) -> Iterator[dict[str, Any]]:
    """Init containers (sidecars included) first, then app containers."""
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def all_containers(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, container) for every container of every workload."""
    for workload in rendered.manifests:
        if workload["kind"] in WORKLOAD_KINDS:
            for container in containers(workload):
                yield workload["metadata"]["name"], container


def container(workload: Manifest, name: str) -> dict[str, Any]:
    matches = [c for c in containers(workload) if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']} has no single container {name}"
    return matches[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Container env as {name: entry}."""
    return {e["name"]: e for e in c.get("env", [])}


def merged(base: Values, override: Values) -> Values:
    """Deep merge like Helm's values coalescing (maps merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="session")
def versions() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = load_yaml(VALUES_DIR / "versions.yaml")
    return data
