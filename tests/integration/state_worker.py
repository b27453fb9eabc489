"""A separate process that bumps the counter or takes the lock: races need real processes.

python -m tests.integration.state_worker bump COUNT
python -m tests.integration.state_worker lock 1
python -m tests.integration.state_worker first-run TASK [START]   # bucket, then lock
"""

from __future__ import annotations

import json
import os
import sys
import time

from metaflow_gcp.config import load_settings
from metaflow_gcp.errors import LockHeld
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import Runner
from metaflow_gcp.state import StateStore


def main() -> None:
    action = sys.argv[1]
    settings = load_settings(json.loads(os.environ["STACK_SETTINGS"]))
    store = StateStore(
        Gcloud(Runner(), settings.project), settings.names(), location=settings.region
    )
    if action == "bump":
        print(json.dumps([store.bump_db_generation(0) for _ in range(int(sys.argv[2]))]))
    elif action == "lock":
        try:
            store.acquire("race")
            print(json.dumps("won"))
        except LockHeld as held:
            print(json.dumps(f"lost to {held.holder}"))
    elif action == "first-run":  # what infra.up does first on a project the tool never saw
        task, start = sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
        time.sleep(max(0.0, start - time.time()))  # both runs look for the bucket at once
        store.ensure_bucket()
        try:
            store.acquire(task)
            print(json.dumps("won"))
        except LockHeld as held:
            print(json.dumps(f"refused: {held}"))


if __name__ == "__main__":
    main()
