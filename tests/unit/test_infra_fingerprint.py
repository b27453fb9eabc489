"""The infra fingerprint: which settings make `infra.up` look at the Google side again.

A stack whose state file holds the fingerprint of the current settings takes the no-op
fast path. So every setting that shapes the Google side must change the fingerprint, and
the few that do not are listed by name, each with its reason: a new setting is in unless
someone decides otherwise.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from metaflow_gcp.config import SETTING_NAMES, Settings, load_settings
from metaflow_gcp.infra import NOT_GOOGLE_SIDE, settings_fingerprint

BASE = load_settings({"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"})


def another_value(value: Any) -> Any:
    """A different value of the same type (validity does not matter to a hash)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple):
        return (*value, "198.51.100.0/24")
    if isinstance(value, str):
        return value + "x" if value else "us-west2-b"
    raise AssertionError(f"no rule for a setting of type {type(value).__name__}: add one")


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_every_setting_but_the_listed_ones_changes_the_fingerprint(name: str) -> None:
    changed = replace(BASE, **{name: another_value(getattr(BASE, name))})
    differs = settings_fingerprint(changed, 0) != settings_fingerprint(BASE, 0)
    assert differs is (name not in NOT_GOOGLE_SIDE), (
        f"{name}: a setting that shapes the Google side must change the fingerprint; "
        "one that does not belongs in infra.NOT_GOOGLE_SIDE with its reason"
    )


def test_the_settings_left_out_are_exactly_the_ones_that_do_not_shape_google_cloud() -> None:
    assert set(NOT_GOOGLE_SIDE) == {
        "state_bucket", "db_generation_number", "deploy_argo", "deploy_airflow"
    }
    assert set(NOT_GOOGLE_SIDE) <= {f.name for f in fields(Settings)}, "no stale names"
    assert all(reason for reason in NOT_GOOGLE_SIDE.values())


def test_the_generation_and_the_resolved_zone_are_part_of_it() -> None:
    assert settings_fingerprint(BASE, 1) != settings_fingerprint(BASE, 0)
    explicit = replace(BASE, zone=BASE.resolved_zone)
    assert settings_fingerprint(explicit, 0) == settings_fingerprint(BASE, 0), (
        "naming the default zone is the same stack"
    )
