"""The Metaflow datastore bucket: regional, uniform access, never public."""

from __future__ import annotations

from typing import Any

from metaflow_gcp.config import Names
from metaflow_gcp.errors import AlreadyExists
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, StepRun


def describe(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe("storage", "buckets", "describe", f"gs://{n.data_bucket}")


def drift(found: dict[str, Any]) -> list[str]:
    """Settings of an existing bucket that differ from ours (the fixable ones).

    Only what the API reports is judged: a field it leaves out is not taken as "off".
    """
    problems = []
    if found.get("uniform_bucket_level_access") is False:
        problems.append("--uniform-bucket-level-access")
    prevention = found.get("public_access_prevention")
    if prevention is not None and str(prevention).lower() != "enforced":
        problems.append("--public-access-prevention")
    return problems


def ensure(gcloud: Gcloud, n: Names, run: StepRun, *, cold: bool = False) -> Outcome:
    url = f"gs://{n.data_bucket}"
    found = None if cold else describe(gcloud, n)
    if found is not None:
        fixes = drift(found)
        if not fixes:
            return Outcome.KEPT
        run.before_change(f"fix {url}: {' '.join(fixes)}", new=False)
        gcloud.mutate("storage", "buckets", "update", url, *fixes, fmt=None)
        return Outcome.UPDATED
    run.before_change(f"create bucket {url}")
    try:
        gcloud.mutate(
            "storage",
            "buckets",
            "create",
            url,
            f"--location={n.region}",
            "--uniform-bucket-level-access",
            "--public-access-prevention",
            fmt=None,
        )
    except AlreadyExists:
        if cold:  # ours after all? look at it the normal way
            return ensure(gcloud, n, run)
        raise
    return Outcome.CREATED
