"""What `services.up` installs, rendered by the real Helm engine, and questions to ask of it.

The charts are rendered from the releases `releases.releases_for` builds (the same values
files and `--set` values services.up passes to Helm), so these objects follow the charts
and releases.py wherever they move. Each object is placed in its own `metadata.namespace`
or, failing that, the release's namespace, as Helm would install it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metaflow_gcp import releases
from metaflow_gcp.app import Stack
from tests.charts.conftest import render_chart

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Placed:
    """One rendered object and the namespace it lands in."""

    namespace: str
    manifest: Manifest

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def release_values(stack: Stack) -> dict[str, releases.Release]:
    """services.up's releases for this stack (generation 0: the first database)."""
    root = releases.repo_root()
    return releases.releases_for(stack, root, releases.load_versions(root), 0)


@dataclass(frozen=True)
class Installed:
    """The objects of our charts, as services.up would install them for one stack."""

    objects: tuple[Placed, ...]

    @classmethod
    def render(cls, stack: Stack) -> Installed:
        placed: list[Placed] = []
        # Our own charts (local folders); the upstream ones come from their chart repositories.
        for release in release_values(stack).values():
            if not release.local:
                continue
            rendered = render_chart(
                Path(release.chart),
                release.desired_values(),
                release=release.name,
                namespace=release.namespace,
            )
            for manifest in rendered.manifests:
                namespace = manifest["metadata"].get("namespace") or release.namespace
                placed.append(Placed(namespace, manifest))
        return cls(tuple(placed))

    def of_kind(self, kind: str, namespace: str | None = None) -> list[Placed]:
        return [
            o
            for o in self.objects
            if o.kind == kind and (namespace is None or o.namespace == namespace)
        ]

    def find(self, kind: str, name: str, namespace: str) -> Placed | None:
        matches = [o for o in self.of_kind(kind, namespace) if o.name == name]
        assert len(matches) <= 1, f"{kind} {namespace}/{name} rendered {len(matches)} times"
        return matches[0] if matches else None

    def service_for_url(self, url: str) -> tuple[Placed | None, int | None, str]:
        """The Service an in-cluster URL names (SERVICE.NAMESPACE.svc.cluster.local), port, path."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        assert host.endswith(".svc.cluster.local"), f"{url} is not an in-cluster Service URL"
        name, namespace = host.removesuffix(".svc.cluster.local").split(".")
        return self.find("Service", name, namespace), parts.port, parts.path

    def rules_for(self, namespace: str, account: tuple[str, str]) -> Iterator[dict[str, Any]]:
        """Every RBAC rule that applies in `namespace` to the ServiceAccount (ns, name)."""
        sa_ns, sa_name = account
        for binding in self.of_kind("RoleBinding", namespace):
            subjects = binding.manifest.get("subjects") or []
            if not any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == sa_name
                and s.get("namespace", binding.namespace) == sa_ns
                for s in subjects
            ):
                continue
            ref = binding.manifest["roleRef"]
            role = (
                self.find("Role", ref["name"], namespace)
                if ref["kind"] == "Role"
                else next((o for o in self.of_kind("ClusterRole") if o.name == ref["name"]), None)
            )
            assert role is not None, f"RoleBinding {binding.name} names a {ref} nobody renders"
            yield from role.manifest.get("rules") or []

    def allows(
        self, account: tuple[str, str], verb: str, group: str, resource: str, namespace: str
    ) -> bool:
        """Would the API server let this ServiceAccount `verb` `resource` in `namespace`?"""

        def has(values: list[str], wanted: str) -> bool:
            return wanted in values or "*" in values

        return any(
            has(rule.get("apiGroups", []), group)
            and has(rule.get("resources", []), resource)
            and has(rule.get("verbs", []), verb)
            and not rule.get("resourceNames")
            for rule in self.rules_for(namespace, account)
        )


def workflow_default_account(stack: Stack) -> str | None:
    """The account Argo gives a Workflow that names none (argo-workflows' workflowDefaults)."""
    values = release_values(stack)["argo-workflows"].desired_values()
    spec = ((values.get("controller") or {}).get("workflowDefaults") or {}).get("spec") or {}
    account = spec.get("serviceAccountName")
    return str(account) if account else None
