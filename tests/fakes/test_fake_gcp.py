"""The fake GCP, specified by driving the REAL gcloud CLI against it.

Every command the product runs appears here at least once, and every rule the fake
enforces (because real GCP does) has a test named after it.  One gcloud process
costs about a second, so tests share the session servers and keep latencies at zero
unless the test is about an operation still running.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .cli import fails, gcloud, ok, ok_json
from .plugin import FakeCloud
from .seeds import (
    NET,
    RANGE,
    REGION,
    SUB,
    ZONE,
    seed_cluster,
    seed_private_network,
    seed_service_account,
    seed_sql_instance,
)

pytestmark = pytest.mark.integration

SERVICES = [
    "compute.googleapis.com",
    "container.googleapis.com",
    "sqladmin.googleapis.com",
    "servicenetworking.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
]
PEERING_SERVICE = "--service=servicenetworking.googleapis.com"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def sql_create_args(fake: FakeCloud, name: str) -> list[str]:
    # --allocated-ip-range-name exists only in the beta/alpha tracks of gcloud 528.
    return [
        "beta",
        "sql",
        "instances",
        "create",
        name,
        "--database-version=POSTGRES_16",
        "--edition=enterprise",
        "--tier=db-custom-1-3840",
        f"--region={REGION}",
        f"--network=projects/{fake.project}/global/networks/{NET}",
        "--no-assign-ip",
        f"--allocated-ip-range-name={RANGE}",
        "--backup-start-time=03:00",
    ]


def gke_create_args(fake: FakeCloud, name: str, sa: str) -> list[str]:
    return [
        "container",
        "clusters",
        "create",
        name,
        f"--location={ZONE}",
        f"--network={NET}",
        f"--subnetwork={SUB}",
        "--enable-ip-alias",
        f"--workload-pool={fake.project}.svc.id.goog",
        "--workload-metadata=GKE_METADATA",
        f"--service-account={sa}",
        "--scopes=cloud-platform",
        "--num-nodes=1",
        "--enable-autoscaling",
        "--min-nodes=1",
        "--max-nodes=5",
        "--machine-type=e2-standard-4",
        "--release-channel=regular",
    ]


# --------------------------------------------------------------------------------------
# Service Usage
# --------------------------------------------------------------------------------------
def test_apis_answer_service_disabled_until_enabled(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    fake.reset(enable_apis=False)
    fake.set_latency("serviceusage.enable", 1.0)

    assert ok_json(fake, "services", "list", "--enabled", f"--project={fake.project}") == []
    err = fails(fake, "compute", "networks", "describe", NET)
    assert "SERVICE_DISABLED" in err or "has not been used in project" in err
    err = fails(fake, "sql", "instances", "describe", "x")
    assert "Cloud SQL Admin API has not been used" in err

    ok(fake, "services", "enable", *SERVICES, f"--project={fake.project}")

    enabled = {s["config"]["name"] for s in ok_json(fake, "services", "list", "--enabled")}
    assert set(SERVICES) <= enabled
    assert "was not found" in fails(fake, "compute", "networks", "describe", NET)
    [enable] = fake.requests.of_kind("serviceusage.services.batchEnable")
    assert enable.body == {"serviceIds": SERVICES}


def test_services_enable_async_then_operations_describe_and_wait(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    fake.reset(enable_apis=False)
    fake.set_latency("serviceusage.enable", 120.0)  # in progress however slow the machine

    out = gcloud(
        fake, "services", "enable", "compute.googleapis.com", "iam.googleapis.com", "--async"
    )
    assert out.returncode == 0, out.stderr
    [op] = fake.operations("serviceusage.enable")
    assert op.name in out.stderr + out.stdout

    described = gcloud(fake, "services", "operations", "describe", op.name)
    assert "is still in progress" in described.stderr
    fake.finish_operations_in(1.0)
    ok(fake, "services", "operations", "wait", op.name)
    assert "complete" in gcloud(fake, "services", "operations", "describe", op.name).stderr
    assert {"compute.googleapis.com", "iam.googleapis.com"} <= fake.state["services"]


# --------------------------------------------------------------------------------------
# Compute: networks, subnets, global addresses
# --------------------------------------------------------------------------------------
def test_network_subnet_and_range_lifecycle(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    assert "was not found" in fails(fake, "compute", "networks", "describe", NET)
    ok(fake, "compute", "networks", "create", NET, "--subnet-mode=custom")
    assert ok_json(fake, "compute", "networks", "describe", NET)["autoCreateSubnetworks"] is False
    assert "already exists" in fails(
        fake, "compute", "networks", "create", NET, "--subnet-mode=custom"
    )

    ok(
        fake,
        "compute",
        "networks",
        "subnets",
        "create",
        SUB,
        f"--network={NET}",
        f"--region={REGION}",
        "--range=10.2.0.0/16",
        "--enable-private-ip-google-access",
    )
    sub = ok_json(fake, "compute", "networks", "subnets", "describe", SUB, f"--region={REGION}")
    assert sub["ipCidrRange"] == "10.2.0.0/16"
    assert sub["privateIpGoogleAccess"] is True

    ok(
        fake,
        "compute",
        "addresses",
        "create",
        RANGE,
        "--global",
        "--purpose=VPC_PEERING",
        "--prefix-length=16",
        f"--network={NET}",
    )
    addr = ok_json(fake, "compute", "addresses", "describe", RANGE, "--global")
    assert (addr["purpose"], addr["prefixLength"], addr["status"]) == (
        "VPC_PEERING",
        16,
        "RESERVED",
    )

    err = fails(fake, "compute", "networks", "delete", NET, "--quiet")
    assert "is already being used by" in err

    ok(fake, "compute", "networks", "subnets", "delete", SUB, f"--region={REGION}", "--quiet")
    ok(fake, "compute", "addresses", "delete", RANGE, "--global", "--quiet")
    ok(fake, "compute", "networks", "delete", NET, "--quiet")
    assert fake.state["networks"] == {}


def test_subnet_needs_an_existing_network(fake_cloud: FakeCloud) -> None:
    err = fails(
        fake_cloud,
        "compute",
        "networks",
        "subnets",
        "create",
        SUB,
        "--network=nope",
        f"--region={REGION}",
        "--range=10.2.0.0/16",
    )
    assert "projects/fake-project/global/networks/nope' was not found" in err


def test_compute_operation_can_be_described_until_done(fake_cloud: FakeCloud) -> None:
    # gcloud 528 has no --async for networks/subnets/addresses (nor `compute operations
    # wait`): start the insert in-process and look at it with `compute operations describe`.
    fake = fake_cloud
    fake.set_latency("compute.networks.insert", 60.0)
    fake.call(
        "POST",
        "compute",
        f"/v1/projects/{fake.project}/global/networks",
        {"name": NET, "autoCreateSubnetworks": False},
    )
    [op] = fake.operations("compute.networks.insert")
    running = ok_json(fake, "compute", "operations", "describe", op.name, "--global")
    assert running["status"] == "RUNNING"
    assert running["targetLink"].endswith(f"/global/networks/{NET}")

    fake.finish_all_operations()
    done = ok_json(fake, "compute", "operations", "describe", op.name, "--global")
    assert done["status"] == "DONE" and "error" not in done


def test_compute_blocking_create_waits_for_operation(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    fake.set_latency("compute.networks.insert", 1.0)
    ok(fake, "compute", "networks", "create", NET, "--subnet-mode=custom")
    assert fake.operations("compute.networks.insert")[0].done
    assert fake.requests.of_kind("compute.globalOperations.wait")


# --------------------------------------------------------------------------------------
# Service Networking (through the TLS-intercepting proxy)
# --------------------------------------------------------------------------------------
def test_peering_connect_list_and_delete_through_the_tls_proxy(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    listing = ["services", "vpc-peerings", "list", f"--network={NET}", PEERING_SERVICE]
    assert ok_json(fake, *listing) == []

    ok(
        fake,
        "services",
        "vpc-peerings",
        "connect",
        PEERING_SERVICE,
        f"--ranges={RANGE}",
        f"--network={NET}",
    )
    [conn] = ok_json(fake, *listing)
    assert conn["reservedPeeringRanges"] == [RANGE]
    assert conn["peering"] == "servicenetworking-googleapis-com"
    assert all(
        r.host == "servicenetworking.googleapis.com"
        for r in fake.requests.for_api("servicenetworking")
    )

    ok(fake, "services", "vpc-peerings", "delete", f"--network={NET}", PEERING_SERVICE, "--quiet")
    assert ok_json(fake, *listing) == []


def test_peering_async_connect_then_operations_describe_and_wait(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    fake.set_latency("servicenetworking.connect", 120.0)  # in progress however slow the machine
    ok(
        fake,
        "services",
        "vpc-peerings",
        "connect",
        PEERING_SERVICE,
        f"--ranges={RANGE}",
        f"--network={NET}",
        "--async",
    )
    [op] = fake.operations("servicenetworking.connect")
    described = gcloud(
        fake, "services", "vpc-peerings", "operations", "describe", f"--name={op.name}"
    )
    assert "is still in progress" in described.stderr
    fake.finish_operations_in(1.0)
    ok(fake, "services", "vpc-peerings", "operations", "wait", f"--name={op.name}")
    assert (
        "finished successfully"
        in gcloud(
            fake, "services", "vpc-peerings", "operations", "describe", f"--name={op.name}"
        ).stderr
    )
    assert NET in fake.state["connections"]


def test_peering_needs_an_allocated_range(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    err = fails(
        fake,
        "services",
        "vpc-peerings",
        "connect",
        PEERING_SERVICE,
        "--ranges=missing-range",
        f"--network={NET}",
    )
    assert "Allocated IP range 'missing-range' not found" in err


def test_peering_used_by_cloud_sql_cannot_be_deleted(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    seed_sql_instance(fake)
    err = fails(
        fake, "services", "vpc-peerings", "delete", f"--network={NET}", PEERING_SERVICE, "--quiet"
    )
    assert "Producer services (e.g. CloudSQL, Cloud Memstore, etc.) are still using" in err
    assert NET in fake.state["connections"]
    # ...and the range and network are in use by the peering.
    assert "is already being used by" in fails(
        fake, "compute", "addresses", "delete", RANGE, "--global", "--quiet"
    )


def test_a_deleted_sql_instance_holds_the_connection_until_the_peering_is_removed(
    fake_cloud: FakeCloud,
) -> None:
    """Cloud SQL lets go of private services access days after a delete; removing the
    network's side of the peering (as the console does) frees the range and network."""
    fake = fake_cloud
    seed_private_network(fake)
    seed_sql_instance(fake)
    ok(fake, "sql", "instances", "delete", "psql-seeded", "--quiet")
    err = fails(
        fake, "services", "vpc-peerings", "delete", f"--network={NET}", PEERING_SERVICE, "--quiet"
    )
    assert "are still using this connection" in err

    ok(
        fake,
        "compute",
        "networks",
        "peerings",
        "delete",
        "servicenetworking-googleapis-com",
        f"--network={NET}",
        "--quiet",
    )

    [remove] = fake.requests.of_kind("compute.networks.removePeering")
    assert remove.body == {"name": "servicenetworking-googleapis-com"}
    assert ok_json(fake, "services", "vpc-peerings", "list", f"--network={NET}") == []
    assert not ok_json(fake, "compute", "networks", "describe", NET).get("peerings")
    ok(fake, "compute", "addresses", "delete", RANGE, "--global", "--quiet")
    ok(fake, "compute", "networks", "subnets", "delete", SUB, f"--region={REGION}", "--quiet")
    ok(fake, "compute", "networks", "delete", NET, "--quiet")


