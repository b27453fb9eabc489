"""The VPC: a custom-mode network, the GKE subnet, private services access for Cloud SQL, and
Cloud NAT so private nodes (no external IP) can still pull images from public registries."""

from __future__ import annotations

from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.errors import CommandError, InUse, NotFound
from metaflow_gcp.gcp.gcloud import Gcloud, create_or_keep
from metaflow_gcp.gcp.operations import follow
from metaflow_gcp.graph import Outcome, StepRun

SERVICE = "servicenetworking.googleapis.com"
PEERING = "servicenetworking-googleapis-com"  # the VPC peering that connection makes
PSA_PREFIX_LENGTH = 16
IN_USE_WAIT = 15 * 60.0  # deletes wait this long for the producers (SQL, GKE) to let go


def describe_network(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe(*_NETWORK, "describe", *_network_where(n))


def describe_subnet(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe(*_SUBNET, "describe", *_subnet_where(n))


def subnet_status_facts(found: dict[str, Any] | None) -> dict[str, Any]:
    """What `inv status` shows of the subnet: its range."""
    return {"range": (found or {}).get("ipCidrRange")}


def describe_psa_range(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe(*_RANGE, "describe", *_range_where(n))


# Each resource's gcloud group, and the name and scope that pick ours out of it.
_NETWORK = ("compute", "networks")
_SUBNET = ("compute", "networks", "subnets")
_RANGE = ("compute", "addresses")


def _network_where(n: Names) -> tuple[str, ...]:
    return (n.network,)


def _subnet_where(n: Names) -> tuple[str, ...]:
    return (n.subnet, f"--region={n.region}")


def _range_where(n: Names) -> tuple[str, ...]:
    return (n.psa_range, "--global")


def ensure_network(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    return create_or_keep(
        run,
        f"create VPC network {n.network}",
        lambda: gcloud.mutate(
            "compute", "networks", "create", n.network, "--subnet-mode=custom", timeout=900
        ),
        lambda: describe_network(gcloud, n),
        cold=cold,
    )


def ensure_subnet(
    gcloud: Gcloud, s: Settings, n: Names, run: StepRun, *, cold: bool = False
) -> Outcome:
    def describe() -> object | None:
        found = describe_subnet(gcloud, n)
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
        lambda: describe_psa_range(gcloud, n),
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
    return gcloud.describe(*_router_args(n))


def prime_router(gcloud: Gcloud, n: Names, found: dict[str, Any] | None) -> None:
    """The next describe of the router answers with `found` (read a moment ago)."""
    gcloud.prime(found, *_router_args(n))


def _router_args(n: Names) -> tuple[str, ...]:
    return ("compute", "routers", "describe", n.router, f"--region={n.region}")


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


# -- teardown's steps ------------------------------------------------------------------------
#
# A real teardown deletes straight away and takes "not found" as already gone, which saves
# a describe on every link of the chain; only a preview (run.planning) looks first.


def remove_peering(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """Private services access, removed from the network's side of the peering (as the
    Cloud Console does). Service Networking's own delete is refused for days after a
    Cloud SQL instance is deleted, and the network goes next anyway: removing its side
    frees the range and the network at once."""
    if run.planning and not peerings(gcloud, n):
        return Outcome.GONE
    run.before_removal(f"delete private services access on {n.network}")
    run.note("removing the network's peering with Service Networking")
    return _delete_once(
        gcloud, "compute", "networks", "peerings", "delete", PEERING, f"--network={n.network}"
    )


def remove_psa_range(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    return _remove(gcloud, run, _RANGE, _range_where(n))


def remove_subnet(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    return _remove(gcloud, run, _SUBNET, _subnet_where(n))


def remove_network(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    return _remove(gcloud, run, _NETWORK, _network_where(n))


def remove_router(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """The Cloud Router; its Cloud NAT goes with it."""
    if run.planning and not (gcloud.dry_run or describe_router(gcloud, n)):
        return Outcome.GONE
    run.before_removal(f"delete Cloud Router {n.router} and its NAT {n.nat}")
    return _delete_once(gcloud, "compute", "routers", "delete", n.router, f"--region={n.region}")


def _delete_once(gcloud: Gcloud, *argv: str) -> Outcome:
    """One delete; "not found" means an earlier run (or someone) got there first."""
    try:
        gcloud.mutate(*argv, "--quiet", fmt=None, timeout=900)
    except NotFound:
        return Outcome.GONE
    return Outcome.DELETED


def _remove(gcloud: Gcloud, run: StepRun, kind: tuple[str, ...], where: tuple[str, ...]) -> Outcome:
    """Delete, retrying while a producer still lets go of it (a 400, or an operation that
    failed for it) for up to IN_USE_WAIT."""
    if run.planning and not (gcloud.dry_run or gcloud.describe(*kind, "describe", *where)):
        return Outcome.GONE
    name, scope = where[0], where[1:]
    run.before_removal(f"delete {' '.join(kind[1:])} {name}")
    gone = False

    def attempt() -> tuple[bool, str]:
        nonlocal gone
        try:
            gcloud.mutate(*kind, "delete", name, *scope, "--quiet", fmt=None, timeout=900)
        except NotFound:
            gone = True
            return True, "GONE"
        except InUse:
            return False, "STILL IN USE"
        return True, "DELETED"

    follow(run, f"deleting {name}", attempt, timeout=IN_USE_WAIT)
    return Outcome.GONE if gone else Outcome.DELETED
