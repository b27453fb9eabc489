"""Every name the cluster side of a stack uses, in one place.

Namespaces, Kubernetes service accounts, Helm releases and the order they go, Services,
ports and the local URLs a person opens through `inv port-forward`. The charts and the
values files use the same names (charts/README.md); tests cross-check them with what the
real Metaflow client emits.

Two namespaces keep user code apart from the services:

- METAFLOW_NS runs user code: Metaflow step pods, Argo workflows, sensors and JobSets.
  It holds no credential of the services.
- SERVICES_NS runs the metadata service, the UI backend and the UI, and holds the
  database password Secret. No user step starts a pod there, so none can mount it.

Kubernetes service accounts carry the stack's name: Workload Identity maps
`PROJECT.svc.id.goog[NAMESPACE/KSA]` to a Google account for every cluster of the
project, so names shared by two stacks would let one stack's pods act as the other's.
"""

from __future__ import annotations

from dataclasses import dataclass

from metaflow_gcp.config import Names

METAFLOW_NS = "metaflow"
SERVICES_NS = "metaflow-services"
ARGO_NS = "argo"
ARGO_EVENTS_NS = "argo-events"
AIRFLOW_NS = "airflow"
JOBSET_NS = "jobset-system"

# (release, namespace holding its Helm record) per switch, in the order they are removed:
# what depends on a controller goes before the controller.
ARGO_RELEASES: tuple[tuple[str, str], ...] = (
    ("metaflow-argo-events", METAFLOW_NS),
    ("argo-events", ARGO_EVENTS_NS),
    ("argo-workflows", ARGO_NS),
)
# Airflow first: its pods use the proxy and the accounts of metaflow-airflow until they are gone.
AIRFLOW_RELEASES: tuple[tuple[str, str], ...] = (
    ("airflow", AIRFLOW_NS),
    ("metaflow-airflow", AIRFLOW_NS),  # Airflow's DB proxy, KSAs, NetworkPolicies
)
JOBSET_RELEASES: tuple[tuple[str, str], ...] = (
    ("metaflow-jobset", JOBSET_NS),  # jobset-system's NetworkPolicies
    ("jobset", JOBSET_NS),
)
# Every release, in the order teardown removes them: our services last.
RELEASES: tuple[tuple[str, str], ...] = (
    *AIRFLOW_RELEASES,
    *ARGO_RELEASES,
    *JOBSET_RELEASES,
    ("metaflow", METAFLOW_NS),
)
# Every namespace the stack owns (teardown deletes them; services.up labels them).
NAMESPACES: tuple[str, ...] = (
    AIRFLOW_NS,
    ARGO_NS,
    ARGO_EVENTS_NS,
    JOBSET_NS,
    METAFLOW_NS,
    SERVICES_NS,
)

# Services and their in-cluster ports (charts/metaflow).
METADATA_SERVICE = "metadata-service"
METADATA_PORT = 8080
UI_BACKEND_SERVICE = "metaflow-ui-backend"
UI_BACKEND_PORT = 8083
UI_SERVICE = "metaflow-ui"
UI_PORT = 3000
ARGO_SERVER_SERVICE = "argo-workflows-server"
ARGO_SERVER_PORT = 2746
# charts/metaflow-argo-events: the webhook EventSource, its Service and the event it takes.
EVENT_SOURCE = "argo-events-webhook"
EVENT_SOURCE_SERVICE = f"{EVENT_SOURCE}-eventsource-svc"
EVENT_NAME = "metaflow-event"
EVENT_BUS = "default"
SENSOR_KSA = "operate-workflow-sa"
WEBHOOK_PORT = 12000
AIRFLOW_WEBSERVER_SERVICE = "airflow-webserver"
AIRFLOW_WEBSERVER_PORT = 8080

# What a person opens on their own machine; `localhost`, which is also the origin the UI
# backend accepts cross-origin calls from (charts/metaflow ui.corsOrigin).
LOCAL_HOST = "localhost"
LOCAL_PORTS = {
    "metadata": METADATA_PORT,
    "ui-backend": UI_BACKEND_PORT,
    "ui": UI_PORT,
    "argo": ARGO_SERVER_PORT,
    "webhook": WEBHOOK_PORT,
    "airflow": 9090,  # not 8080: the metadata service has it
}


def local_url(what: str, path: str = "") -> str:
    return f"http://{LOCAL_HOST}:{LOCAL_PORTS[what]}{path}"


def in_cluster_url(service: str, namespace: str, port: int, path: str = "") -> str:
    return f"http://{service}.{namespace}.svc.cluster.local:{port}{path}"


@dataclass(frozen=True)
class Accounts:
    """The Kubernetes service accounts of one stack and the Google accounts they act as."""

    steps: str  # user code, in METAFLOW_NS (and AIRFLOW_NS for Airflow's step pods)
    services: str  # the metadata service, UI backend and UI, in SERVICES_NS
    airflow_db: str  # the Cloud SQL Auth Proxy in front of Airflow's database, in AIRFLOW_NS

    @classmethod
    def of(cls, names: Names) -> Accounts:
        base = f"mf-{names.stack}"
        return cls(
            steps=f"{base}-steps", services=f"{base}-services", airflow_db=f"{base}-airflow-db"
        )


# Pod Security admission: the level each namespace enforces. Every namespace also warns and
# audits at `restricted`, so what keeps a namespace below it shows in kubectl and the audit log.
POD_SECURITY_VERSION = "v1.33"  # pinned: a Kubernetes upgrade does not tighten it by surprise
POD_SECURITY: dict[str, str] = {
    # Metaflow's step pods (and Argo's and Airflow's pods running them) set no securityContext.
    METAFLOW_NS: "baseline",
    # The stock metadata service image only runs as uid 0 (charts/metaflow values.yaml);
    # `restricted` requires runAsNonRoot. The UI and the proxies would pass it.
    SERVICES_NS: "baseline",
    # Chart 0.47.5 runs controller and server non-root without privileges, but sets no
    # seccompProfile; `restricted` requires one (values/argo-workflows.yaml may add it).
    ARGO_NS: "baseline",
    # Chart 2.4.22 sets no pod or container securityContext at all.
    ARGO_EVENTS_NS: "baseline",
    # Airflow's own pods and Metaflow's step pods run side by side; the steps set none.
    AIRFLOW_NS: "baseline",
    # Chart 0.12.0: runAsNonRoot and RuntimeDefault seccomp on the pod, no capability.
    JOBSET_NS: "restricted",
}


def pod_security_labels(namespace: str) -> dict[str, str]:
    """The Pod Security admission labels of one of the stack's namespaces."""
    prefix = "pod-security.kubernetes.io"
    labels: dict[str, str] = {
        f"{prefix}/enforce": POD_SECURITY[namespace],
        f"{prefix}/enforce-version": POD_SECURITY_VERSION,
    }
    for mode in ("warn", "audit"):
        labels[f"{prefix}/{mode}"] = "restricted"
        labels[f"{prefix}/{mode}-version"] = POD_SECURITY_VERSION
    return labels