# --------------------------------------------------------------------------------------
# IAM: service accounts and policies
# --------------------------------------------------------------------------------------
def test_service_account_lifecycle(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    email = f"mf-nodes@{fake.project}.iam.gserviceaccount.com"
    assert ok_json(fake, "iam", "service-accounts", "list") == []
    ok(fake, "iam", "service-accounts", "create", "mf-nodes", "--display-name=Metaflow nodes")
    [sa] = ok_json(fake, "iam", "service-accounts", "list")
    assert (sa["email"], sa["displayName"]) == (email, "Metaflow nodes")
    assert ok_json(fake, "iam", "service-accounts", "describe", email)["email"] == email
    assert "already exists" in fails(fake, "iam", "service-accounts", "create", "mf-nodes")
    ok(fake, "iam", "service-accounts", "delete", email, "--quiet")
    assert "NOT_FOUND" in fails(fake, "iam", "service-accounts", "describe", email)


def test_project_policy_set_with_stale_etag_is_aborted(
    fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    fake = fake_cloud
    policy = ok_json(fake, "projects", "get-iam-policy", fake.project)
    assert policy["etag"] and policy["bindings"]
    policy["bindings"].append({"role": "roles/viewer", "members": ["user:a@example.com"]})
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))

    fake.bump_project_iam_etag()  # someone else wrote in between
    err = fails(fake, "projects", "set-iam-policy", fake.project, str(policy_file))
    assert "There were concurrent policy changes" in err

    fresh = ok_json(fake, "projects", "get-iam-policy", fake.project)
    policy["etag"] = fresh["etag"]
    policy_file.write_text(json.dumps(policy))
    ok(fake, "projects", "set-iam-policy", fake.project, str(policy_file), "--format=json")
    roles = {b["role"] for b in fake.state["project_iam_policy"]["bindings"]}
    assert "roles/viewer" in roles


