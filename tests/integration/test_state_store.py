"""The state file in GCS, through the real gcloud against fake-gcs-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metaflow_gcp.errors import LockHeld, PreconditionFailed
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import Runner
from metaflow_gcp.state import StateStore
from tests.integration.conftest import STACK

pytestmark = pytest.mark.integration

StoreFactory = Callable[[], StateStore]
ROOT = Path(__file__).resolve().parents[2]


def test_the_state_bucket_is_versioned_before_any_write_replaces_a_version(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    assert store.ensure_bucket() is True
    store.acquire("infra.up")  # the first write: nothing to replace, versioning on beside it
    store.release()  # the second replaces the first: only once versioning is on
    bucket = store.gcloud.describe(
        "storage", "buckets", "describe", f"gs://{store.names.state_bucket}"
    )
    assert bucket is not None
    assert bucket["versioning_enabled"] is True
    assert store.ensure_bucket() is False


def test_a_bucket_made_by_this_run_is_not_read_before_the_first_write(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    store.ensure_bucket()
    store.acquire("infra.up")
    reads = [c for c in store.gcloud.runner.history if " objects describe " in c.command
             or " cat " in c.command]
    assert reads == [], "it holds no document: the write with generation 0 is the read"
    assert store.read().data["lock"]["task"] == "infra.up"


def test_a_missing_document_reads_as_blank_at_generation_zero(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.ensure_bucket()
    snapshot = store.read()
    assert snapshot.generation == 0
    assert snapshot.data["db_generation"] == 0
    assert store.peek() is None


def test_a_write_based_on_a_stale_generation_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.ensure_bucket()
    first = store.write({"db_generation": 1}, 0)
    assert first > 0
    with pytest.raises(PreconditionFailed):
        store.write({"db_generation": 99}, 0)
    second = store.write({"db_generation": 2}, first)
    assert second != first
    assert store.read().data["db_generation"] == 2
    assert store.peek() == store.read().data


def _reads(store: StateStore) -> list[str]:
    return [r.command for r in store.gcloud.runner.history if " storage " in f" {r.command}"]


def test_a_document_this_tool_wrote_is_read_in_one_round_trip(store_factory: StoreFactory) -> None:
    writer = store_factory()
    writer.ensure_bucket()
    generation = writer.write({"db_generation": 3}, 0)

    reader = store_factory()
    snapshot = reader.read()
    assert (snapshot.generation, snapshot.data["db_generation"]) == (generation, 3)
    reads = _reads(reader)
    assert len(reads) == 2  # metadata and content, side by side
    assert not any("#" in r for r in reads), reads  # the write ids agreed: no second read


def test_content_that_does_not_carry_the_generations_write_id_is_read_by_generation(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """A document an older version (or a hand) uploaded, or one replaced mid-read."""
    store = store_factory()
    store.ensure_bucket()
    by_hand = tmp_path / "state.json"
    by_hand.write_text(json.dumps({"db_generation": 7, "write_id": "not-this-upload"}))
    store.gcloud.mutate(
        "storage", "cp", str(by_hand), store.url, "--custom-metadata=write-id=another", fmt=None
    )

    reader = store_factory()
    snapshot = reader.read()
    assert snapshot.data["db_generation"] == 7
    generation_reads = [r for r in _reads(reader) if f"{store.url}#{snapshot.generation}" in r]
    assert len(generation_reads) == 1, _reads(reader)
    reader.update(lambda doc: doc.update(note="written on the right generation"))
    assert store_factory().read().data["note"] == "written on the right generation"


def test_an_update_retries_when_another_run_wrote_in_between(store_factory: StoreFactory) -> None:
    mine, theirs = store_factory(), store_factory()
    mine.ensure_bucket()
    mine.update(lambda doc: doc.update(note="mine"))
    theirs.update(lambda doc: doc.update(other="theirs"))
    mine.update(lambda doc: doc.update(note="mine again"))  # its cached generation is stale
    data = store_factory().read().data
    assert (data["note"], data["other"]) == ("mine again", "theirs")


def test_a_second_run_is_refused_naming_who_holds_the_stack(store_factory: StoreFactory) -> None:
    first, second = store_factory(), store_factory()
    first.ensure_bucket()
    first.acquire("infra.up")
    with pytest.raises(LockHeld) as held:
        second.acquire("teardown")
    assert held.value.task == "infra.up"
    assert "@" in held.value.holder
    assert "--force-unlock" in str(held.value)
    first.release()
    second.acquire("teardown")


def test_a_stale_lock_is_broken_only_on_purpose(store_factory: StoreFactory) -> None:
    dead, rescuer = store_factory(), store_factory()
    dead.ensure_bucket()
    dead.acquire("infra.up")
    broken = rescuer.acquire("infra.up", force=True)
    assert broken is not None and broken["task"] == "infra.up"
    dead.release()  # the dead run coming back must not drop the rescuer's lock
    assert store_factory().read().data["lock"]["id"] == rescuer.lock_id


def test_the_db_generation_only_moves_forward_and_respects_the_floor(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    store.ensure_bucket()
    assert store.bump_db_generation(floor=0) == 1
    assert store.bump_db_generation(floor=5) == 6
    assert store.bump_db_generation(floor=0) == 7


def _spawn(action: str, count: int | str, env: dict[str, str], *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.state_worker", action, str(count), *more],
        cwd=ROOT,
        env={**os.environ, **env, "STACK_SETTINGS": json.dumps(STACK)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_bumping_at_once_get_distinct_values_and_the_right_total(
    store_factory: StoreFactory, gcs_env: dict[str, str]
) -> None:
    store_factory().ensure_bucket()
    workers = [_spawn("bump", 2, gcs_env) for _ in range(3)]
    values: list[int] = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        values.extend(json.loads(out))
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    assert store_factory().read().data["db_generation"] == 6


def test_two_runs_taking_the_lock_at_once_exactly_one_wins(
    store_factory: StoreFactory, gcs_env: dict[str, str]
) -> None:
    store_factory().ensure_bucket()
    workers = [_spawn("lock", 1, gcs_env) for _ in range(2)]
    outcomes = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outcomes.append(json.loads(out))
    assert sorted(o == "won" for o in outcomes) == [False, True], outcomes


# -- two first runs on a brand-new project: the state bucket race --------------------------


class _OtherRunCreatesRightAfterWeLook(Gcloud):
    """The real gcloud; the other run's bucket create and lock land just after our first look.

    That is the interleaving of two administrators starting on a new project at once: both
    find no state bucket, both create it, and one of the creates answers 409.
    """

    def __init__(self, runner: Runner, project: str, other: StateStore) -> None:
        super().__init__(runner, project)
        self.other: StateStore | None = other

    def describe(self, *args: str) -> dict[str, Any] | None:
        found = super().describe(*args)
        if self.other is not None and args[:2] == ("storage", "buckets"):
            other, self.other = self.other, None
            assert other.ensure_bucket() is True
            other.acquire("infra.up (the colleague)")
        return found


def test_the_loser_of_the_state_bucket_race_is_refused_by_the_lock_naming_the_holder(
    store_factory: StoreFactory, gcs_env: dict[str, str]
) -> None:
    colleague = store_factory()
    late = _OtherRunCreatesRightAfterWeLook(Runner(env=gcs_env), STACK["project"], colleague)
    mine = StateStore(late, colleague.names, location="us-west2")
    assert mine.ensure_bucket() is False  # its create met the colleague's bucket: 409, fine
    with pytest.raises(LockHeld) as held:
        mine.acquire("infra.up")
    assert held.value.task == "infra.up (the colleague)"
    assert held.value.holder == colleague.read().data["lock"]["holder"]
    assert "already" not in str(held.value)
    bucket = mine.gcloud.describe(
        "storage", "buckets", "describe", f"gs://{mine.names.state_bucket}"
    )
    assert bucket is not None and bucket["versioning_enabled"] is True


def test_two_first_runs_at_once_one_goes_ahead_and_the_other_is_refused_by_the_lock(
    gcs_env: dict[str, str], store_factory: StoreFactory
) -> None:
    start = f"{time.time() + 3:.3f}"  # both processes are up by then and look at once
    workers = [_spawn("first-run", f"infra.up ({who})", gcs_env, start) for who in "AB"]
    outcomes = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err  # e.g. a 409 about the bucket would end up here
        outcomes.append(json.loads(out))
    assert sorted(o == "won" for o in outcomes) == [False, True], outcomes
    winner = "A" if outcomes[0] == "won" else "B"
    [refusal] = [o for o in outcomes if o != "won"]
    assert refusal.startswith("refused: the stack is locked by "), refusal
    assert f"running 'infra.up ({winner})'" in refusal
    assert "409" not in refusal and "already" not in refusal
    assert store_factory().read().data["lock"]["task"] == f"infra.up ({winner})"
