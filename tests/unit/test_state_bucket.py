"""A state bucket this run made: versioning turned on beside the first write, never skipped."""

from __future__ import annotations

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp.config import load_settings
from metaflow_gcp.errors import PermissionDenied
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import Runner
from metaflow_gcp.state import StateStore

SETTINGS = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}
BUCKET = "gs://acme-acme-ml-prod-mf-state"
DESCRIBE = ["gcloud", "storage", "buckets", "describe", BUCKET, FakeProcess.any()]
CREATE = ["gcloud", "storage", "buckets", "create", BUCKET, FakeProcess.any()]
VERSIONING = ["gcloud", "storage", "buckets", "update", BUCKET, "--versioning", FakeProcess.any()]
WRITE = ["gcloud", "storage", "cp", FakeProcess.any()]
READS = (["gcloud", "storage", "objects", "describe", FakeProcess.any()],
         ["gcloud", "storage", "cat", FakeProcess.any()])  # fmt: skip
DENIED = (
    "ERROR: (gcloud.storage.buckets.update) HTTPError 403: ops@example.com does not have "
    "storage.buckets.update access to the Google Cloud Storage bucket. Permission denied\n"
)


def new_project(fp: FakeProcess, *, versioning_fails: bool = False) -> StateStore:
    fp.register(DESCRIBE, returncode=1,
                stderr=f"ERROR: (gcloud.storage.buckets.describe) {BUCKET} not found: 404.\n")
    fp.register(CREATE)
    if versioning_fails:
        fp.register(VERSIONING, returncode=1, stderr=DENIED)
    else:
        fp.register(VERSIONING)
    for generation in (5, 6):
        fp.register(WRITE, stdout=f"Created: {BUCKET}/stacks/dev.json#{generation}\n")
    settings = load_settings(SETTINGS)
    return StateStore(Gcloud(Runner(), settings.project), settings.names(), location="us-west2")


def test_the_lock_on_a_new_bucket_is_written_without_a_read_and_versioning_is_on_after(
    fp: FakeProcess,
) -> None:
    store = new_project(fp)

    assert store.ensure_bucket() is True
    store.acquire("infra.up")
    store.wait_for_versioning()

    assert fp.call_count(VERSIONING) == 1
    assert all(fp.call_count(read) == 0 for read in READS), "a new bucket holds no document"
    assert store.last is not None and store.last.data["lock"]["task"] == "infra.up"


def test_versioning_that_fails_stops_the_run_after_the_lock_and_the_release_still_writes(
    fp: FakeProcess,
) -> None:
    store = new_project(fp, versioning_fails=True)
    store.ensure_bucket()
    store.acquire("infra.up")

    with pytest.raises(PermissionDenied):
        store.wait_for_versioning()
    store.release()  # what the lifecycle does on the way out: said once, not raised again

    assert fp.call_count(WRITE) == 2
    assert store.last is not None and store.last.data["lock"] is None
