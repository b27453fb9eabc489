"""Compute Engine: networks, subnetworks, global addresses, routers (with Cloud NAT) and their
operations."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import time
from typing import TYPE_CHECKING, Any

from ..core import (
    ApiError,
    Call,
    Deferred,
    Operation,
    Route,
    already_exists,
    bad_request,
    iter_routes,
    not_found,
    now_rfc3339,
)
from .common import (
    NAME_RE,
    new_id,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


class Compute:
    """Networks, subnetworks and global addresses; resources appear at insert time and
    operations are waited on with ``operations.wait`` (blocking server side)."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake
        self._next_range = itertools.count(100)

    def routes(self) -> list[Route]:
        g = r"/v1/projects/{project}/global"
        r = r"/v1/projects/{project}/regions/{region}"
        return iter_routes(
            "compute",
            [
                ("GET", g + "/networks", "compute.networks.list", self.list_networks),
                ("POST", g + "/networks", "compute.networks.insert", self.insert_network),
                ("GET", g + "/networks/{name}", "compute.networks.get", self.get_network),
                ("DELETE", g + "/networks/{name}", "compute.networks.delete", self.delete_network),
                (
                    "POST",
                    g + "/networks/{name}/removePeering",
                    "compute.networks.removePeering",
                    self.remove_peering,
                ),
                ("GET", r + "/subnetworks", "compute.subnetworks.list", self.list_subnets),
                ("POST", r + "/subnetworks", "compute.subnetworks.insert", self.insert_subnet),
                ("GET", r + "/subnetworks/{name}", "compute.subnetworks.get", self.get_subnet),
                (
                    "DELETE",
                    r + "/subnetworks/{name}",
                    "compute.subnetworks.delete",
                    self.delete_subnet,
                ),
                (
                    "GET",
                    r"/v1/projects/{project}/aggregated/subnetworks",
                    "compute.subnetworks.aggregatedList",
                    self.aggregated_subnets,
                ),
                ("GET", r + "/routers", "compute.routers.list", self.list_routers),
                ("POST", r + "/routers", "compute.routers.insert", self.insert_router),
                ("GET", r + "/routers/{name}", "compute.routers.get", self.get_router),
                ("PATCH", r + "/routers/{name}", "compute.routers.patch", self.patch_router),
                ("DELETE", r + "/routers/{name}", "compute.routers.delete", self.delete_router),
                ("GET", g + "/addresses", "compute.globalAddresses.list", self.list_addresses),
                ("POST", g + "/addresses", "compute.globalAddresses.insert", self.insert_address),
                ("GET", g + "/addresses/{name}", "compute.globalAddresses.get", self.get_address),
                (
                    "DELETE",
                    g + "/addresses/{name}",
                    "compute.globalAddresses.delete",
                    self.delete_address,
                ),
                ("GET", g + "/operations/{op}", "compute.globalOperations.get", self.get_op),
                (
                    "POST",
                    g + "/operations/{op}/wait",
                    "compute.globalOperations.wait",
                    self.wait_op,
                ),
                ("GET", r + "/operations/{op}", "compute.regionOperations.get", self.get_op),
                (
                    "POST",
                    r + "/operations/{op}/wait",
                    "compute.regionOperations.wait",
                    self.wait_op,
                ),
            ],
        )

    # -- helpers -------------------------------------------------------------------
    def _rel(self, kind: str, name: str, region: str | None = None) -> str:
        scope = f"regions/{region}" if region else "global"
        return f"projects/{self.fake.project}/{scope}/{kind}/{name}"

    def _link(self, c: Call, kind: str, name: str, region: str | None = None) -> str:
        return f"{c.base_url}/{self._rel(kind, name, region)}"

    def _validate_name(self, name: str) -> None:
        if not NAME_RE.fullmatch(name or ""):
            raise bad_request(
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
                reason="invalid",
            )

    def _in_use(self, what: str, rel: str, user: str) -> ApiError:
        return bad_request(
            f"The {what} resource '{rel}' is already being used by '{user}'",
            reason="resourceInUseByAnotherResource",
        )

    def network_name_from(self, url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1]

    def _op(
        self,
        c: Call,
        op_type: str,
        target: str,
        *,
        region: str | None = None,
        on_done: Any = None,
        on_error: Any = None,
        on_abort: Any = None,
    ) -> dict[str, Any]:
        op = self.fake.new_operation(
            c.kind,
            "compute",
            op_type=op_type,
            target={
                "targetLink": target,
                "targetId": new_id(),
                "region": region,
                "project": self.fake.project,
            },
            on_done=on_done,
            on_error=on_error,
            on_abort=on_abort,
        )
        return self.fake.render_operation(op, c.base_url)

    def _find_op(self, c: Call) -> Operation:
        op: Operation | None = self.fake.state["operations"].get(c.params["op"])
        if op is None or op.api != "compute":
            raise not_found(
                f"The resource '{self._rel('operations', c.params['op'])}' was not found"
            )
        return op

    def get_op(self, c: Call) -> dict[str, Any]:
        return self.fake.render_operation(self._find_op(c), c.base_url)

    def wait_op(self, c: Call) -> Any:
        op = self._find_op(c)
        if op.done:
            return self.fake.render_operation(op, c.base_url)
        deadline = min(op.due, time.monotonic() + 30.0)
        return Deferred(deadline, lambda: self.fake.render_operation(op, c.base_url))

    # -- networks ------------------------------------------------------------------
    def list_networks(self, c: Call) -> dict[str, Any]:
        items = [copy.deepcopy(n) for n in self.fake.state["networks"].values()]
        return {"kind": "compute#networkList", "items": items, "selfLink": c.base_url}

    def get_network(self, c: Call) -> dict[str, Any]:
        net = self.fake.state["networks"].get(c.params["name"])
        if net is None:
            raise not_found(
                f"The resource '{self._rel('networks', c.params['name'])}' was not found"
            )
        return copy.deepcopy(net)

    def insert_network(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        name = body.get("name", "")
        self._validate_name(name)
        if name in self.fake.state["networks"]:
            raise already_exists(f"The resource '{self._rel('networks', name)}' already exists")
        link = self._link(c, "networks", name)
        self.fake.state["networks"][name] = {
            "kind": "compute#network",
            "id": new_id(),
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "selfLink": link,
            "autoCreateSubnetworks": bool(body.get("autoCreateSubnetworks", False)),
            "routingConfig": body.get("routingConfig") or {"routingMode": "REGIONAL"},
            "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
            "mtu": body.get("mtu", 1460),
        }
        # Compute shows the resource at once; a failed insert takes it away again.
        return self._op(
            c, "insert", link, on_error=lambda: self.fake.state["networks"].pop(name, None)
        )

    def delete_network(self, c: Call) -> dict[str, Any]:
        name = c.params["name"]
        self.get_network(c)
        rel = self._rel("networks", name)
        for sub in self.fake.state["subnetworks"].values():
            if self.network_name_from(sub["network"]) == name:
                region = sub["region"].rsplit("/", 1)[-1]
                raise self._in_use("network", rel, self._rel("subnetworks", sub["name"], region))
        for addr in self.fake.state["addresses"].values():
            if addr.get("network") and self.network_name_from(addr["network"]) == name:
                raise self._in_use("network", rel, self._rel("addresses", addr["name"]))
        if name in self.fake.state["connections"]:
            raise self._in_use("network", rel, f"{rel}/peerings/servicenetworking-googleapis-com")
        for key, router in self.fake.state["routers"].items():
            if self.network_name_from(router["network"]) == name:
                region, router_name = key.split("/")
                raise self._in_use("network", rel, self._rel("routers", router_name, region))
        link = self._link(c, "networks", name)
        return self._op(
            c, "delete", link, on_done=lambda: self.fake.state["networks"].pop(name, None)
        )

    def remove_peering(self, c: Call) -> dict[str, Any]:
        """The consumer side of a peering. Removing servicenetworking's is what the console
        (and Terraform's REMOVE_PEERING) does when Cloud SQL still holds the connection."""
        name = c.params["name"]
        network = self.get_network(c)
        peering = (c.body or {}).get("name", "")
        if not any(p.get("name") == peering for p in network.get("peerings", [])):
            raise bad_request(
                f"There is no peering with name '{peering}' in network "
                f"'{self._rel('networks', name)}'."
            )

        def done() -> None:
            live = self.fake.state["networks"].get(name)
            if live is not None:
                live["peerings"] = [p for p in live.get("peerings", []) if p["name"] != peering]
            if peering == "servicenetworking-googleapis-com":
                self.fake.state["connections"].pop(name, None)
                self.fake.state["psa_lingering"].discard(name)

        return self._op(c, "removePeering", self._link(c, "networks", name), on_done=done)

    # -- subnetworks ---------------------------------------------------------------
    def _subnet_key(self, c: Call, name: str | None = None) -> str:
        return f"{c.params['region']}/{name or c.params['name']}"

    def list_subnets(self, c: Call) -> dict[str, Any]:
        items = [
            copy.deepcopy(s)
            for k, s in self.fake.state["subnetworks"].items()
            if k.startswith(c.params["region"] + "/")
        ]
        return {"kind": "compute#subnetworkList", "items": items}

    def aggregated_subnets(self, c: Call) -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, s in self.fake.state["subnetworks"].items():
            items.setdefault(f"regions/{key.split('/')[0]}", {"subnetworks": []})[
                "subnetworks"
            ].append(copy.deepcopy(s))
        return {"kind": "compute#subnetworkAggregatedList", "items": items}

    def get_subnet(self, c: Call) -> dict[str, Any]:
        sub = self.fake.state["subnetworks"].get(self._subnet_key(c))
        if sub is None:
            rel = self._rel("subnetworks", c.params["name"], c.params["region"])
            raise not_found(f"The resource '{rel}' was not found")
        return copy.deepcopy(sub)

    def insert_subnet(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        region = c.params["region"]
        name = body.get("name", "")
        self._validate_name(name)
        net_name = self.network_name_from(body.get("network", ""))
        if net_name not in self.fake.state["networks"]:
            raise not_found(f"The resource '{self._rel('networks', net_name)}' was not found")
        key = f"{region}/{name}"
        if key in self.fake.state["subnetworks"]:
            raise already_exists(
                f"The resource '{self._rel('subnetworks', name, region)}' already exists"
            )
        try:
            cidr = ipaddress.ip_network(body.get("ipCidrRange", ""))
        except ValueError:
            raise bad_request(
                f"Invalid value for field 'resource.ipCidrRange': '{body.get('ipCidrRange')}'. "
                "Invalid IPCidrRange."
            ) from None
        for other in self.fake.state["subnetworks"].values():
            if self.network_name_from(other["network"]) == net_name and cidr.overlaps(
                ipaddress.ip_network(other["ipCidrRange"])
            ):
                raise bad_request(
                    f"Invalid IPCidrRange: {cidr} conflicts with existing subnetwork "
                    f"'{other['name']}' in region '{other['region'].rsplit('/', 1)[-1]}'."
                )
        link = self._link(c, "subnetworks", name, region)
        net = self.fake.state["networks"][net_name]
        self.fake.state["subnetworks"][key] = {
            "kind": "compute#subnetwork",
            "id": new_id(),
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "network": net["selfLink"],
            "ipCidrRange": str(cidr),
            "gatewayAddress": str(next(cidr.hosts())),
            "region": f"{c.base_url}/projects/{self.fake.project}/regions/{region}",
            "selfLink": link,
            "privateIpGoogleAccess": bool(body.get("privateIpGoogleAccess", False)),
            "fingerprint": "u1v2w3x4y5Q=",
            "stackType": body.get("stackType", "IPV4_ONLY"),
            "purpose": body.get("purpose", "PRIVATE"),
        }
        net.setdefault("subnetworks", []).append(link)

        def failed() -> None:
            self.fake.state["subnetworks"].pop(key, None)
            if link in net.get("subnetworks", []):
                net["subnetworks"].remove(link)

        return self._op(c, "insert", link, region=region, on_error=failed)

    def delete_subnet(self, c: Call) -> dict[str, Any]:
        sub = self.get_subnet(c)
        region, name = c.params["region"], c.params["name"]
        rel = self._rel("subnetworks", name, region)
        for cluster in self.fake.state["clusters"].values():
            if cluster.get("subnetwork") == name and cluster["location"].startswith(region):
                user = (
                    f"projects/{self.fake.project}/zones/{cluster['location']}/"
                    f"instanceGroupManagers/gke-{cluster['name']}-default-pool-grp"
                )
                raise self._in_use("subnetwork", rel, user)

        def done() -> None:
            self.fake.state["subnetworks"].pop(f"{region}/{name}", None)
            net = self.fake.state["networks"].get(self.network_name_from(sub["network"]))
            if net and sub["selfLink"] in net.get("subnetworks", []):
                net["subnetworks"].remove(sub["selfLink"])

        return self._op(c, "delete", sub["selfLink"], region=region, on_done=done)

    # -- global addresses ----------------------------------------------------------
    def list_addresses(self, c: Call) -> dict[str, Any]:
        items = [copy.deepcopy(a) for a in self.fake.state["addresses"].values()]
        return {"kind": "compute#addressList", "items": items}

    def get_address(self, c: Call) -> dict[str, Any]:
        addr = self.fake.state["addresses"].get(c.params["name"])
        if addr is None:
            raise not_found(
                f"The resource '{self._rel('addresses', c.params['name'])}' was not found"
            )
        return copy.deepcopy(addr)

    def insert_address(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        name = body.get("name", "")
        self._validate_name(name)
        if name in self.fake.state["addresses"]:
            raise already_exists(f"The resource '{self._rel('addresses', name)}' already exists")
        network = body.get("network")
        if network:
            net_name = self.network_name_from(network)
            if net_name not in self.fake.state["networks"]:
                raise not_found(f"The resource '{self._rel('networks', net_name)}' was not found")
            network = self.fake.state["networks"][net_name]["selfLink"]
        prefix = int(body.get("prefixLength") or 32)
        address = body.get("address") or f"10.{next(self._next_range) % 250}.0.0"
        link = self._link(c, "addresses", name)
        self.fake.state["addresses"][name] = {
            "kind": "compute#address",
            "id": new_id(),
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "address": address,
            "prefixLength": prefix,
            "status": "RESERVING",
            "selfLink": link,
            "networkTier": "PREMIUM",
            "addressType": body.get("addressType", "INTERNAL"),
            "purpose": body.get("purpose", "GCE_ENDPOINT"),
            "labelFingerprint": "42WmSpB8rSM=",
            **({"network": network} if network else {}),
        }
        if body.get("description"):
            self.fake.state["addresses"][name]["description"] = body["description"]

        def done() -> None:
            if name in self.fake.state["addresses"]:
                self.fake.state["addresses"][name]["status"] = "RESERVED"

        def failed() -> None:
            self.fake.state["addresses"].pop(name, None)

        return self._op(c, "insert", link, on_done=done, on_error=failed)

    def delete_address(self, c: Call) -> dict[str, Any]:
        addr = self.get_address(c)
        name = c.params["name"]
        for net, conn in self.fake.state["connections"].items():
            if name in conn.get("reservedPeeringRanges", []):
                raise self._in_use(
                    "address",
                    self._rel("addresses", name),
                    f"{self._rel('networks', net)}/peerings/servicenetworking-googleapis-com",
                )
        return self._op(
            c,
            "delete",
            addr["selfLink"],
            on_done=lambda: self.fake.state["addresses"].pop(name, None),
        )

    # -- routers and Cloud NAT -------------------------------------------------------
    # A NAT is not a resource of its own: `routers nats create` reads the router and
    # PATCHes it with the longer `nats` list; deleting the router takes its NATs along.
    def list_routers(self, c: Call) -> dict[str, Any]:
        items = [
            copy.deepcopy(r)
            for k, r in self.fake.state["routers"].items()
            if k.startswith(c.params["region"] + "/")
        ]
        return {"kind": "compute#routerList", "items": items}

    def _router(self, c: Call) -> dict[str, Any]:
        found: dict[str, Any] | None = self.fake.state["routers"].get(
            f"{c.params['region']}/{c.params['name']}"
        )
        if found is None:
            rel = self._rel("routers", c.params["name"], c.params["region"])
            raise not_found(f"The resource '{rel}' was not found")
        return found

    def get_router(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._router(c))

    def insert_router(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        region, name = c.params["region"], body.get("name", "")
        self._validate_name(name)
        net_name = self.network_name_from(body.get("network", ""))
        if net_name not in self.fake.state["networks"]:
            raise not_found(f"The resource '{self._rel('networks', net_name)}' was not found")
        key = f"{region}/{name}"
        if key in self.fake.state["routers"]:
            raise already_exists(
                f"The resource '{self._rel('routers', name, region)}' already exists"
            )
        link = self._link(c, "routers", name, region)
        self.fake.state["routers"][key] = {
            "kind": "compute#router",
            "id": new_id(),
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "network": self.fake.state["networks"][net_name]["selfLink"],
            "region": f"{c.base_url}/projects/{self.fake.project}/regions/{region}",
            "selfLink": link,
            "encryptedInterconnectRouter": False,
            **({"nats": body["nats"]} if body.get("nats") else {}),
        }
        return self._op(
            c,
            "insert",
            link,
            region=region,
            on_error=lambda: self.fake.state["routers"].pop(key, None),
        )

    def patch_router(self, c: Call) -> dict[str, Any]:
        router = self._router(c)
        body = c.body or {}
        for nat in body.get("nats") or []:
            ranges = nat.get("sourceSubnetworkIpRangesToNat")
            if ranges not in ("ALL_SUBNETWORKS_ALL_IP_RANGES", "LIST_OF_SUBNETWORKS",
                              "ALL_SUBNETWORKS_ALL_PRIMARY_IP_RANGES"):
                raise bad_request(
                    f"Invalid value for field 'resource.nats[0].sourceSubnetworkIpRangesToNat':"
                    f" '{ranges}'."
                )
        previous = copy.deepcopy(router)

        def done() -> None:
            router.update({k: v for k, v in body.items() if k in ("nats", "bgp", "bgpPeers")})
            for nat in router.get("nats") or []:
                nat.setdefault("natIpAllocateOption", "AUTO_ONLY")
                nat.setdefault("enableEndpointIndependentMapping", False)
                nat.setdefault("type", "PUBLIC")
                nat.setdefault("endpointTypes", ["ENDPOINT_TYPE_VM"])

        def failed() -> None:
            router.clear()
            router.update(previous)

        return self._op(
            c, "patch", router["selfLink"], region=c.params["region"], on_done=done,
            on_error=failed,
        )

    def delete_router(self, c: Call) -> dict[str, Any]:
        router = self._router(c)
        key = f"{c.params['region']}/{c.params['name']}"
        return self._op(
            c,
            "delete",
            router["selfLink"],
            region=c.params["region"],
            on_done=lambda: self.fake.state["routers"].pop(key, None),
        )
