"""A snapshot of the fakes puts a built world back for another test, as gcloud sees it."""

from __future__ import annotations

import json

import pytest

from .cli import ok, ok_json
from .plugin import FakeCloud
from .seeds import NET, seed_private_network, seed_sql_instance

pytestmark = pytest.mark.integration


def test_a_restored_snapshot_is_what_gcloud_saw_when_it_was_taken(fake_cloud: FakeCloud) -> None:
    seed_private_network(fake_cloud)
    seed_sql_instance(fake_cloud, "psql-kept")
    ok(fake_cloud, "storage", "buckets", "create", "gs://kept-state", "--location=us-west2")
    ok(fake_cloud, "storage", "buckets", "update", "gs://kept-state", "--versioning")
    fake_cloud.call(
        "POST",
        "iam",
        f"/v1/projects/{fake_cloud.project}/serviceAccounts",
        {"accountId": "mf-kept"},
    )
    state = fake_cloud.api.snapshot()
    buckets = fake_cloud.gcs.snapshot()
    assert buckets and buckets[0]["bucket"]["name"] == "kept-state"

    snapshot = fake_cloud.snapshot()
    fake_cloud.reset()
    assert fake_cloud.state["networks"] == {}
    fake_cloud.restore(snapshot)

    assert fake_cloud.requests == []
    assert set(fake_cloud.state["networks"]) == {NET}
    described = ok_json(fake_cloud, "sql", "instances", "describe", "psql-kept")
    assert described["state"] == "RUNNABLE"
    bucket = ok_json(fake_cloud, "storage", "buckets", "describe", "gs://kept-state")
    assert bucket["versioning_enabled"] is True
    assert fake_cloud.api.snapshot().keys() == state.keys()


def test_an_object_comes_back_with_its_bytes_and_custom_metadata(fake_cloud: FakeCloud) -> None:
    fake_cloud.gcs.restore(
        [
            {
                "bucket": {"name": "kept-state", "versioning": {"enabled": True}},
                "objects": [
                    {
                        "meta": {
                            "name": "state/stack.json",
                            "contentType": "application/json",
                            "metadata": {"write-id": "w-1"},
                        },
                        "data": b'{"db_generation": 3}',
                    }
                ],
            }
        ]
    )
    snapshot = fake_cloud.snapshot()
    fake_cloud.reset()
    fake_cloud.restore(snapshot)

    url = "gs://kept-state/state/stack.json"
    assert json.loads(ok(fake_cloud, "storage", "cat", url)) == {"db_generation": 3}
    described = ok_json(fake_cloud, "storage", "objects", "describe", url)
    assert described["custom_fields"] == {"write-id": "w-1"}


def test_changes_after_a_restore_leave_the_snapshot_as_it_was(fake_cloud: FakeCloud) -> None:
    seed_private_network(fake_cloud)
    snapshot = fake_cloud.snapshot()
    fake_cloud.restore(snapshot)
    del fake_cloud.state["networks"][NET]

    fake_cloud.restore(snapshot)

    assert set(fake_cloud.state["networks"]) == {NET}
