"""The Metaflow datastore bucket: regional, uniform access, never public."""

from __future__ import annotations

import contextlib
from typing import Any

from metaflow_gcp.config import Names
from metaflow_gcp.errors import AlreadyExists, NotFound
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, StepRun


def describe(gcloud: Gcloud, n: Names) -> dict[str, Any] | None:
    return gcloud.describe(*_describe_args(n))


def status_facts(found: dict[str, Any] | None) -> dict[str, Any]:
    """What `inv status` shows of the bucket: the two settings that keep it private."""
    return {
        "public_access_prevention": (found or {}).get("public_access_prevention"),
        "uniform_access": (found or {}).get("uniform_bucket_level_access"),
    }


def prime_describe(gcloud: Gcloud, n: Names, found: dict[str, Any] | None) -> None:
    """The next describe of the bucket answers with `found` (read a moment ago)."""
    gcloud.prime(found, *_describe_args(n))


def _describe_args(n: Names) -> tuple[str, ...]:
    return ("storage", "buckets", "describe", f"gs://{n.data_bucket}")


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


def remove(gcloud: Gcloud, n: Names, run: StepRun) -> Outcome:
    """teardown --delete-data only: every object (each version too), then the bucket."""
    if not gcloud.dry_run and describe(gcloud, n) is None:
        return Outcome.GONE
    url = f"gs://{n.data_bucket}"
    run.before_removal(f"EMPTY AND DELETE {url} (--delete-data)")
    run.note(f"deleting every object in {url}")
    with contextlib.suppress(NotFound):  # NotFound: already empty
        gcloud.mutate(
            "storage", "rm", "--recursive", "--all-versions", f"{url}/**", fmt=None, timeout=3600
        )
    gcloud.mutate("storage", "buckets", "delete", url, fmt=None)
    return Outcome.DELETED
