"""The VPC: a custom-mode network, the GKE subnet, and private services access for Cloud SQL."""

from __future__ import annotations

from typing import Any

from metaflow_gcp.config import Names, Settings
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, StepRun

SERVICE = "servicenetworking.googleapis.com"
PSA_PREFIX_LENGTH = 16


def ensure_network(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    if gcloud.describe("compute", "networks", "describe", n.network) is not None:
        return Outcome.KEPT
    run.before_change(f"create VPC network {n.network}")
    gcloud.mutate("compute", "networks", "create", n.network, "--subnet-mode=custom", timeout=900)
    return Outcome.CREATED


def ensure_subnet(gcloud: Gcloud, s: Settings, n: Names, run: StepRun) -> Outcome:
    found = gcloud.describe(
        "compute", "networks", "subnets", "describe", n.subnet, f"--region={n.region}"
    )
    if found is not None:
        if found.get("ipCidrRange") != s.subnet_range:
            run.note(f"range is {found.get('ipCidrRange')}, settings say {s.subnet_range}")
        return Outcome.KEPT
    run.before_change(f"create subnet {n.subnet} ({s.subnet_range})")
    gcloud.mutate(
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
    )
    return Outcome.CREATED


def ensure_psa_range(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    if gcloud.describe("compute", "addresses", "describe", n.psa_range, "--global") is not None:
        return Outcome.KEPT
    run.before_change(f"reserve private services range {n.psa_range}")
    gcloud.mutate(
        "compute",
        "addresses",
        "create",
        n.psa_range,
        "--global",
        "--purpose=VPC_PEERING",
        f"--prefix-length={PSA_PREFIX_LENGTH}",
        f"--network={n.network}",
        timeout=900,
    )
    return Outcome.CREATED


def peerings(gcloud: Gcloud, n: Names) -> list[dict[str, Any]]:
    found = gcloud.read(
        "services", "vpc-peerings", "list", f"--network={n.network}", f"--service={SERVICE}", dry=[]
    )
    return list(found or [])


def ensure_peering(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    if any(n.psa_range in p.get("reservedPeeringRanges", []) for p in peerings(gcloud, n)):
        return Outcome.KEPT
    run.before_change(f"connect private services access on {n.network}")
    run.note("connecting private services access")
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
    return Outcome.CREATED
