"""The real gcloud, run against the fakes: what the fakes' own tests type."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .plugin import FakeCloud


def gcloud(
    fake: FakeCloud,
    *args: str,
    stdin: str | None = None,
    new_session: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real gcloud with the fake's environment (plus ``env``)."""
    return subprocess.run(
        ["gcloud", *args],
        env={**os.environ, **fake.env, **(env or {})},
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=180,
        start_new_session=new_session,
        check=False,
    )


def ok(fake: FakeCloud, *args: str, **kw: Any) -> str:
    """gcloud must succeed; returns stdout."""
    res = gcloud(fake, *args, **kw)
    assert res.returncode == 0, f"gcloud {' '.join(args)} failed:\n{res.stderr}"
    return res.stdout


def ok_json(fake: FakeCloud, *args: str, **kw: Any) -> Any:
    """gcloud must succeed; returns its --format=json output parsed."""
    return json.loads(ok(fake, *args, "--format=json", **kw) or "null")


def fails(fake: FakeCloud, *args: str, **kw: Any) -> str:
    """gcloud must fail; returns stderr (where gcloud prints its error)."""
    res = gcloud(fake, *args, **kw)
    assert res.returncode != 0, f"gcloud {' '.join(args)} unexpectedly succeeded:\n{res.stdout}"
    return res.stderr
