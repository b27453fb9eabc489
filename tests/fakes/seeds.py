"""Resources put straight into the fake (no gcloud): the world a test starts from.

Shared by the fake's own specification and by integration tests that need, say, a network
with its peering before the product's first command.
"""

from __future__ import annotations

from .plugin import FakeCloud

REGION = "us-west2"
ZONE = "us-west2-a"
NET, SUB, RANGE = "mf-net", "mf-subnet", "mf-psa-range"


def seed_private_network(fake: FakeCloud, *, peering: bool = True) -> None:
    """Network + subnet + PSA range (+ peering) straight through the fake, no gcloud."""
    fake.call(
        "POST",
        "compute",
        f"/v1/projects/{fake.project}/global/networks",
        {"name": NET, "autoCreateSubnetworks": False},
    )
    fake.call(
        "POST",
        "compute",
        f"/v1/projects/{fake.project}/regions/{REGION}/subnetworks",
        {
            "name": SUB,
            "network": f"projects/{fake.project}/global/networks/{NET}",
            "ipCidrRange": "10.2.0.0/16",
            "privateIpGoogleAccess": True,
        },
    )
    fake.call(
        "POST",
        "compute",
        f"/v1/projects/{fake.project}/global/addresses",
        {
            "name": RANGE,
            "purpose": "VPC_PEERING",
            "addressType": "INTERNAL",
            "prefixLength": 16,
            "network": f"projects/{fake.project}/global/networks/{NET}",
        },
    )
    if peering:
        fake.call(
            "POST",
            "servicenetworking",
            "/v1/services/servicenetworking.googleapis.com/connections",
            {
                "network": f"projects/{fake.project_number}/global/networks/{NET}",
                "reservedPeeringRanges": [RANGE],
            },
        )
    fake.finish_all_operations()
    fake.requests.clear()


def seed_service_account(fake: FakeCloud, account_id: str = "mf-nodes") -> str:
    fake.call(
        "POST", "iam", f"/v1/projects/{fake.project}/serviceAccounts", {"accountId": account_id}
    )
    fake.requests.clear()
    return f"{account_id}@{fake.project}.iam.gserviceaccount.com"


def seed_sql_instance(fake: FakeCloud, name: str = "psql-seeded") -> None:
    fake.call(
        "POST",
        "sqladmin",
        f"/sql/v1beta4/projects/{fake.project}/instances",
        {
            "name": name,
            "region": REGION,
            "databaseVersion": "POSTGRES_16",
            "settings": {
                "tier": "db-custom-1-3840",
                "ipConfiguration": {
                    "ipv4Enabled": False,
                    "privateNetwork": f"projects/{fake.project}/global/networks/{NET}",
                    "allocatedIpRange": RANGE,
                },
            },
        },
    )
    fake.finish_all_operations()
    fake.requests.clear()


def seed_cluster(fake: FakeCloud, name: str = "mf-gke") -> None:
    fake.call(
        "POST",
        "container",
        f"/v1/projects/{fake.project}/locations/{ZONE}/clusters",
        {
            "cluster": {
                "name": name,
                "network": NET,
                "subnetwork": SUB,
                "workloadIdentityConfig": {"workloadPool": f"{fake.project}.svc.id.goog"},
                "nodePools": [{"name": "default-pool", "initialNodeCount": 1}],
            }
        },
    )
    fake.finish_all_operations()
    fake.requests.clear()
