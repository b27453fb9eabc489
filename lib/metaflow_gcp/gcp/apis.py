"""The Google APIs the stack needs, enabled in one call."""

from __future__ import annotations

from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, StepRun

REQUIRED = (
    "compute.googleapis.com",
    "container.googleapis.com",
    "sqladmin.googleapis.com",
    "servicenetworking.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)


def enabled(gcloud: Gcloud) -> set[str]:
    services = gcloud.read("services", "list", "--enabled", dry=[]) or []
    return {str(s.get("config", {}).get("name") or s["name"].rsplit("/", 1)[-1]) for s in services}


def missing(gcloud: Gcloud) -> list[str]:
    have = enabled(gcloud)
    return [api for api in REQUIRED if api not in have]


def ensure(gcloud: Gcloud, run: StepRun, *, cold: bool = False) -> Outcome:
    """Enable what is missing; on a cold stack enable all at once (a no-op for enabled ones)."""
    todo = list(REQUIRED) if cold else missing(gcloud)
    if not todo:
        return Outcome.KEPT
    # Enabling APIs is idempotent, free, project-wide and never undone by teardown: it need
    # not wait for the stack lock, and on a new stack it overlaps taking it.
    run.before_change(f"enable {', '.join(a.split('.')[0] for a in todo)}", new=False, locked=False)
    run.note(f"enabling {len(todo)} APIs")
    gcloud.mutate("services", "enable", *todo, timeout=1200, fmt=None)
    gcloud.apis_just_enabled()
    return Outcome.CREATED
