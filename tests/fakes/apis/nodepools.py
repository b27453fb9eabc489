"""GKE node pools as separate resources, and Compute Engine's accelerator types.

Node pools live inside their cluster (``cluster["nodePools"]``), as the API shows them in
a cluster's describe. Rules modelled after the Container API: one operation per cluster at
a time (400 FAILED_PRECONDITION "Cluster is running incompatible operation ..."), a GPU
type the zone lacks (400 'Accelerator type "X" does not exist in zone Z.'), duplicate pool
names (409), a node service account of this project that does not exist (400), and
autoscaling changes through the cluster update (PUT clusters/C with
``desiredNodePoolAutoscaling``), which is how gcloud 528 sends `node-pools update
--enable-autoscaling`.

Which zones offer which GPU: ``state["accelerator_zones"]`` (type -> set of zones), filled
on first use with every known type in every zone of ``ZONES``; tests remove entries.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    ApiError,
    Call,
    Route,
    already_exists,
    bad_request,
    iter_routes,
    not_found,
)
from .common import NAME_RE, check_project
from .container import inherit_cluster_defaults

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi

ACCELERATOR_TYPES = {
    "nvidia-l4": ("NVIDIA L4", 8),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16),
    "nvidia-a100-80gb": ("NVIDIA A100 80GB", 8),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8),
    "nvidia-tesla-t4": ("NVIDIA T4", 4),
    "nvidia-tesla-v100": ("NVIDIA V100", 8),
    "nvidia-tesla-p100": ("NVIDIA P100", 4),
    "nvidia-tesla-p4": ("NVIDIA P4", 4),
}
ZONES = tuple(f"{r}-{z}" for r in ("us-west2", "us-central1", "europe-west4") for z in "abc")


def accelerator_zones(fake: FakeGcpApi) -> dict[str, set[str]]:
    zones: dict[str, set[str]] = fake.state.setdefault(
        "accelerator_zones", {name: set(ZONES) for name in ACCELERATOR_TYPES}
    )
    return zones


class NodePools:
    """container.projects.locations.clusters.nodePools.* and the autoscaling update."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def routes(self) -> list[Route]:
        # The cluster's own routes (get, update, and a pool's get/update) belong to
        # Container, which hands autoscaling updates to update_cluster here.
        c = r"/v1/projects/{project}/(?:locations|zones)/{location}/clusters/{name}"
        return iter_routes(
            "container",
            [
                ("GET", c + "/nodePools", "container.nodePools.list", self.list),
                ("POST", c + "/nodePools", "container.nodePools.create", self.create),
                ("DELETE", c + "/nodePools/{pool}", "container.nodePools.delete", self.delete),
            ],
        )

    # -- helpers ---------------------------------------------------------------------------
    def _rel(self, c: Call, pool: str | None = None) -> str:
        rel = (
            f"projects/{self.fake.project}/zones/{c.params['location']}/clusters/"
            f"{c.params['name']}"
        )
        return f"{rel}/nodePools/{pool}" if pool else rel

    def _cluster(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        cluster: dict[str, Any] | None = self.fake.state["clusters"].get(
            f"{c.params['location']}/{c.params['name']}"
        )
        if cluster is None:
            raise not_found(f"Not found: {self._rel(c)}.")
        return cluster

    def _pool_ref(self, c: Call, name: str) -> dict[str, Any]:
        for pool in self._cluster(c).get("nodePools") or []:
            if pool.get("name") == name:
                found: dict[str, Any] = pool
                return found
        raise not_found(f"Not found: {self._rel(c, name)}.")

    def _idle(self, c: Call, cluster: dict[str, Any]) -> None:
        """GKE runs one operation per cluster at a time."""
        mark = f"/clusters/{c.params['name']}"
        for op in self.fake.state["operations"].values():
            link = str(op.target.get("targetLink", ""))
            if (
                op.api == "container"
                and not op.done
                and (link.endswith(mark) or f"{mark}/" in link)
            ):
                raise ApiError(
                    400,
                    f"Cluster is running incompatible operation {op.name}.",
                    status="FAILED_PRECONDITION",
                )
        if cluster.get("status") != "RUNNING":
            raise ApiError(
                400,
                f"Cluster {c.params['name']} is not running (status {cluster.get('status')}).",
                status="FAILED_PRECONDITION",
            )

    def _op(self, c: Call, op_type: str, pool: str, done: Any, failed: Any) -> dict[str, Any]:
        op = self.fake.new_operation(
            c.kind,
            "container",
            op_type=op_type,
            target={
                "location": c.params["location"],
                "targetLink": f"{c.base_url}/projects/{PROJECT_NUMBER}/zones/"
                f"{c.params['location']}/clusters/{c.params['name']}/nodePools/{pool}",
            },
            on_done=done,
            on_error=failed,
            on_abort=failed,
        )
        return self.fake.render_operation(op, c.base_url)

    # -- handlers --------------------------------------------------------------------------
    def list(self, c: Call) -> dict[str, Any]:
        pools = copy.deepcopy(self._cluster(c).get("nodePools") or [])
        return {"nodePools": pools} if pools else {}

    def create(self, c: Call) -> dict[str, Any]:
        cluster = self._cluster(c)
        spec = copy.deepcopy((c.body or {}).get("nodePool") or {})
        name = str(spec.get("name", ""))
        if not NAME_RE.fullmatch(name) or len(name) > 40:
            raise bad_request(f'Invalid value for field "node_pool.name": "{name}".')
        pools = cluster.setdefault("nodePools", [])
        if any(p.get("name") == name for p in pools):
            raise already_exists(f"Already exists: {self._rel(c, name)}.")
        self._idle(c, cluster)
        config = spec.setdefault("config", {})
        zone = c.params["location"]
        for card in config.get("accelerators") or []:
            kind = card.get("acceleratorType", "")
            if zone not in accelerator_zones(self.fake).get(kind, set()):
                raise bad_request(f'Accelerator type "{kind}" does not exist in zone {zone}.')
        if config.get("accelerators") and str(config.get("machineType", "e2-medium")).startswith(
            "e2-"
        ):
            raise bad_request(
                f"Cannot use default machine type ({config.get('machineType', 'e2-medium')}) "
                "with GPUs; choose a different machine type."
            )
        sa = config.get("serviceAccount")
        if (
            sa
            and sa.endswith(f"@{self.fake.project}.iam.gserviceaccount.com")
            and sa not in self.fake.state["service_accounts"]
        ):
            raise bad_request(f'Service account "{sa}" does not exist.')
        scaling = spec.get("autoscaling") or {}
        if scaling.get("enabled") and int(scaling.get("minNodeCount", 0)) > int(
            scaling.get("maxNodeCount", 0)
        ):
            raise bad_request("Autoscaling min node count must not exceed max node count.")
        inherit_cluster_defaults(cluster, spec)
        pool = {
            **spec,
            "status": "PROVISIONING",
            "version": cluster.get("currentNodeVersion", ""),
            "selfLink": f"{c.base_url}/{self._rel(c, name)}",
        }
        pools.append(pool)

        def done() -> None:
            pool["status"] = "RUNNING"

        def failed() -> None:
            if pool in pools:
                pools.remove(pool)

        return self._op(c, "CREATE_NODE_POOL", name, done, failed)

    def delete(self, c: Call) -> dict[str, Any]:
        cluster = self._cluster(c)
        pool = self._pool_ref(c, c.params["pool"])
        self._idle(c, cluster)
        pool["status"] = "STOPPING"
        pools = cluster["nodePools"]

        def done() -> None:
            if pool in pools:
                pools.remove(pool)

        def failed() -> None:
            pool["status"] = "RUNNING"

        return self._op(c, "DELETE_NODE_POOL", pool["name"], done, failed)

    def update_cluster(self, c: Call) -> dict[str, Any]:
        cluster = self._cluster(c)
        update = (c.body or {}).get("update") or {}
        if "desiredNodePoolAutoscaling" not in update:
            raise bad_request("The fake models only node-pool autoscaling updates of clusters.")
        pool = self._pool_ref(c, str(update.get("desiredNodePoolId", "")))
        self._idle(c, cluster)
        wanted = dict(update["desiredNodePoolAutoscaling"])
        pool["status"] = "RECONCILING"

        def done() -> None:
            pool["autoscaling"] = wanted
            pool["status"] = "RUNNING"

        def failed() -> None:
            pool["status"] = "RUNNING"

        return self._op(c, "UPDATE_CLUSTER", pool["name"], done, failed)


class AcceleratorTypes:
    """compute.acceleratorTypes.get / list / aggregatedList."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def routes(self) -> list[Route]:
        p = r"/v1/projects/{project}"
        return iter_routes(
            "compute",
            [
                ("GET", p + "/zones/{zone}/acceleratorTypes/{name}", "compute.acceleratorTypes.get", self.get),
                ("GET", p + "/zones/{zone}/acceleratorTypes", "compute.acceleratorTypes.list", self.list),
                ("GET", p + "/aggregated/acceleratorTypes", "compute.acceleratorTypes.aggregatedList", self.aggregated),
            ],
        )  # fmt: skip

    def _item(self, c: Call, zone: str, name: str) -> dict[str, Any]:
        description, most = ACCELERATOR_TYPES[name]
        base = f"{c.base_url}/projects/{self.fake.project}/zones/{zone}"
        return {
            "kind": "compute#acceleratorType",
            "id": str(abs(hash((zone, name))) % 10**15),
            "name": name,
            "description": description,
            "zone": base,
            "selfLink": f"{base}/acceleratorTypes/{name}",
            "maximumCardsPerInstance": most,
        }

    def _offered(self, zone: str) -> list[str]:
        zones = accelerator_zones(self.fake)
        return [name for name in ACCELERATOR_TYPES if zone in zones.get(name, set())]

    def get(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        zone, name = c.params["zone"], c.params["name"]
        if name not in self._offered(zone):
            raise not_found(
                f"The resource 'projects/{self.fake.project}/zones/{zone}/acceleratorTypes/"
                f"{name}' was not found",
                reason="notFound",
            )
        return self._item(c, zone, name)

    def list(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        zone = c.params["zone"]
        return {
            "kind": "compute#acceleratorTypeList",
            "items": [self._item(c, zone, name) for name in self._offered(zone)],
        }

    def aggregated(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        zones = sorted({z for offered in accelerator_zones(self.fake).values() for z in offered})
        return {
            "kind": "compute#acceleratorTypeAggregatedList",
            "items": {
                f"zones/{zone}": {
                    "acceleratorTypes": [self._item(c, zone, n) for n in self._offered(zone)]
                }
                for zone in zones
            },
        }
