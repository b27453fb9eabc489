"""Open stacks against the fakes, as a task would, with output captured."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from metaflow_gcp.app import Stack, open_stack
from tests.fakes.plugin import FakeCloud


def settings_for(fake: FakeCloud, **overrides: Any) -> dict[str, Any]:
    return {"org_prefix": "acme", "project": fake.project, "stack": "it", **overrides}


def make_stack(fake: FakeCloud, *, dry_run: bool = False, **overrides: Any) -> Stack:
    """A Stack whose gcloud talks to the fakes; console output lands in `stack.output()`."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    stack = open_stack(
        settings_for(fake, **overrides),
        dry_run=dry_run,
        yes=True,
        env=fake.env,
        console=console,
    )
    return stack


def output(stack: Stack) -> str:
    buffer = stack.console.file  # the StringIO make_stack gave the console
    assert isinstance(buffer, io.StringIO)
    return buffer.getvalue()
