"""Kubernetes Engine: clusters and their operations."""

from __future__ import annotations

import base64
import copy
import itertools
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    Call,
    Route,
    already_exists,
    bad_request,
    iter_routes,
    not_found,
    now_rfc3339,
)
from .common import (
    NAME_RE,
    check_project,
    last_segment,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


GKE_VERSION = "1.32.4-gke.1415000"


class Container:
    """Zonal or regional clusters; the Workload Identity pool appears when one is RUNNING."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake
        self._endpoints = itertools.count(2)  # a new cluster gets a new address, as on GKE

    def routes(self) -> list[Route]:
        loc = r"/v1/projects/{project}/(?:locations|zones)/{location}"
        return iter_routes(
            "container",
            [
                ("GET", loc + "/clusters", "container.clusters.list", self.list_clusters),
                ("POST", loc + "/clusters", "container.clusters.create", self.create),
                ("GET", loc + "/clusters/{name}", "container.clusters.get", self.get),
                ("DELETE", loc + "/clusters/{name}", "container.clusters.delete", self.delete),
                ("PUT", loc + "/clusters/{name}", "container.clusters.update", self.update),
                (
                    "GET",
                    loc + "/clusters/{name}/nodePools/{pool}",
                    "container.nodePools.get",
                    self.get_pool,
                ),
                (
                    "PUT",
                    loc + "/clusters/{name}/nodePools/{pool}",
                    "container.nodePools.update",
                    self.update_pool,
                ),
                ("GET", loc + "/operations", "container.operations.list", self.list_ops),
                ("GET", loc + "/operations/{op}", "container.operations.get", self.get_op),
                ("GET", loc + "/serverConfig", "container.getServerConfig", self.server_config),
                ("GET", loc + "/serverconfig", "container.getServerConfig", self.server_config),
            ],
        )

    def _key(self, c: Call, name: str | None = None) -> str:
        return f"{c.params['location']}/{name or c.params['name']}"

    def _rel(self, location: str, name: str) -> str:
        return f"projects/{self.fake.project}/zones/{location}/clusters/{name}"

    def _cluster(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        cl: dict[str, Any] | None = self.fake.state["clusters"].get(self._key(c))
        if cl is None:
            raise not_found(f"Not found: {self._rel(c.params['location'], c.params['name'])}.")
        return cl

    def list_clusters(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        loc = c.params["location"]
        items = [
            copy.deepcopy(cl)
            for k, cl in self.fake.state["clusters"].items()
            if loc == "-" or k.startswith(loc + "/")
        ]
        return {"clusters": items} if items else {}

    def get(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._cluster(c))

    def server_config(self, c: Call) -> dict[str, Any]:
        return {
            "defaultClusterVersion": GKE_VERSION,
            "validMasterVersions": [GKE_VERSION],
            "validNodeVersions": [GKE_VERSION],
            "defaultImageType": "COS_CONTAINERD",
            "validImageTypes": ["COS_CONTAINERD", "UBUNTU_CONTAINERD"],
            "channels": [
                {"channel": ch, "defaultVersion": GKE_VERSION, "validVersions": [GKE_VERSION]}
                for ch in ("RAPID", "REGULAR", "STABLE")
            ],
        }

    def create(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        location = c.params["location"]
        spec = copy.deepcopy((c.body or {}).get("cluster") or {})
        name = spec.get("name", "")
        if not NAME_RE.fullmatch(name) or len(name) > 40:
            raise bad_request(f'Invalid value for field "cluster.name": "{name}".')
        key = f"{location}/{name}"
        if key in self.fake.state["clusters"]:
            raise already_exists(f"Already exists: {self._rel(location, name)}.")
        region = location if location.count("-") == 1 else location.rsplit("-", 1)[0]
        net = (spec.get("network") or "default").rstrip("/").rsplit("/", 1)[-1]
        if net not in self.fake.state["networks"]:
            raise bad_request(f'Network "{net}" does not exist.')
        sub_name = (spec.get("subnetwork") or "").rstrip("/").rsplit("/", 1)[-1]
        if sub_name:
            sub = self.fake.state["subnetworks"].get(f"{region}/{sub_name}")
            if sub is None:
                raise bad_request(
                    f'Subnetwork "projects/{self.fake.project}/regions/{region}/subnetworks/'
                    f'{sub_name}" does not exist.'
                )
            if last_segment(sub["network"]) != net:
                raise bad_request(f'Subnetwork "{sub_name}" is not valid for Network "{net}".')
        pool = (spec.get("workloadIdentityConfig") or {}).get("workloadPool")
        if pool and pool != f"{self.fake.project}.svc.id.goog":
            raise bad_request(
                f'Workload Identity pool "{pool}" is invalid; it must be '
                f'"{self.fake.project}.svc.id.goog".'
            )
        for np in spec.get("nodePools") or []:
            sa = (np.get("config") or {}).get("serviceAccount")
            if (
                sa
                and sa != "default"
                and sa not in self.fake.state["service_accounts"]
                and sa.endswith(f"@{self.fake.project}.iam.gserviceaccount.com")
            ):
                raise bad_request(f'Service account "{sa}" does not exist.')
        for np in spec.get("nodePools") or []:
            np.update(
                {
                    "status": "PROVISIONING",
                    "version": GKE_VERSION,
                    "selfLink": f"{c.base_url}/{self._rel(location, name)}/nodePools/"
                    f"{np.get('name')}",
                }
            )
        _apply_defaults(spec)
        cluster = {
            **spec,
            "name": name,
            "network": net,
            "subnetwork": sub_name or net,
            "location": location,
            "zone": location,
            "locations": spec.get("locations") or [location],
            "status": "PROVISIONING",
            "selfLink": f"{c.base_url}/{self._rel(location, name)}",
            "createTime": now_rfc3339(),
            "initialClusterVersion": GKE_VERSION,
            "currentMasterVersion": GKE_VERSION,
            "currentNodeVersion": GKE_VERSION,
            "clusterIpv4Cidr": "10.4.0.0/14",
            "servicesIpv4Cidr": "10.8.0.0/20",
            "labelFingerprint": "a9dc16a7",
        }
        cluster["nodeConfig"] = copy.deepcopy((cluster.get("nodePools") or [{}])[0].get("config", {}))
        self.fake.state["clusters"][key] = cluster

        def done() -> None:
            cluster["status"] = "RUNNING"
            cluster["endpoint"] = f"127.0.0.{next(self._endpoints) % 250 + 2}"
            cluster["masterAuth"] = {"clusterCaCertificate": ca_b64(self.fake)}
            for np in cluster.get("nodePools") or []:
                np["status"] = "RUNNING"
            if pool:
                self.fake.state["workload_pools"].add(pool)

        def failed() -> None:
            cluster["status"] = "ERROR"
            cluster["statusMessage"] = "Cluster creation failed."

        def aborted() -> None:  # injected failure: as if the create never happened
            self.fake.state["clusters"].pop(key, None)

        return self._op(c, "CREATE_CLUSTER", location, name, done, failed, aborted)

    def delete(self, c: Call) -> dict[str, Any]:
        cluster = self._cluster(c)
        key = self._key(c)
        cluster["status"] = "STOPPING"

        def done() -> None:
            self.fake.state["clusters"].pop(key, None)

        def failed() -> None:
            cluster["status"] = "RUNNING"

        return self._op(
            c, "DELETE_CLUSTER", c.params["location"], cluster["name"], done, failed, failed
        )

    def _busy(self, cluster: dict[str, Any]) -> None:
        if cluster.get("status") != "RUNNING":
            raise bad_request(
                f"Cluster is not running: {cluster['name']} is {cluster.get('status')}.",
                status="FAILED_PRECONDITION",
            )

    def update(self, c: Call) -> dict[str, Any]:
        """`clusters update`: one field per call, as gcloud sends it (``update.desired*``)."""
        update = (c.body or {}).get("update") or {}
        if "desiredNodePoolAutoscaling" in update:  # `node-pools update --enable-autoscaling`
            from .nodepools import NodePools

            return NodePools(self.fake).update_cluster(c)
        cluster = self._cluster(c)
        self._busy(cluster)
        known = {
            "desiredNodeKubeletConfig",
            "desiredDefaultEnablePrivateNodes",
            "desiredControlPlaneEndpointsConfig",
            "desiredShieldedNodes",
            "desiredDatapathProvider",
        }
        if not update or set(update) - known:
            raise bad_request(f"The fake does not model the update {sorted(update)}.")
        if "desiredDatapathProvider" in update:  # GKE picks the dataplane at creation only
            raise bad_request(
                "Updating the datapath provider of an existing cluster is not supported."
            )
        cluster["status"] = "RECONCILING"

        def done() -> None:
            cluster["status"] = "RUNNING"
            if "desiredNodeKubeletConfig" in update:
                defaults = cluster.setdefault("nodePoolDefaults", {}).setdefault(
                    "nodeConfigDefaults", {}
                )
                defaults["nodeKubeletConfig"] = update["desiredNodeKubeletConfig"]
            if "desiredDefaultEnablePrivateNodes" in update:
                enabled = bool(update["desiredDefaultEnablePrivateNodes"])
                cluster.setdefault("networkConfig", {})["defaultEnablePrivateNodes"] = enabled
                cluster.setdefault("privateClusterConfig", {})["enablePrivateNodes"] = enabled
            if "desiredShieldedNodes" in update:
                cluster["shieldedNodes"] = update["desiredShieldedNodes"]
            endpoints = update.get("desiredControlPlaneEndpointsConfig")
            if endpoints:  # a PATCH-like merge: only the fields sent change
                ip = cluster.setdefault("controlPlaneEndpointsConfig", {}).setdefault(
                    "ipEndpointsConfig", {}
                )
                ip.update(endpoints.get("ipEndpointsConfig") or {})
                cluster.pop("masterAuthorizedNetworksConfig", None)
                _mirror_authorized_networks(cluster)

        def failed() -> None:
            cluster["status"] = "RUNNING"

        return self._op(
            c, "UPDATE_CLUSTER", c.params["location"], cluster["name"], done, failed, failed
        )

    def _pool(self, c: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        cluster = self._cluster(c)
        pool = next(
            (p for p in cluster.get("nodePools") or [] if p.get("name") == c.params["pool"]), None
        )
        if pool is None:
            raise not_found(f"Not found: node pool {c.params['pool']}.")
        return cluster, pool

    def get_pool(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._pool(c)[1])

    def update_pool(self, c: Call) -> dict[str, Any]:
        """`node-pools update`: the kubelet config or the node network config of one pool."""
        cluster, pool = self._pool(c)
        self._busy(cluster)
        body = c.body or {}
        if "shieldedInstanceConfig" in body:
            raise bad_request("Shielded instance config of a node pool cannot be updated.")
        cluster["status"] = "RECONCILING"

        def done() -> None:
            cluster["status"] = "RUNNING"
            config = pool.setdefault("config", {})
            if "kubeletConfig" in body:
                config.setdefault("kubeletConfig", {}).update(body["kubeletConfig"])
            if "nodeNetworkConfig" in body:
                pool.setdefault("networkConfig", {}).update(body["nodeNetworkConfig"])
            cluster["nodeConfig"] = copy.deepcopy(cluster["nodePools"][0].get("config", {}))

        def failed() -> None:
            cluster["status"] = "RUNNING"

        return self._op(
            c, "UPGRADE_NODES", c.params["location"], cluster["name"], done, failed, failed
        )

    def _op(
        self,
        c: Call,
        op_type: str,
        location: str,
        name: str,
        done: Any,
        failed: Any,
        aborted: Any,
    ) -> dict[str, Any]:
        op = self.fake.new_operation(
            c.kind,
            "container",
            op_type=op_type,
            target={
                "location": location,
                "targetLink": f"{c.base_url}/projects/{PROJECT_NUMBER}/zones/{location}/"
                f"clusters/{name}",
            },
            on_done=done,
            on_error=failed,
            on_abort=aborted,
        )
        return self.fake.render_operation(op, c.base_url)

    def list_ops(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        loc = c.params["location"]
        ops = [
            self.fake.render_operation(op, c.base_url)
            for op in self.fake.state["operations"].values()
            if op.api == "container" and (loc == "-" or op.target.get("location") == loc)
        ]
        return {"operations": ops} if ops else {}

    def get_op(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        op = self.fake.state["operations"].get(c.params["op"])
        if op is None or op.api != "container":
            raise not_found(
                f"Not found: projects/{PROJECT_NUMBER}/zones/{c.params['location']}/operations/"
                f"{c.params['op']}."
            )
        return self.fake.render_operation(op, c.base_url)


def ca_b64(fake: FakeGcpApi) -> str:
    if fake.tls is not None:
        return base64.b64encode(fake.tls.ca_cert.read_bytes()).decode()
    return base64.b64encode(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").decode()


def _apply_defaults(spec: dict[str, Any]) -> None:
    """What GKE fills in: node pools inherit the cluster's defaults, and the older fields
    mirror the newer ones (privateClusterConfig, masterAuthorizedNetworksConfig)."""
    network = spec.setdefault("networkConfig", {})
    network.setdefault("datapathProvider", "LEGACY_DATAPATH")
    private = bool(network.get("defaultEnablePrivateNodes"))
    spec["privateClusterConfig"] = {**spec.get("privateClusterConfig", {}),
                                    "enablePrivateNodes": private}
    spec.setdefault("shieldedNodes", {"enabled": True})
    for pool in spec.get("nodePools") or []:
        inherit_cluster_defaults(spec, pool)
    _mirror_authorized_networks(spec)


def inherit_cluster_defaults(cluster: dict[str, Any], pool: dict[str, Any]) -> None:
    """A pool keeps what its create asked for and takes the cluster's defaults for the
    rest, as GKE does for a pool made with the cluster or added later."""
    private = bool((cluster.get("networkConfig") or {}).get("defaultEnablePrivateNodes"))
    kubelet = (
        ((cluster.get("nodePoolDefaults") or {}).get("nodeConfigDefaults") or {}).get(
            "nodeKubeletConfig"
        )
        or {}
    )
    # GKE before 1.33 leaves the read-only port on unless told otherwise.
    readonly = kubelet.get("insecureKubeletReadonlyPortEnabled", True)
    config = pool.setdefault("config", {})
    config.setdefault("kubeletConfig", {}).setdefault(
        "insecureKubeletReadonlyPortEnabled", readonly
    )
    config.setdefault(
        "shieldedInstanceConfig", {"enableSecureBoot": False, "enableIntegrityMonitoring": True}
    ).setdefault("enableSecureBoot", False)
    pool.setdefault("networkConfig", {}).setdefault("enablePrivateNodes", private)


def _mirror_authorized_networks(cluster: dict[str, Any]) -> None:
    config = (
        ((cluster.get("controlPlaneEndpointsConfig") or {}).get("ipEndpointsConfig") or {}).get(
            "authorizedNetworksConfig"
        )
        or cluster.get("masterAuthorizedNetworksConfig")
        or {"enabled": False}
    )
    cluster["masterAuthorizedNetworksConfig"] = copy.deepcopy(config)
    endpoints = cluster.setdefault("controlPlaneEndpointsConfig", {})
    ip = endpoints.setdefault("ipEndpointsConfig", {})
    ip["authorizedNetworksConfig"] = copy.deepcopy(config)
    ip.setdefault("enabled", True)  # the IP endpoints, public one included, as GKE defaults
    ip.setdefault("enablePublicEndpoint", True)
    endpoints.setdefault(
        "dnsEndpointConfig",
        {"endpoint": f"gke-{cluster.get('name', 'c')}.gke.goog", "allowExternalTraffic": False},
    )
