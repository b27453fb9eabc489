"""The whole lifecycle with the real gcloud: up, teardown, up again, teardown --delete-data."""

from __future__ import annotations

import pytest

from metaflow_gcp import day2, infra, teardown
from metaflow_gcp.errors import StackError
from metaflow_gcp.gcp import gke
from metaflow_gcp.graph import Outcome, run_steps
from tests.fakes.plugin import FakeCloud
from tests.integration.stacks import make_stack, output

pytestmark = pytest.mark.integration

DATA, STATE = "acme-fake-project-mf-it", "acme-fake-project-mf-state"


def buckets(fake: FakeCloud) -> set[str]:
    return set(fake.gcs.bucket_names())


def cloud_resources(fake: FakeCloud) -> dict[str, list[str]]:
    state = fake.state
    return {
        key: sorted(state[key])
        for key in ("networks", "subnetworks", "addresses", "connections", "service_accounts",
                    "secrets", "sql_instances", "clusters", "routers")
        if state[key]
    }


def test_up_teardown_up_again_with_a_new_db_name_then_delete_everything(
    finished_stack: FakeCloud,
) -> None:
    fake_cloud = finished_stack  # one cold infra.up (tests/integration/conftest.py)
    assert "mf-it-pg-0" in fake_cloud.state["sql_instances"]

    seen = day2.collect_status(make_stack(fake_cloud))
    assert [row["resource"] for row in seen["resources"] if not row["exists"]] == []
    assert seen["state"]["db_generation"] == 0 and seen["state"]["lock"] is None
    assert seen["state"]["infra_converged"] is True

    # The preview teardown shows before it asks: every line a removal, and nothing changed.
    before = len(fake_cloud.requests)
    look = make_stack(fake_cloud)
    preview = run_steps(
        teardown.Teardown(look, delete_data=False).steps(),
        console=look.console,
        title="preview",
        plan=True,
        keep_going=True,
    )
    planned = {n: s.note for n, s in preview.states.items() if s.outcome is Outcome.PLANNED}
    assert set(planned) == {"gke", "sql", "peering", "psa_range", "subnet", "router", "network",
                            "bindings", "accounts"}, preview.states
    assert all(note.startswith(("delete", "remove")) for note in planned.values()), planned
    assert "keeping a final backup for 30 days" in planned["sql"]
    assert [r for r in fake_cloud.requests[before:] if r.is_mutating] == []

    down = make_stack(fake_cloud)
    report = teardown.run(down)
    assert report.ok, output(down)
    assert cloud_resources(fake_cloud) == {"secrets": ["mf-it-db-password"]}, (
        "a restore of the final backup needs the database password"
    )
    assert "lifting the deletion protection of mf-it-pg-0" in output(down)
    assert buckets(fake_cloud) == {DATA, STATE}, "data and state are kept without --delete-data"
    assert "kept: your data in gs://" + DATA in output(down)
    assert fake_cloud.state["sql_final_backups"] == [
        {
            "instance": "mf-it-pg-0",
            "ttlDays": 30,
            "description": "metaflow-gcp teardown of stack it",
            "databases": ["metaflow", "postgres"],
        }
    ], "the run history in the metadata database is data too"
    assert "a final backup of the metadata database for 30 days" in output(down)
    doc = down.state.peek()
    assert doc is not None and doc["db_generation"] == 1 and doc["lock"] is None
    policy = fake_cloud.state["project_iam_policy"]["bindings"]
    assert not any("mf-it-" in m for b in policy for m in b["members"])

    assert len(fake_cloud.requests.of_kind("compute.networks.removePeering")) == 1, (
        "Cloud SQL still holds the connection: the network's side of the peering goes"
    )
    assert not fake_cloud.requests.of_kind("servicenetworking.delete"), (
        "Service Networking's delete, refused for days after an instance is deleted, is not tried"
    )
    assert not gke.has_context(down.names.kube_context, fake_cloud.env), "no stale context"

    again = make_stack(fake_cloud)
    assert infra.up(again).ok, output(again)  # type: ignore[union-attr]
    assert list(fake_cloud.state["sql_instances"]) == ["mf-it-pg-1"]
    [cluster] = fake_cloud.state["clusters"].values()
    assert gke.context_server(again.names.kube_context, fake_cloud.env) == (
        f"https://{cluster['endpoint']}"
    ), "kubectl points at the new cluster"
    assert "refused the name" not in output(again), "the counter moved on; no 409 needed"

    gone = make_stack(fake_cloud)
    report = teardown.run(gone, delete_data=True)
    assert report.ok, output(gone)
    assert report.outcomes()["bucket"] is Outcome.DELETED
    assert report.outcomes()["secrets"] is Outcome.DELETED
    assert cloud_resources(fake_cloud) == {}
    assert buckets(fake_cloud) == {STATE}
    assert [b["instance"] for b in fake_cloud.state["sql_final_backups"]] == ["mf-it-pg-0"], (
        "--delete-data deletes the database without a final backup"
    )

    # Teardown is idempotent: a second one finds everything gone and changes nothing.
    before = len(fake_cloud.requests)
    twice = make_stack(fake_cloud)
    report = teardown.run(twice, delete_data=True)
    assert set(report.outcomes().values()) <= {Outcome.GONE, Outcome.SKIPPED}
    changed = [
        r
        for r in fake_cloud.requests[before:]
        if r.is_mutating and r.api != "storage" and r.status < 400  # a 404 delete changes nothing
    ]
    assert changed == []


def test_teardown_dry_run_lists_the_deletes_and_calls_nothing(fake_cloud: FakeCloud) -> None:
    stack = make_stack(fake_cloud, dry_run=True)
    teardown.run(stack, delete_data=True)
    text = output(stack)
    assert len(fake_cloud.requests) == 0
    for command in ("gcloud container clusters delete mf-it", "gcloud sql instances delete",
                    "gcloud sql instances patch mf-it-pg-0 --no-deletion-protection",
                    "gcloud compute routers delete mf-it-router",
                    "gcloud secrets delete mf-it-airflow-db-password",
                    "gcloud compute networks peerings delete servicenetworking-googleapis-com",
                    "gcloud storage rm --recursive"):
        assert command in text


def test_without_a_terminal_and_without_yes_teardown_refuses_before_any_call(
    fake_cloud: FakeCloud,
) -> None:
    stack = make_stack(fake_cloud)
    stack.assume_yes = False
    with pytest.raises(StackError, match="needs a confirmation"):
        teardown.run(stack)
    assert len(fake_cloud.requests) == 0


def test_teardown_with_force_unlock_names_whose_lock_it_broke(fake_cloud: FakeCloud) -> None:
    other = make_stack(fake_cloud)  # another administrator, in the middle of an infra.up
    other.state.ensure_bucket()
    other.state.acquire("infra.up")

    stack = make_stack(fake_cloud)
    with pytest.raises(StackError, match=r"running 'infra\.up'"):
        teardown.run(stack)  # without --force-unlock: refused, naming the holder

    forced = make_stack(fake_cloud)
    assert teardown.run(forced, force_unlock=True).ok, output(forced)
    assert "broke the lock of " in output(forced)
    assert "(infra.up, since " in output(forced)
