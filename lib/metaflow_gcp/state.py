"""The stack's state: one small JSON document per stack in a versioned GCS bucket.

Writes carry the object generation they were based on (`--if-generation-match`,
0 for "only if absent"), so two administrators can never overwrite each other;
the loser re-reads and tries again. The lock and the DB generation counter are
fields of that one document, so they inherit the same guarantee.
"""

from __future__ import annotations

import getpass
import json
import os
import random
import re
import socket
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metaflow_gcp.config import Names
from metaflow_gcp.errors import (
    AlreadyExists,
    LockHeld,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StackError,
)
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import pause

SCHEMA = 1
WRITE_ID = "write-id"  # custom metadata: which write made this generation (see read)
_CREATED = re.compile(r"gs://\S+#(\d+)")

Doc = dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    """The document and the generation it was read at (0: no document yet)."""

    data: Doc
    generation: int


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def db_generation(doc: Doc, floor: int) -> int:
    """The generation to use: the counter, never below the floor from the settings."""
    return max(int(doc.get("db_generation", 0)), floor)


class StateStore:
    """Reads and writes one stack's document; keeps the last generation it saw."""

    def __init__(self, gcloud: Gcloud, names: Names, *, location: str) -> None:
        self.gcloud = gcloud
        self.names = names
        self.location = location
        self.url = f"gs://{names.state_bucket}/{names.state_object}"
        self.lock_id = uuid.uuid4().hex
        self._last: Snapshot | None = None
        self._versioning: Future[None] | None = None  # turned on beside the first write

    # -- bucket --------------------------------------------------------------------------

    def ensure_bucket(self) -> bool:
        """Create the state bucket if missing (UBLA, no public access, versioned). True if made.

        On a brand-new project two first runs can both find no bucket and both create it;
        the second create answers 409. That bucket is the one we wanted, so go on: the
        lock in the document, taken next, decides which run goes ahead.

        A bucket this run just made holds no document, so the first read is skipped, and
        versioning is turned on beside the first write: the first write replaces nothing,
        and every later write waits until versioning is on, so no version is ever lost.
        """
        bucket = f"gs://{self.names.state_bucket}"
        found = self._describe_bucket(bucket)
        created = False
        if found is None:
            try:
                self.gcloud.mutate(
                    "storage",
                    "buckets",
                    "create",
                    bucket,
                    f"--location={self.location}",
                    "--uniform-bucket-level-access",
                    "--public-access-prevention",
                    fmt=None,
                )
                created = True
            except AlreadyExists:  # made by a concurrent first run a moment ago
                found = self._describe_bucket(bucket)
        if found is not None and found.get("versioning_enabled"):
            return created
        if created and not self.gcloud.dry_run:
            self._remember(Snapshot(self._blank(), 0))
            pool = ThreadPoolExecutor(1, thread_name_prefix="versioning")
            self._versioning = pool.submit(self._turn_on_versioning, bucket)
            pool.shutdown(wait=False)  # the one task still runs; no thread is left behind
        else:
            self._turn_on_versioning(bucket)
        return created

    def _turn_on_versioning(self, bucket: str) -> None:
        self.gcloud.mutate("storage", "buckets", "update", bucket, "--versioning", fmt=None)

    def wait_for_versioning(self) -> None:
        """Wait for versioning turned on beside the first write, and raise what it raised.

        Call it right after taking the lock: a failure then stops the run before anything
        but the lock was written, and the release that follows does not raise it again.
        """
        pending, self._versioning = self._versioning, None
        if pending is not None:
            pending.result()

    def _describe_bucket(self, bucket: str) -> dict[str, Any] | None:
        try:
            return self.gcloud.describe("storage", "buckets", "describe", bucket)
        except PermissionDenied:
            raise StackError(
                f"{bucket} exists but this account may not read it (bucket names are global: "
                "another project may own it). Fix: set state_bucket to a name of your own, "
                "or ask for roles/storage.admin on it"
            ) from None

    # -- reading -------------------------------------------------------------------------

    def peek(self) -> Doc | None:
        """The current document without its generation: one call, for read-only paths."""
        try:
            result = self.gcloud.runner.run(
                ["gcloud", "storage", "cat", self.url, f"--project={self.gcloud.project}"],
                mutating=False,
            )
        except NotFound:
            return None
        return None if result.dry_run else _parse(result.stdout, self.url)

    def read(self) -> Snapshot:
        """The document and its generation, consistent with each other.

        The object's metadata (with its generation) and its content are read at once. Every
        write stamps a fresh write id into both, in one upload: when the two ids agree, the
        content is that generation's. Otherwise (a write landed in between, or a document
        an older version wrote) the content of exactly that generation is read after.
        """
        if self.gcloud.dry_run:  # the read is shown, not made: a dry run sees no document
            self.gcloud.describe("storage", "objects", "describe", self.url)
            return self._remember(Snapshot(self._blank(), 0))
        with ThreadPoolExecutor(2) as pool:
            meta_f = pool.submit(self.gcloud.describe, "storage", "objects", "describe", self.url)
            content_f = pool.submit(self._cat, self.url)
            meta, content = meta_f.result(), content_f.result()
        if meta is None:
            return self._remember(Snapshot(self._blank(), 0))
        generation = int(meta["generation"])
        stamped = str((meta.get("custom_fields") or {}).get(WRITE_ID) or "")
        if content is not None and stamped:
            doc = _parse(content, self.url)
            if doc.get("write_id") == stamped:
                return self._remember(Snapshot(doc, generation))
        return self._read_generation(generation)

    def _read_generation(self, generation: int) -> Snapshot:
        content = self._cat(f"{self.url}#{generation}")
        if content is None:
            # Replaced and pruned between the two calls: the caller's write will 412 and retry.
            return self._remember(Snapshot(self._blank(), generation))
        return self._remember(Snapshot(_parse(content, self.url), generation))

    def _cat(self, url: str) -> str | None:
        try:
            result = self.gcloud.runner.run(
                ["gcloud", "storage", "cat", url, f"--project={self.gcloud.project}"],
                mutating=False,
            )
        except NotFound:
            return None
        return result.stdout

    # -- writing -------------------------------------------------------------------------

    def write(self, data: Doc, generation: int) -> int:
        """Write iff the live object is still at `generation`; return the new generation.

        Uploads from a small temp file: small uploads are single-request (non-resumable),
        which is where every GCS implementation checks the precondition.
        """
        if generation != 0:  # a write that replaces a version keeps it only once versioned
            self.wait_for_versioning()
        write_id = uuid.uuid4().hex
        data = {
            **data,
            "schema": SCHEMA,
            "updated_at": now(),
            "updated_by": _who(),
            "write_id": write_id,
        }
        if self.gcloud.dry_run:
            self.gcloud.mutate(
                "storage",
                "cp",
                "STATE.json",
                self.url,
                f"--if-generation-match={generation}",
                "--print-created-message",
                fmt=None,
            )
            self._remember(Snapshot(data, generation + 1))
            return generation + 1
        with tempfile.TemporaryDirectory(prefix="mf-state-") as tmp:
            path = Path(tmp) / "state.json"
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            result = self.gcloud.mutate(
                "storage",
                "cp",
                str(path),
                self.url,
                f"--if-generation-match={generation}",
                f"--custom-metadata={WRITE_ID}={write_id}",
                "--print-created-message",
                fmt=None,
            )
        match = _CREATED.search(result.stdout + "\n" + result.stderr)
        new_generation = int(match.group(1)) if match else self._generation_now()
        self._remember(Snapshot(data, new_generation))
        return new_generation

    def update(self, change: Callable[[Doc], None], *, attempts: int = 10) -> Snapshot:
        """Read-modify-write under the generation precondition, retrying when someone else won.

        `change` edits the document in place and may raise to abort (e.g. LockHeld).
        """
        fresh = self._last is None
        snapshot = self.read() if self._last is None else self._last
        for attempt in range(attempts):
            data = json.loads(json.dumps(snapshot.data))
            try:
                change(data)
            except StackError:
                if fresh:
                    raise
                snapshot, fresh = self.read(), True  # judge on what is there now, not our cache
                continue
            try:
                self.write(data, snapshot.generation)
                assert self._last is not None
                return self._last
            except PreconditionFailed:
                pause(random.uniform(0.05, 0.3) * (attempt + 1))  # noqa: S311 - jitter
                snapshot, fresh = self.read(), True
        raise StackError(
            f"could not update {self.url}: it changed {attempts} times while we tried. "
            "Fix: check for another run working on this stack, then retry"
        )

    # -- the lock ------------------------------------------------------------------------

    def acquire(self, task: str, *, force: bool = False) -> Doc | None:
        """Take the stack's lock; returns the record of a lock we broke (with force), if any."""
        broken: list[Doc] = []
        record = {
            "id": self.lock_id,
            "holder": _who(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": now(),
            "task": task,
        }

        def take(doc: Doc) -> None:
            held = doc.get("lock")
            if held and held.get("id") != self.lock_id:
                if not force:
                    raise LockHeld(
                        held.get("holder", "?"), held.get("since", "?"), held.get("task", "?")
                    )
                broken.append(held)
            doc["lock"] = record

        self.update(take)
        return broken[0] if broken else None

    def release(self) -> None:
        """Drop our lock (only ours: a lock broken by someone else stays theirs)."""

        def drop(doc: Doc) -> None:
            held = doc.get("lock")
            if held and held.get("id") == self.lock_id:
                doc["lock"] = None

        self.update(drop)

    def force_unlock(self) -> Doc | None:
        """Remove whoever's lock is there; returns what was removed."""
        removed: list[Doc] = []

        def drop(doc: Doc) -> None:
            if doc.get("lock"):
                removed.append(doc["lock"])
            doc["lock"] = None

        self.update(drop)
        return removed[0] if removed else None

    # -- the DB generation counter -------------------------------------------------------

    def bump_db_generation(self, floor: int) -> int:
        """Move to the next SQL instance name, atomically; returns the new generation."""
        bumped: list[int] = []

        def bump(doc: Doc) -> None:
            doc["db_generation"] = db_generation(doc, floor) + 1
            bumped.append(doc["db_generation"])

        self.update(bump)
        return bumped[-1]

    # -- helpers -------------------------------------------------------------------------

    @property
    def last(self) -> Snapshot | None:
        return self._last

    def _blank(self) -> Doc:
        return {
            "schema": SCHEMA,
            "stack": self.names.stack,
            "project": self.names.project,
            "db_generation": 0,
            "lock": None,
        }

    def _remember(self, snapshot: Snapshot) -> Snapshot:
        self._last = snapshot
        return snapshot

    def _generation_now(self) -> int:
        meta = self.gcloud.describe("storage", "objects", "describe", self.url)
        if meta is None:
            raise StackError(f"{self.url} vanished right after it was written")
        return int(meta["generation"])


def _parse(text: str, url: str) -> Doc:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise StackError(
            f"{url} is not valid JSON. Fix: restore an earlier version "
            "(`gcloud storage ls -a` lists them; the bucket is versioned)"
        ) from None
    if not isinstance(data, dict):
        raise StackError(f"{url} does not hold a JSON object")
    return data


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
