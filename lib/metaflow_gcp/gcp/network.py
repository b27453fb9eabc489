"""The VPC: a custom-mode network, the GKE subnet, private services access for Cloud SQL, and
Cloud NAT so private nodes (no external IP) can still pull images from public registries."""

from __future__ import annotations

from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import CommandError
from metaflow_gcp.gcp.gcloud import Gcloud, create_or_keep
from metaflow_gcp.graph import Outcome, StepRun

SERVICE = "servicenetworking.googleapis.com"
PEERING = "servicenetworking-googleapis-com"  # the VPC peering that connection makes
PSA_PREFIX_LENGTH = 16


def ensure_network(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    return create_or_keep(
        run,
        f"create VPC network {n.network}",
        lambda: gcloud.mutate(
            "compute", "networks", "create", n.network, "--subnet-mode=custom", timeout=900
        ),
        lambda: gcloud.describe("compute", "networks", "describe", n.network),
        cold=cold,
    )


def ensure_subnet(
    gcloud: Gcloud, s: Settings, n: Names, run: StepRun, *, cold: bool = False
) -> Outcome:
    def describe() -> object | None:
        found = gcloud.describe(
            "compute", "networks", "subnets", "describe", n.subnet, f"--region={n.region}"
        )
        if found is not None and found.get("ipCidrRange") != s.subnet_range:
            run.note(f"range is {found.get('ipCidrRange')}, settings say {s.subnet_range}")
        return found

    return create_or_keep(
        run,
        f"create subnet {n.subnet} ({s.subnet_range})",
        lambda: gcloud.mutate(
            "compute",
            "networks",
            "subnets",
            "create",
            n.subnet,
            f"--network={n.network}",
            f"--region={n.region}",
            f"--range={s.subnet_range}",
            "--enable-private-ip-google-access",
            timeout=900,
        ),
        describe,
        cold=cold,
    )


def ensure_psa_range(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    return create_or_keep(
        run,
        f"reserve private services range {n.psa_range}",
        lambda: gcloud.mutate(
            "compute",
            "addresses",
            "create",
            n.psa_range,
            "--global",
            "--purpose=VPC_PEERING",
            f"--prefix-length={PSA_PREFIX_LENGTH}",
            f"--network={n.network}",
            timeout=900,
        ),
        lambda: gcloud.describe("compute", "addresses", "describe", n.psa_range, "--global"),
        cold=cold,
    )


def peerings(gcloud: Gcloud, n: Names) -> list[dict[str, Any]]:
    found = gcloud.read(
        "services", "vpc-peerings", "list", f"--network={n.network}", f"--service={SERVICE}", dry=[]
    )
    return list(found or [])


def ensure_peering(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    def connected() -> bool:
        return any(n.psa_range in p.get("reservedPeeringRanges", []) for p in peerings(gcloud, n))

    if not cold and connected():
        return Outcome.KEPT
    run.before_change(f"connect private services access on {n.network}")
    run.note("connecting private services access")
    try:
        _connect(gcloud, n)
    except CommandError:
        if cold and connected():  # it existed after all ("use UpdateConnection")
            return Outcome.KEPT
        raise
    return Outcome.CREATED


def _connect(gcloud: Gcloud, n: Names) -> None:
    gcloud.mutate(
        "services",
        "vpc-peerings",
        "connect",
        f"--service={SERVICE}",
        f"--ranges={n.psa_range}",
        f"--network={n.network}",
        timeout=1800,
        fmt=None,
    )


# -- Cloud NAT --------------------------------------------------------------------------


def router_create_args(n: Names) -> list[str]:
    """The router's create command (bench/infra_up.py times the same one, blocking)."""
    return [
        "compute",
        "routers",
        "create",
        n.router,
        f"--network={n.network}",
        f"--region={n.region}",
    ]


def nat_create_args(n: Names) -> list[str]:
    """Outbound-only NAT for every subnet range of the region."""
    return [
        "compute",
        "routers",
        "nats",
        "create",
        n.nat,
        f"--router={n.router}",
        f"--region={n.region}",
        "--auto-allocate-nat-external-ips",
        "--nat-all-subnet-ip-ranges",
    ]


def describe_router(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe("compute", "routers", "describe", n.router, f"--region={n.region}")


def ensure_router(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    """The Cloud Router that carries the NAT (no BGP: it only hosts the NAT config)."""
    return create_or_keep(
        run,
        f"create Cloud Router {n.router} in {n.region}",
        lambda: gcloud.mutate(*router_create_args(n), timeout=900),
        lambda: describe_router(gcloud, n),
        cold=cold,
    )


def ensure_nat(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    """Outbound-only NAT for every range of the region's subnets; nothing can reach in."""
    return create_or_keep(
        run,
        f"create Cloud NAT {n.nat} (outbound only, for image pulls)",
        lambda: gcloud.mutate(*nat_create_args(n), timeout=900, fmt=None),
        lambda: gcloud.describe(
            "compute",
            "routers",
            "nats",
            "describe",
            n.nat,
            f"--router={n.router}",
            f"--region={n.region}",
        ),
        cold=cold,
    )


def delete_router(gcloud: Gcloud, n: Names) -> None:
    """Deleting the router deletes its NAT with it."""
    gcloud.mutate(
        "compute",
        "routers",
        "delete",
        n.router,
        f"--region={n.region}",
        "--quiet",
        fmt=None,
        timeout=900,
    )
