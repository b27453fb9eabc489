"""What every task shares: settings, the runner, the state store, the console, the error boundary.

Tasks stay one-liners that turn flags into a call here; this is also the only
module that knows about Invoke's Exit.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metaflow_gcp.config import Names, Settings, load_settings
from metaflow_gcp.errors import CommandError, ConfigErrors, MissingTool, StackError
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.shell import INSTALL_HINTS, Runner
from metaflow_gcp.state import StateStore

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("metaflow_gcp")


@dataclass
class Stack:
    """One stack, opened for one task run."""

    settings: Settings
    names: Names
    runner: Runner
    gcloud: Gcloud
    state: StateStore
    console: Console
    verbose: bool = False
    assume_yes: bool = False

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run

    def interactive(self) -> bool:
        return sys.stdin.isatty() and self.console.is_terminal


def make_console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def open_stack(
    config_section: Mapping[str, Any] | None,
    *,
    var_file: str | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    yes: bool = False,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> Stack:
    """Validate the settings (no cloud call before this passes) and wire up a Stack."""
    settings = load_settings(config_section, var_file, overrides)
    names = settings.names()
    console = console or make_console()
    runner = Runner(
        dry_run=dry_run,
        env=dict(env or {}),
        echo=(lambda line: console.print(f"  [cyan]$[/] {line}", soft_wrap=True, markup=True))
        if dry_run
        else None,
    )
    gcloud = Gcloud(runner, settings.project)
    state = StateStore(gcloud, names, location=settings.region)
    _configure_logging(names.stack, verbose)
    return Stack(settings, names, runner, gcloud, state, console, verbose, yes)


def preflight(stack: Stack, *tools: str) -> None:
    """Each missing tool gets its own line with how to install it; dry runs need none."""
    if stack.dry_run:
        return
    missing = [tool for tool in tools if not stack.runner.has(tool)]
    if missing:
        raise StackError(
            "\n".join(str(MissingTool(tool, INSTALL_HINTS.get(tool, ""))) for tool in missing)
        )


@contextmanager
def boundary(verbose: bool = False) -> Iterator[None]:
    """Turn our errors into a one-line message and a non-zero exit; full detail with --verbose."""
    from invoke.exceptions import Exit

    try:
        yield
    except ConfigErrors as errors:
        raise Exit("\n".join(f"error: {e}" for e in errors.errors), code=2) from None
    except StackError as error:
        message = f"error: {error.one_line()}"
        detail = _detail(error)
        if verbose and detail:
            message = f"{message}\n{detail}"
        elif detail:
            message = f"{message}\n(run again with --verbose for the full command and output)"
        raise Exit(message, code=1) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: nothing new was started; run the same command again to resume", code=130
        ) from None


def _detail(error: StackError) -> str:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, CommandError):
            return cause.detail()
        cause = getattr(cause, "cause", None) or cause.__cause__
    return ""


def _configure_logging(stack: str, verbose: bool) -> None:
    """Every command goes to a per-stack log file (redacted); --verbose also shows them."""
    root = logging.getLogger("metaflow_gcp")
    if getattr(root, "_configured", False):
        return
    root.setLevel(logging.DEBUG)
    state_home = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    log_dir = state_home / "metaflow-gcp"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_dir / f"{stack}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    except OSError:
        pass  # a read-only home must not stop the tool; --verbose still shows everything
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("  %(message)s"))
        root.addHandler(stream)
    root._configured = True  # type: ignore[attr-defined]
