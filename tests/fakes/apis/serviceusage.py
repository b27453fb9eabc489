"""Service Usage: list/enable services; 403 SERVICE_DISABLED gating lives in the core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    ApiError,
    Call,
    Route,
    iter_routes,
)
from .common import (
    SERVICE_TITLES,
    check_project,
    get_lro,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


class ServiceUsage:
    """``services list|enable`` (batch or single) and their ``acf`` operations."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def routes(self) -> list[Route]:
        p = r"/v1(?:beta1)?/projects/{project}/services"
        return iter_routes(
            "serviceusage",
            [
                ("GET", p, "serviceusage.services.list", self.list_services),
                ("GET", p + r"/{service}", "serviceusage.services.get", self.get),
                ("POST", p + r":batchEnable", "serviceusage.services.batchEnable", self.enable),
                ("POST", p + r"/{service}:enable", "serviceusage.services.enable", self.enable),
                ("POST", p + r"/{service}:disable", "serviceusage.services.disable", self.disable),
                (
                    "GET",
                    r"/v1(?:beta1)?/operations/{name:rest}",
                    "serviceusage.operations.get",
                    self.get_op,
                ),
            ],
        )

    def consumer_mgmt_routes(self) -> list[Route]:
        """Service Consumer Management serves the same enable operations to gcloud."""
        return iter_routes(
            "serviceconsumermanagement",
            [
                (
                    "GET",
                    r"/v1(?:beta1)?/operations/{name:rest}",
                    "serviceusage.operations.get",
                    self.get_op,
                )
            ],
        )

    def _service(self, name: str) -> dict[str, Any]:
        enabled = name in self.fake.state["services"]
        return {
            "name": f"projects/{PROJECT_NUMBER}/services/{name}",
            "config": {"name": name, "title": SERVICE_TITLES.get(name, name)},
            "state": "ENABLED" if enabled else "DISABLED",
            "parent": f"projects/{PROJECT_NUMBER}",
        }

    def list_services(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        names = sorted(SERVICE_TITLES)
        flt = (c.q("filter") or "").replace(" ", "")
        if "state:ENABLED" in flt:
            names = [n for n in names if n in self.fake.state["services"]]
        elif "state:DISABLED" in flt:
            names = [n for n in names if n not in self.fake.state["services"]]
        items = [self._service(n) for n in names]
        return {"services": items} if items else {}

    def get(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        if c.params["service"] not in SERVICE_TITLES:
            raise ApiError(
                403,
                f"Not found or permission denied for service(s): {c.params['service']}.",
                status="PERMISSION_DENIED",
            )
        return self._service(c.params["service"])

    def enable(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        names = (
            [c.params["service"]]
            if "service" in c.params
            else list((c.body or {}).get("serviceIds", []))
        )
        unknown = [n for n in names if n not in SERVICE_TITLES]
        if unknown:
            raise ApiError(
                403,
                "Not found or permission denied for service(s): " + ", ".join(unknown) + ".",
                status="PERMISSION_DENIED",
                reason="SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED",
            )

        def done() -> dict[str, Any]:
            self.fake.state["services"].update(names)
            if len(names) == 1 and "service" in c.params:
                return {
                    "@type": "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
                    "service": self._service(names[0]),
                }
            return {
                "@type": "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse",
                "services": [self._service(n) for n in names],
            }

        op = self.fake.new_operation("serviceusage.enable", "serviceusage", on_done=done)
        return self.fake.render_operation(op, c.base_url)

    def disable(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        name = c.params["service"]

        def done() -> dict[str, Any]:
            self.fake.state["services"].discard(name)
            return {
                "@type": "type.googleapis.com/google.api.serviceusage.v1.DisableServiceResponse",
                "service": self._service(name),
            }

        op = self.fake.new_operation("serviceusage.disable", "serviceusage", on_done=done)
        return self.fake.render_operation(op, c.base_url)

    def get_op(self, c: Call) -> dict[str, Any]:
        return get_lro(self.fake, c, "operations/" + c.params["name"].removeprefix("operations/"))