def test_conditional_project_bindings_add_and_remove(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    sa = seed_service_account(fake)
    member = f"--member=serviceAccount:{sa}"
    cond = (
        '--condition=expression=resource.name.startsWith("projects/_/buckets/mf"),'
        "title=mf-bucket-only"
    )
    ok(
        fake,
        "projects",
        "add-iam-policy-binding",
        fake.project,
        member,
        "--role=roles/storage.objectAdmin",
        cond,
        "--format=json",
    )
    policy = fake.state["project_iam_policy"]
    assert policy["version"] == 3
    [b] = [b for b in policy["bindings"] if b["role"] == "roles/storage.objectAdmin"]
    assert b["condition"]["title"] == "mf-bucket-only"

    ok(
        fake,
        "projects",
        "add-iam-policy-binding",
        fake.project,
        member,
        "--role=roles/logging.logWriter",
        "--condition=None",
        "--format=json",
    )
    ok(
        fake,
        "projects",
        "remove-iam-policy-binding",
        fake.project,
        member,
        "--role=roles/storage.objectAdmin",
        cond,
        "--format=json",
    )
    ok(
        fake,
        "projects",
        "remove-iam-policy-binding",
        fake.project,
        member,
        "--role=roles/logging.logWriter",
        "--all",
        "--format=json",
    )
    roles = {b["role"] for b in fake.state["project_iam_policy"]["bindings"]}
    assert roles == {"roles/owner"}


def test_add_binding_fails_on_a_concurrent_policy_change(fake_cloud: FakeCloud) -> None:
    # gcloud 528's add-iam-policy-binding does NOT retry a 409 itself: callers must.
    fake = fake_cloud
    sa = seed_service_account(fake)
    fake.concurrent_iam_change_after_get(times=1)
    binding = [
        "projects",
        "add-iam-policy-binding",
        fake.project,
        f"--member=serviceAccount:{sa}",
        "--role=roles/cloudsql.client",
        "--condition=None",
        "--format=json",
    ]
    err = fails(fake, *binding)
    assert "There were concurrent policy changes" in err
    assert [
        r.status for r in fake.requests.of_kind("cloudresourcemanager.projects.setIamPolicy")
    ] == [409]

    ok(fake, *binding)  # the retry reads the new etag and wins
    assert any(
        b["role"] == "roles/cloudsql.client" for b in fake.state["project_iam_policy"]["bindings"]
    )


def test_bindings_reject_unknown_roles_and_missing_service_accounts(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    sa = seed_service_account(fake)
    err = fails(
        fake,
        "projects",
        "add-iam-policy-binding",
        fake.project,
        f"--member=serviceAccount:{sa}",
        "--role=roles/storage.objAdmin",
        "--condition=None",
    )
    assert "Role roles/storage.objAdmin is not supported for this resource." in err

    ghost = f"ghost@{fake.project}.iam.gserviceaccount.com"
    err = fails(
        fake,
        "projects",
        "add-iam-policy-binding",
        fake.project,
        f"--member=serviceAccount:{ghost}",
        "--role=roles/storage.objectAdmin",
        "--condition=None",
    )
    assert f"Service account {ghost} does not exist." in err


def test_workload_identity_binding_needs_the_cluster_identity_pool(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake, "mf-workload")
    binding = [
        "--role=roles/iam.workloadIdentityUser",
        f"--member=serviceAccount:{fake.project}.svc.id.goog[metaflow/mf-ksa]",
    ]
    err = fails(fake, "iam", "service-accounts", "add-iam-policy-binding", sa, *binding)
    assert f"Identity Pool does not exist ({fake.project}.svc.id.goog)" in err

    seed_cluster(fake)
    ok(fake, "iam", "service-accounts", "add-iam-policy-binding", sa, *binding)
    policy = ok_json(fake, "iam", "service-accounts", "get-iam-policy", sa)
    assert policy["bindings"][0]["role"] == "roles/iam.workloadIdentityUser"
    ok(fake, "iam", "service-accounts", "remove-iam-policy-binding", sa, *binding)
    assert "bindings" not in fake.state["sa_iam_policies"][sa]


# --------------------------------------------------------------------------------------
# Secret Manager
# --------------------------------------------------------------------------------------
def test_secret_created_from_stdin_is_readable_then_deleted(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    assert "NOT_FOUND" in fails(fake, "secrets", "describe", "mf-db-password")
    ok(
        fake,
        "secrets",
        "create",
        "mf-db-password",
        "--replication-policy=automatic",
        "--data-file=-",
        stdin="s3cr3t value\n",
    )
    assert ok_json(fake, "secrets", "describe", "mf-db-password")["replication"] == {
        "automatic": {}
    }
    value = ok(fake, "secrets", "versions", "access", "latest", "--secret=mf-db-password")
    assert value == "s3cr3t value\n"
    assert "already exists" in fails(
        fake,
        "secrets",
        "create",
        "mf-db-password",
        "--replication-policy=automatic",
        "--data-file=-",
        stdin="x",
    )
    ok(fake, "secrets", "delete", "mf-db-password", "--quiet")
    assert fake.state["secrets"] == {}


# --------------------------------------------------------------------------------------
# Cloud SQL
# --------------------------------------------------------------------------------------
def test_sql_async_create_then_operations_list_describe_and_wait(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    fake.set_latency("sql.instances.insert", 120.0)
    op = ok_json(fake, *sql_create_args(fake, "psql-a"), "--async")
    assert op["operationType"] == "CREATE" and op["status"] in ("PENDING", "RUNNING")

    inst = ok_json(fake, "sql", "instances", "describe", "psql-a")
    assert inst["state"] == "PENDING_CREATE"
    ip = inst["settings"]["ipConfiguration"]
    assert ip["privateNetwork"].endswith(f"/networks/{NET}") and ip["allocatedIpRange"] == RANGE
    assert ip["ipv4Enabled"] is False
    assert inst["settings"]["backupConfiguration"]["startTime"] == "03:00"
    assert inst["settings"]["edition"] == "ENTERPRISE"

    [listed] = ok_json(fake, "sql", "operations", "list", "--instance=psql-a")
    assert (listed["name"], listed["status"]) == (op["name"], "RUNNING")
    assert ok_json(fake, "sql", "operations", "describe", op["name"])["status"] == "RUNNING"
    fake.finish_operations_in(2.0)
    ok(fake, "sql", "operations", "wait", op["name"], "--timeout=unlimited")
    assert ok_json(fake, "sql", "instances", "describe", "psql-a")["state"] == "RUNNABLE"


def test_sql_refuses_second_operation_while_one_runs(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    fake.set_latency("sql.instances.insert", 30.0)
    ok(fake, *sql_create_args(fake, "psql-busy"), "--async")
    err = fails(fake, "sql", "databases", "create", "metaflow", "--instance=psql-busy")
    assert "Operation failed because another operation was already in progress." in err
    assert "HTTPError 409" in err
    assert fake.state["sql_databases"].get("psql-busy", {}) == {}


def test_sql_databases_users_and_password_from_stdin(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    seed_sql_instance(fake, "psql-b")
    ok(fake, "sql", "databases", "create", "metaflow", "--instance=psql-b")
    names = {d["name"] for d in ok_json(fake, "sql", "databases", "list", "--instance=psql-b")}
    assert names == {"postgres", "metaflow"}

    # PostgreSQL refuses a built-in user without a password.
    err = fails(fake, "sql", "users", "create", "metaflow", "--instance=psql-b")
    assert "Missing user password for PostgreSQL instance" in err

    # --flags-file=- takes the flag from stdin, so the password is on no command line.
    ok(
        fake,
        "sql",
        "users",
        "create",
        "metaflow",
        "--instance=psql-b",
        "--flags-file=-",
        stdin=json.dumps({"--password": "pw-from-stdin"}),
    )
    users = {u["name"] for u in ok_json(fake, "sql", "users", "list", "--instance=psql-b")}
    assert users == {"postgres", "metaflow"}
    assert fake.state["sql_users"]["psql-b"]["metaflow"]["password"] == "pw-from-stdin"

    ok(
        fake,
        "sql",
        "users",
        "set-password",
        "metaflow",
        "--instance=psql-b",
        "--flags-file=-",
        stdin=json.dumps({"--password": "pw-2"}),
    )
    assert fake.state["sql_users"]["psql-b"]["metaflow"]["password"] == "pw-2"


def test_sql_set_password_with_prompts_disabled_sends_no_password(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    seed_sql_instance(fake, "psql-q")
    ok(
        fake,
        "sql",
        "users",
        "set-password",
        "postgres",
        "--instance=psql-q",
        "--prompt-for-password",
        stdin="never-read\n",
        new_session=True,
    )
    [update] = fake.requests.of_kind("sql.users.update")
    assert "password" not in update.body
    assert "password" not in fake.state["sql_users"]["psql-q"]["postgres"]


def test_sql_deleted_instance_names_stay_reserved(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    err = fails(fake, "sql", "instances", "describe", "psql-old")
    assert "HTTPError 404: The Cloud SQL instance does not exist." in err
    seed_sql_instance(fake, "psql-old")
    err = fails(fake, *sql_create_args(fake, "psql-old"), "--async")
    assert "The Cloud SQL instance already exists." in err

    ok(fake, "sql", "instances", "delete", "psql-old", "--quiet", "--async")
    assert "psql-old" not in fake.state["sql_instances"]
    err = fails(fake, *sql_create_args(fake, "psql-old"), "--async")
    assert "you can't reuse the name of the deleted instance until one week" in err

    fake.reserve_sql_name("psql-other")
    assert "one week" in fails(fake, *sql_create_args(fake, "psql-other"), "--async")
    [req] = [r for r in fake.requests.of_kind("sql.instances.insert") if r.status == 409][-1:]
    assert req.body["name"] == "psql-other"


def test_sql_blocking_create_waits_then_instance_is_runnable(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    fake.set_latency("sql.instances.insert", 1.5)
    ok(fake, *sql_create_args(fake, "psql-c"))
    assert fake.state["sql_instances"]["psql-c"]["state"] == "RUNNABLE"
    assert len(fake.requests.of_kind("sql.operations.get")) >= 2


def test_sql_create_without_private_services_connection_fails(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    err = fails(fake, *sql_create_args(fake, "psql-nopeer"))
    assert "Please create Service Networking connection" in err
    assert fake.state["sql_instances"]["psql-nopeer"]["state"] == "FAILED"


# --------------------------------------------------------------------------------------
# GKE
# --------------------------------------------------------------------------------------
def test_gke_async_create_operations_credentials_and_delete(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake)
    fake.set_latency("container.clusters.create", 60.0)  # in progress however slow the machine
    assert "Not found" in fails(
        fake, "container", "clusters", "describe", "mf-gke", f"--location={ZONE}"
    )

    created = ok_json(fake, *gke_create_args(fake, "mf-gke", sa), "--async")
    assert created["status"] == "PROVISIONING"
    [spec] = fake.requests.of_kind("container.clusters.create")
    cluster = spec.body["cluster"]
    assert cluster["workloadIdentityConfig"]["workloadPool"] == f"{fake.project}.svc.id.goog"
    assert cluster["nodePools"][0]["autoscaling"] == {
        "enabled": True,
        "minNodeCount": 1,
        "maxNodeCount": 5,
    }
    assert cluster["nodePools"][0]["config"]["serviceAccount"] == sa

    [op] = ok_json(fake, "container", "operations", "list", f"--location={ZONE}")
    assert op["status"] == "RUNNING" and op["operationType"] == "CREATE_CLUSTER"
    assert (
        ok_json(fake, "container", "operations", "describe", op["name"], f"--location={ZONE}")[
            "status"
        ]
        == "RUNNING"
    )
    fake.finish_all_operations()  # gcloud polls container operations every 5 s
    ok(fake, "container", "operations", "wait", op["name"], f"--location={ZONE}")
    assert (
        ok_json(fake, "container", "clusters", "describe", "mf-gke", f"--location={ZONE}")["status"]
        == "RUNNING"
    )

    ok(fake, "container", "clusters", "get-credentials", "mf-gke", f"--location={ZONE}")
    kubeconfig = Path(fake.env["KUBECONFIG"]).read_text()
    assert f"gke_{fake.project}_{ZONE}_mf-gke" in kubeconfig

    err = fails(
        fake, "compute", "networks", "subnets", "delete", SUB, f"--region={REGION}", "--quiet"
    )
    assert "is already being used by" in err

    ok(
        fake,
        "container",
        "clusters",
        "delete",
        "mf-gke",
        f"--location={ZONE}",
        "--quiet",
        "--async",
    )
    fake.finish_all_operations()
    assert fake.state["clusters"] == {}


def test_gke_blocking_create(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake)
    ok(fake, *gke_create_args(fake, "mf-gke", sa))
    assert fake.state["clusters"][f"{ZONE}/mf-gke"]["status"] == "RUNNING"
    assert Path(fake.env["KUBECONFIG"]).exists()
    assert "Already exists" in fails(fake, *gke_create_args(fake, "mf-gke", sa), "--async")


def test_gke_create_needs_an_existing_subnet(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake)
    args = gke_create_args(fake, "mf-gke", sa)
    args[args.index(f"--subnetwork={SUB}")] = "--subnetwork=nope"
    err = fails(fake, *args, "--async")
    assert 'Subnetwork "projects/fake-project/regions/us-west2/subnetworks/nope"' in err


def test_gke_hardening_fields_are_kept_the_way_the_api_returns_them(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake)
    ok(
        fake,
        *gke_create_args(fake, "mf-gke", sa),
        "--async",
        "--enable-dataplane-v2",
        "--enable-private-nodes",
        "--shielded-secure-boot",
        "--shielded-integrity-monitoring",
        "--no-enable-insecure-kubelet-readonly-port",
        "--enable-master-authorized-networks",
        "--master-authorized-networks=203.0.113.0/24",
    )
    fake.finish_all_operations()
    found = ok_json(fake, "container", "clusters", "describe", "mf-gke", f"--location={ZONE}")
    assert found["networkConfig"]["datapathProvider"] == "ADVANCED_DATAPATH"
    assert found["privateClusterConfig"]["enablePrivateNodes"] is True
    [pool] = found["nodePools"]
    assert pool["networkConfig"]["enablePrivateNodes"] is True
    assert pool["config"]["shieldedInstanceConfig"]["enableSecureBoot"] is True
    assert pool["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"] is False
    assert found["masterAuthorizedNetworksConfig"] == {
        "enabled": True,
        "cidrBlocks": [{"cidrBlock": "203.0.113.0/24"}],
    }
    ok(fake, "container", "clusters", "get-credentials", "mf-gke", f"--location={ZONE}")


def test_a_pool_added_later_takes_the_cluster_defaults_unless_its_create_says(
    fake_cloud: FakeCloud,
) -> None:
    """What GKE does, and why our pool creates state their hardening: today's clusters
    default to public nodes and the read-only kubelet port."""
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    seed_cluster(fake)  # no hardening defaults
    where = ("--cluster=mf-gke", f"--location={ZONE}", "--num-nodes=0", "--async")
    ok(fake, "container", "node-pools", "create", "plain", *where)
    fake.finish_all_operations()
    ok(
        fake,
        "container",
        "node-pools",
        "create",
        "hardened",
        *where,
        "--enable-private-nodes",
        "--no-enable-insecure-kubelet-readonly-port",
        "--shielded-secure-boot",
        "--shielded-integrity-monitoring",
    )
    fake.finish_all_operations()
    pools = {p["name"]: p for p in fake.state["clusters"][f"{ZONE}/mf-gke"]["nodePools"]}
    plain, hardened = pools["plain"], pools["hardened"]
    assert plain["networkConfig"]["enablePrivateNodes"] is False
    assert plain["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"] is True
    assert plain["config"]["shieldedInstanceConfig"]["enableSecureBoot"] is False
    assert hardened["networkConfig"]["enablePrivateNodes"] is True
    assert hardened["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"] is False
    assert hardened["config"]["shieldedInstanceConfig"]["enableSecureBoot"] is True


def test_gke_updates_in_place_what_gke_allows_and_refuses_the_rest(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    seed_cluster(fake)  # today's shape: no hardening flags
    cluster = fake.state["clusters"][f"{ZONE}/mf-gke"]
    assert cluster["networkConfig"]["datapathProvider"] == "LEGACY_DATAPATH"
    assert cluster["nodePools"][0]["config"]["kubeletConfig"] == {
        "insecureKubeletReadonlyPortEnabled": True
    }
    where = ("mf-gke", f"--location={ZONE}", "--quiet")
    ok(fake, "container", "clusters", "update", *where, "--enable-private-nodes")
    ok(
        fake,
        "container",
        "clusters",
        "update",
        *where,
        "--no-enable-insecure-kubelet-readonly-port",
    )
    ok(
        fake,
        "container",
        "clusters",
        "update",
        *where,
        "--enable-master-authorized-networks",
        "--master-authorized-networks=198.51.100.0/24",
    )
    pool = ("default-pool", "--cluster=mf-gke", f"--location={ZONE}", "--quiet")
    ok(fake, "container", "node-pools", "update", *pool, "--enable-private-nodes")
    ok(
        fake,
        "container",
        "node-pools",
        "update",
        *pool,
        "--no-enable-insecure-kubelet-readonly-port",
    )
    found = fake.state["clusters"][f"{ZONE}/mf-gke"]
    assert found["status"] == "RUNNING"
    assert found["networkConfig"]["defaultEnablePrivateNodes"] is True
    assert found["nodePools"][0]["networkConfig"]["enablePrivateNodes"] is True
    assert (
        found["nodePools"][0]["config"]["kubeletConfig"]["insecureKubeletReadonlyPortEnabled"]
        is False
    )
    assert found["masterAuthorizedNetworksConfig"]["cidrBlocks"] == [
        {"cidrBlock": "198.51.100.0/24"}
    ]
    update_help = ok(
        fake, "container", "clusters", "update", "--help", env={"TERM": "dumb", "PAGER": "cat"}
    )
    assert not re.search(r"--enable-dataplane-v2\b(?!-)", update_help), (
        "GKE picks the dataplane at creation only"
    )


def test_cloud_nat_lives_in_its_router_and_keeps_the_network_in_use(
    fake_cloud: FakeCloud,
) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    at = ("--router=r", f"--region={REGION}")
    ok(fake, "compute", "routers", "create", "r", f"--network={NET}", f"--region={REGION}")
    assert "NAT `nat` not found" in fails(
        fake, "compute", "routers", "nats", "describe", "nat", *at
    )
    ok(
        fake,
        "compute",
        "routers",
        "nats",
        "create",
        "nat",
        *at,
        "--auto-allocate-nat-external-ips",
        "--nat-all-subnet-ip-ranges",
    )
    nat = ok_json(fake, "compute", "routers", "nats", "describe", "nat", *at)
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"
    assert nat["natIpAllocateOption"] == "AUTO_ONLY"
    ok(fake, "compute", "networks", "subnets", "delete", SUB, f"--region={REGION}", "--quiet")
    ok(fake, "compute", "addresses", "delete", RANGE, "--global", "--quiet")
    assert "routers/r" in fails(fake, "compute", "networks", "delete", NET, "--quiet")
    ok(fake, "compute", "routers", "delete", "r", f"--region={REGION}", "--quiet")
    assert fake.state["routers"] == {}
    ok(fake, "compute", "networks", "delete", NET, "--quiet")


def test_sql_hardening_patch_merges_and_deletion_protection_blocks_the_delete(
    fake_cloud: FakeCloud,
) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    seed_sql_instance(fake)
    settings = fake.state["sql_instances"]["psql-seeded"]["settings"]
    assert settings["connectorEnforcement"] == "NOT_REQUIRED"
    assert settings["ipConfiguration"]["sslMode"] == "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
    ok(
        fake,
        "sql",
        "instances",
        "patch",
        "psql-seeded",
        "--connector-enforcement=REQUIRED",
        "--ssl-mode=ENCRYPTED_ONLY",
        "--deletion-protection",
        "--enable-point-in-time-recovery",
        "--quiet",
    )
    settings = fake.state["sql_instances"]["psql-seeded"]["settings"]
    assert settings["connectorEnforcement"] == "REQUIRED"
    assert settings["ipConfiguration"] == {
        **settings["ipConfiguration"],
        "sslMode": "ENCRYPTED_ONLY",
        "ipv4Enabled": False,
    }
    assert settings["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
    assert "protected from deletion" in fails(
        fake, "sql", "instances", "delete", "psql-seeded", "--quiet"
    )
    ok(fake, "sql", "instances", "patch", "psql-seeded", "--no-deletion-protection", "--quiet")
    ok(fake, "sql", "instances", "delete", "psql-seeded", "--quiet")
    assert "psql-seeded" not in fake.state["sql_instances"]


def test_an_injected_failure_can_leave_the_resource_broken_as_gcp_does(
    fake_cloud: FakeCloud,
) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    sa = seed_service_account(fake)
    fake.fail_next(
        kind="container.clusters.create",
        operation_error=True,
        leave_broken=True,
        message="stockout",
    )
    ok(fake, *gke_create_args(fake, "mf-gke", sa), "--async")
    fake.finish_all_operations()
    assert fake.state["clusters"][f"{ZONE}/mf-gke"]["status"] == "ERROR"


# --------------------------------------------------------------------------------------
# Cloud Storage (fake-gcs-server, reached through the same proxy settings)
# --------------------------------------------------------------------------------------
def test_storage_commands_work_with_the_combined_environment(
    fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    fake = fake_cloud
    bucket = "gs://mf-fake-bucket"
    assert "not found" in fails(fake, "storage", "buckets", "describe", bucket)
    ok(
        fake,
        "storage",
        "buckets",
        "create",
        bucket,
        f"--location={REGION}",
        "--uniform-bucket-level-access",
        "--public-access-prevention",
    )
    ok(fake, "storage", "buckets", "update", bucket, "--versioning")
    assert ok_json(fake, "storage", "buckets", "describe", bucket)["versioning_enabled"] is True

    src = tmp_path / "state.json"
    src.write_text('{"v": 1}')
    ok(fake, "storage", "cp", str(src), f"{bucket}/state.json", "--if-generation-match=0")
    assert "412" in fails(
        fake, "storage", "cp", str(src), f"{bucket}/state.json", "--if-generation-match=0"
    )
    gen = ok_json(fake, "storage", "objects", "describe", f"{bucket}/state.json")["generation"]
    src.write_text('{"v": 2}')
    ok(fake, "storage", "cp", str(src), f"{bucket}/state.json", f"--if-generation-match={gen}")
    assert "412" in fails(
        fake, "storage", "cp", str(src), f"{bucket}/state.json", f"--if-generation-match={gen}"
    )
    assert ok(fake, "storage", "cat", f"{bucket}/state.json") == '{"v": 2}'

    ok(fake, "storage", "rm", "-r", f"{bucket}/**")
    ok(fake, "storage", "buckets", "delete", bucket)
    assert fake.gcs.bucket_names() == []
    assert fake.requests.for_api("storage"), "storage traffic is expected to use the proxy"


# --------------------------------------------------------------------------------------
# Test hooks: failure injection and the request log
# --------------------------------------------------------------------------------------
def test_fail_next_fails_exactly_one_matching_request(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    fake.fail_next(kind="compute.networks.insert", status=503, message="backend hiccup")
    assert "backend hiccup" in fails(
        fake, "compute", "networks", "create", NET, "--subnet-mode=custom"
    )
    ok(fake, "compute", "networks", "create", NET, "--subnet-mode=custom")

    fake.fail_next(method="GET", path=r"/secrets/mf$", status=403, message="nope, not you")
    assert "nope, not you" in fails(fake, "secrets", "describe", "mf")


def test_operation_error_is_reported_by_gcloud(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake, peering=False)
    fake.fail_next(
        kind="servicenetworking.connect",
        operation_error=True,
        status=400,
        message="quota exhausted for peering",
    )
    err = fails(
        fake,
        "services",
        "vpc-peerings",
        "connect",
        PEERING_SERVICE,
        f"--ranges={RANGE}",
        f"--network={NET}",
    )
    assert "quota exhausted for peering" in err
    assert fake.state["connections"] == {}


def test_injected_sql_operation_error_rolls_the_instance_back(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    fake.fail_next(
        kind="sql.instances.insert",
        operation_error=True,
        message="the zone ran out of resources",
        reason="INTERNAL_ERROR",
    )
    err = fails(fake, *sql_create_args(fake, "psql-retry"))
    assert "[INTERNAL_ERROR] the zone ran out of resources" in err
    assert "psql-retry" not in fake.state["sql_instances"]  # and the name is not reserved
    ok(fake, *sql_create_args(fake, "psql-retry"), "--async")
    assert fake.state["sql_instances"]["psql-retry"]["state"] == "RUNNABLE"


def test_request_log_shows_a_rerun_of_reads_is_not_mutating(fake_cloud: FakeCloud) -> None:
    fake = fake_cloud
    seed_private_network(fake)
    ok(fake, "compute", "networks", "describe", NET)
    ok(fake, "services", "vpc-peerings", "list", f"--network={NET}", PEERING_SERVICE)
    ok(fake, "projects", "get-iam-policy", fake.project)
    assert fake.requests and fake.requests.mutating() == []
    assert {r.kind for r in fake.requests} >= {
        "compute.networks.get",
        "servicenetworking.list",
        "cloudresourcemanager.projects.getIamPolicy",
    }
