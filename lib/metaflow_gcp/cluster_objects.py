"""The Kubernetes objects services.up keeps itself, beside the Helm releases: namespaces with
their Pod Security labels, Secrets made from Secret Manager (handed to kubectl on stdin,
never on disk), and the clean-up of what earlier versions left behind.

Secrets are only ever asked for their name or one annotation, so neither their data nor
an annotation that may mirror it (kubectl's last-applied-configuration) is read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from metaflow_gcp import kube_names
from metaflow_gcp.errors import AlreadyExists, NotFound
from metaflow_gcp.graph import Outcome, StepRun
from metaflow_gcp.kube import Kubectl
from metaflow_gcp.kube_names import METAFLOW_NS
from metaflow_gcp.shell import Result

MANAGED_LABELS = {"app.kubernetes.io/managed-by": "metaflow-gcp"}
# Which Secret Manager version a Secret was made from. Only `.` (not `-` or `/`) ends a
# field in kubectl's jsonpath, so this key is read as `{.metadata.annotations.<key>}`.
VERSION_ANNOTATION = "metaflow-gcp/secret-version"
# Earlier versions kept the DB Secret in METAFLOW_NS, where user steps run, and ran services
# and steps as one KSA there; an upgrade removes both once the release has moved off them.
LEGACY_DB_SECRET_NS = METAFLOW_NS
LEGACY_KSA = "metaflow"
# The NATS StatefulSet the Argo Events controller makes for the EventBus ("eventbus-<bus>-js").
EVENT_BUS_STATEFULSET = f"eventbus-{kube_names.EVENT_BUS}-js"


# -- namespaces -------------------------------------------------------------------------------


def ensure_namespace(kubectl: Kubectl, name: str, run: StepRun) -> Outcome:
    """The namespace with its Pod Security labels: server-side applied when one is off.

    Applying only our labels (as our field manager) leaves every other label alone, and
    labels a namespace an earlier version or a Helm `--create-namespace` made.
    """
    wanted = kube_names.pod_security_labels(name)
    current = kubectl.get("namespace", name)
    metadata = current.get("metadata") if current else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    have = labels if isinstance(labels, dict) else {}
    if current is not None and all(have.get(k) == v for k, v in wanted.items()):
        return Outcome.KEPT
    enforce = wanted["pod-security.kubernetes.io/enforce"]
    verb = "label" if current is not None else "create"
    run.before_change(f"{verb} namespace {name} (Pod Security: enforce {enforce})")
    kubectl.apply_stdin(namespace_manifest(name, wanted))
    return Outcome.UPDATED if current is not None else Outcome.CREATED


def namespace_manifest(name: str, labels: dict[str, str]) -> str:
    """A Namespace with the labels this tool owns, as JSON for `kubectl apply -f -`."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {**MANAGED_LABELS, **labels}},
        }
    )


# -- Secrets -----------------------------------------------------------------------------------


