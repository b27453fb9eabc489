"""The stack the unit tests stand up, and its state document held in memory.

One stack for every test: acme's "dev" stack in project acme-ml-prod. The names below are
the ones metaflow_gcp derives for it, written out by hand so that a renaming in the code
under test shows up as a failing test instead of following along silently.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from metaflow_gcp.errors import LockHeld
from metaflow_gcp.state import Snapshot

SETTINGS = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}
CONTEXT = "gke_acme-ml-prod_us-west2-a_mf-dev"
PROJECT_NUMBER = "123456"
STEPS_GSA = "mf-dev-steps@acme-ml-prod.iam.gserviceaccount.com"
SERVICES_GSA = "mf-dev-services@acme-ml-prod.iam.gserviceaccount.com"
LEGACY_GSA = "mf-dev-workload@acme-ml-prod.iam.gserviceaccount.com"
STEPS_KSA = "mf-dev-steps"
SERVICES_KSA = "mf-dev-services"
POOL = "acme-ml-prod.svc.id.goog"
PASSWORD = "Zq7-db-pa55word-nobody-guesses"
SECRET_V3 = f"projects/{PROJECT_NUMBER}/secrets/mf-dev-db-password/versions/3"


class FakeState:
    """The state document in memory, with the real store's lock rules.

    The real store lives in a GCS object; the lock semantics (another holder refuses, our own
    lock is re-entrant, --force takes it over) are what the tasks depend on, so those are kept.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.generation = 1
        self.lock_id = "this-run"
        self.writes = 0
        self._last: Snapshot | None = None

    @classmethod
    def after_infra_up(cls) -> FakeState:
        """What infra.up leaves for services.up: SQL instance generation 2, ready, unlocked."""
        return cls(
            {
                "db_generation": 2,
                "infra": {
                    "converged": "f00d",
                    "sql_user_ready": "mf-dev-pg-2",
                    "project_number": PROJECT_NUMBER,
                },
                "lock": None,
            }
        )

    @property
    def last(self) -> Snapshot | None:
        return self._last

    def peek(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    def read(self) -> Snapshot:
        self._last = Snapshot(copy.deepcopy(self.doc), self.generation)
        return self._last

    def update(self, change: Callable[[dict[str, Any]], None]) -> Snapshot:
        data = copy.deepcopy(self.doc)
        change(data)
        self.doc, self.generation, self.writes = data, self.generation + 1, self.writes + 1
        return self.read()

    def acquire(self, task: str, *, force: bool = False) -> dict[str, Any] | None:
        held = self.doc.get("lock")
        if held and held.get("id") != self.lock_id and not force:
            raise LockHeld(held["holder"], held["since"], held["task"])
        self.update(lambda d: d.update(lock={"id": self.lock_id, "task": task}))
        return held if held and held.get("id") != self.lock_id else None
