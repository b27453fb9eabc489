"""Service Networking: the private-services-access peering (reached via the TLS proxy)."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    Call,
    OpError,
    Route,
    bad_request,
    iter_routes,
    not_found,
)
from .common import (
    address_network,
    check_project,
    get_lro,
    sql_network,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


PEERING_NAME = "servicenetworking-googleapis-com"
SQL_PRODUCER_MESSAGE = (
    "Failed to delete connection; Producer services (e.g. CloudSQL, Cloud Memstore, etc.) "
    "are still using this connection."
)


class ServiceNetworking:
    """The ``servicenetworking-googleapis-com`` peering of a consumer network."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def routes(self) -> list[Route]:
        s = r"/v1/services/{service}/connections"
        return iter_routes(
            "servicenetworking",
            [
                ("GET", s, "servicenetworking.list", self.list_connections),
                ("POST", s, "servicenetworking.connect", self.connect),
                ("PATCH", s + "/{name}", "servicenetworking.update", self.update),
                # gcloud 528 POSTs to ".../connections/-" (no ":deleteConnection" suffix).
                ("POST", s + "/{name}", "servicenetworking.delete", self.delete),
                ("POST", s + "/{name}:deleteConnection", "servicenetworking.delete", self.delete),
                (
                    "GET",
                    r"/v1/operations/{name:rest}",
                    "servicenetworking.operations.get",
                    self.get_op,
                ),
            ],
        )

    def _network(self, ref: str) -> str:
        m = re.fullmatch(r"projects/(?P<p>[^/]+)/global/networks/(?P<n>[^/]+)", ref or "")
        if not m:
            raise bad_request(f"Invalid network name: '{ref}'.")
        check_project(self.fake, m.group("p"))
        return m.group("n")

    def _connection(self, net: str) -> dict[str, Any]:
        conn: dict[str, Any] = self.fake.state["connections"][net]
        return conn

    def list_connections(self, c: Call) -> dict[str, Any]:
        net = self._network(c.q("network") or "")
        conns = (
            [copy.deepcopy(self._connection(net))] if net in self.fake.state["connections"] else []
        )
        return {"connections": conns} if conns else {}

    def _check_ranges(self, net: str, ranges: list[str]) -> None:
        if not ranges:
            raise bad_request("Reserved peering ranges must not be empty.")
        for r in ranges:
            addr = self.fake.state["addresses"].get(r)
            if addr is None or address_network(addr) != net or addr.get("purpose") != "VPC_PEERING":
                raise bad_request(
                    f"Allocated IP range '{r}' not found in network.",
                    status="FAILED_PRECONDITION",
                )

    def connect(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        net = self._network(body.get("network", ""))
        if net not in self.fake.state["networks"]:
            raise not_found(f"Network '{body.get('network')}' not found.")
        ranges = list(body.get("reservedPeeringRanges") or [])
        self._check_ranges(net, ranges)
        if net in self.fake.state["connections"]:
            raise bad_request(
                "Cannot modify allocated ranges in CreateConnection. Please use UpdateConnection.",
                status="FAILED_PRECONDITION",
            )
        return self._start(c, net, ranges, "servicenetworking.connect")

    def update(self, c: Call) -> dict[str, Any]:
        body = c.body or {}
        net = self._network(body.get("network", ""))
        if net not in self.fake.state["connections"]:
            raise not_found("Connection not found.")
        ranges = list(body.get("reservedPeeringRanges") or [])
        self._check_ranges(net, ranges)
        return self._start(c, net, ranges, "servicenetworking.update")

    def _start(self, c: Call, net: str, ranges: list[str], kind: str) -> dict[str, Any]:
        conn = {
            "network": f"projects/{PROJECT_NUMBER}/global/networks/{net}",
            "reservedPeeringRanges": ranges,
            "peering": PEERING_NAME,
            "service": f"services/{c.params['service']}",
        }

        def done() -> dict[str, Any]:
            self.fake.state["connections"][net] = conn
            for name in ranges:
                self.fake.state["addresses"][name]["status"] = "RESERVED"
            network = self.fake.state["networks"].get(net)
            if network is not None:
                network["peerings"] = [
                    {
                        "name": PEERING_NAME,
                        "network": "https://www.googleapis.com/compute/v1/projects/"
                        "tenant-project-0123/global/networks/servicenetworking",
                        "state": "ACTIVE",
                        "stateDetails": "[2100] Matched",
                        "autoCreateRoutes": True,
                        "exportCustomRoutes": False,
                        "importCustomRoutes": False,
                        "exchangeSubnetRoutes": True,
                        "stackType": "IPV4_ONLY",
                    }
                ]
            return {
                "@type": "type.googleapis.com/google.cloud.servicenetworking.v1.Connection",
                **conn,
            }

        op = self.fake.new_operation(kind, "servicenetworking", on_done=done)
        return self.fake.render_operation(op, c.base_url)

    def delete(self, c: Call) -> dict[str, Any]:
        net = self._network((c.body or {}).get("consumerNetwork", ""))
        if net not in self.fake.state["connections"]:
            raise not_found(f"Connection for network '{net}' not found.")
        users = [
            i["name"] for i in self.fake.state["sql_instances"].values() if sql_network(i) == net
        ]
        lingering = net in self.fake.state["psa_lingering"]
        busy = users or lingering
        error = OpError("FAILED_PRECONDITION", SQL_PRODUCER_MESSAGE, 400) if busy else None

        def done() -> dict[str, Any]:
            self.fake.state["connections"].pop(net, None)
            network = self.fake.state["networks"].get(net)
            if network is not None:
                network.pop("peerings", None)
            return {"@type": "type.googleapis.com/google.protobuf.Empty"}

        op = self.fake.new_operation(
            "servicenetworking.delete", "servicenetworking", on_done=done, error=error
        )
        return self.fake.render_operation(op, c.base_url)

    def get_op(self, c: Call) -> dict[str, Any]:
        return get_lro(self.fake, c, "operations/" + c.params["name"].removeprefix("operations/"))