def secret_manifest(
    name: str, namespace: str, data: dict[str, str], *, annotations: dict[str, str] | None = None
) -> str:
    """A Secret as JSON for `kubectl ... -f -`: built in memory, handed over on stdin only."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": MANAGED_LABELS}
    if annotations:
        metadata["annotations"] = annotations
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


def secret_annotation(kubectl: Kubectl, namespace: str, name: str, key: str) -> str | None:
    """One annotation of a Secret; None when there is no such Secret."""
    result = _secret_field(kubectl, namespace, name, f".metadata.annotations.{key}")
    return None if result is None or result.dry_run else result.stdout.strip()


def secret_exists(kubectl: Kubectl, namespace: str, name: str) -> bool:
    result = _secret_field(kubectl, namespace, name, ".metadata.name")
    return result is not None and not result.dry_run and result.stdout.strip() == name


def _secret_field(kubectl: Kubectl, namespace: str, name: str, path: str) -> Result | None:
    try:
        return kubectl.run(
            "get",
            "secret",
            name,
            "-o",
            f"jsonpath={{{path}}}",
            namespace=namespace,
            mutating=False,
        )
    except NotFound:
        return None


def create_secret_once(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    make: Callable[[], dict[str, str]],
    run: StepRun,
) -> bool:
    """Create Secret `name` from `make()` unless it exists; True if we made it.

    For values made here that must never change once made (a session key): an existing
    Secret, ours or one another run made a moment ago, is kept as it is.
    """
    if secret_exists(kubectl, namespace, name):
        return False
    run.before_change(f"create Secret {name}")
    data = make()
    try:
        kubectl.run(
            "create", "-f", "-", namespace=namespace, stdin=secret_manifest(name, namespace, data)
        )
    except AlreadyExists:
        return False
    return True


# -- what earlier versions left ----------------------------------------------------------------


def remove_legacy_objects(kubectl: Kubectl, db_secret: str, run: StepRun) -> Outcome:
    """After release metaflow moved: the old DB Secret and the old shared KSA go.

    The Secret went with nothing (services.up wrote it, Helm never owned it). The KSA is
    normally deleted by the Helm upgrade; if it is still there, it goes once no running
    pod uses it (a workflow started before the upgrade), else a later run removes it.
    """
    removed = False
    if secret_exists(kubectl, LEGACY_DB_SECRET_NS, db_secret):
        run.before_change(f"delete Secret {LEGACY_DB_SECRET_NS}/{db_secret}")
        _delete(kubectl, "secret", db_secret, LEGACY_DB_SECRET_NS)
        removed = True
    if kubectl.get("serviceaccount", LEGACY_KSA, namespace=METAFLOW_NS) is not None:
        users = pods_running_as(kubectl, LEGACY_KSA, METAFLOW_NS)
        if users:
            run.note(
                f"kept ServiceAccount {METAFLOW_NS}/{LEGACY_KSA}: {len(users)} pod(s) still "
                f"run as it ({', '.join(users[:3])}); the next `inv services.up` removes it"
            )
        else:
            run.before_change(f"delete ServiceAccount {METAFLOW_NS}/{LEGACY_KSA}")
            _delete(kubectl, "serviceaccount", LEGACY_KSA, METAFLOW_NS)
            removed = True
    return Outcome.DELETED if removed else Outcome.KEPT


def pods_running_as(kubectl: Kubectl, account: str, namespace: str) -> list[str]:
    """Names of the pods of `namespace` that run as `account` and have not finished."""
    found = kubectl.read("get", "pods", namespace=namespace, dry={"items": []})
    items = found.get("items") if isinstance(found, dict) else None
    return [
        str(pod.get("metadata", {}).get("name"))
        for pod in items or []
        if pod.get("spec", {}).get("serviceAccountName") == account
        and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]


def ensure_event_bus_on_disks(kubectl: Kubectl, run: StepRun) -> Outcome:
    """Stacks made before the EventBus kept its streams on persistent disks have a NATS
    StatefulSet without volumeClaimTemplates, a field Kubernetes never lets change, so
    the controller's update of it fails. Deleting it lets the controller create it again
    with the disks; events not yet consumed (they were in an emptyDir) are lost, as they
    would be whenever a NATS pod moved."""
    current = kubectl.get("statefulset", EVENT_BUS_STATEFULSET, namespace=METAFLOW_NS)
    spec = current.get("spec") if current else None
    if not isinstance(spec, dict) or spec.get("volumeClaimTemplates"):
        return Outcome.KEPT  # none yet (the controller makes it with disks), or on disks
    run.before_change(f"recreate StatefulSet {EVENT_BUS_STATEFULSET} with disks", new=False)
    _delete(kubectl, "statefulset", EVENT_BUS_STATEFULSET, METAFLOW_NS)
    run.note("the Argo Events controller recreates it with one disk per NATS server")
    return Outcome.UPDATED


def _delete(kubectl: Kubectl, kind: str, name: str, namespace: str) -> None:
    kubectl.run("delete", kind, name, "--ignore-not-found", namespace=namespace)
