"""A separate process that bumps the counter or takes the lock: races need real processes."""

from __future__ import annotations

import json
import os
import sys

from metaflow_gcp.config import load_settings
from metaflow_gcp.errors import LockHeld
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import Runner
from metaflow_gcp.state import StateStore


def main() -> None:
    action, count = sys.argv[1], int(sys.argv[2])
    settings = load_settings(json.loads(os.environ["STACK_SETTINGS"]))
    store = StateStore(
        Gcloud(Runner(), settings.project), settings.names(), location=settings.region
    )
    if action == "bump":
        print(json.dumps([store.bump_db_generation(0) for _ in range(count)]))
    elif action == "lock":
        try:
            store.acquire("race")
            print(json.dumps("won"))
        except LockHeld as held:
            print(json.dumps(f"lost to {held.holder}"))


if __name__ == "__main__":
    main()
