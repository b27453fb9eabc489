"""gcloud calls with the project pinned and JSON parsed, on top of the one runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from metaflow_gcp.errors import AlreadyExists, ApiNotEnabled, NotFound
from metaflow_gcp.gcp.operations import RetryOn, retry
from metaflow_gcp.graph import Outcome, StepRun
from metaflow_gcp.shell import Result, Runner

T = TypeVar("T")
# An API enabled moments ago can answer "disabled" for a few minutes while that spreads.
API_SETTLE = 300.0
API_RETRY_PAUSE = 10.0


class Gcloud:
    """Every gcloud call names its project explicitly: the user's active config never leaks in."""

    def __init__(self, runner: Runner, project: str) -> None:
        self.runner = runner
        self.project = project
        self._primed: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._settle_until = 0.0

    def apis_just_enabled(self) -> None:
        """From now on, for a while, "API not enabled" means "not yet": wait and retry."""
        with self._lock:
            self._settle_until = time.monotonic() + API_SETTLE

    def _settling(self, call: Callable[[], T]) -> T:
        return retry(call, RetryOn(ApiNotEnabled, pause=API_RETRY_PAUSE, still=self._settles))

    def _settles(self) -> bool:
        with self._lock:
            return time.monotonic() < self._settle_until

    def prime(self, answer: Any, *args: str) -> None:
        """Remember the answer to a read made moments ago, for the next identical read (once).

        The no-op check reads a few resources; when the stack turns out to need work, the
        steps that would read the same resources again use these answers instead.
        """
        with self._lock:
            self._primed[tuple(self._argv(args, "json"))] = answer

    def _take_primed(self, argv: list[str]) -> tuple[bool, Any]:
        with self._lock:
            key = tuple(argv)
            if key in self._primed:
                return True, self._primed.pop(key)
        return False, None

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run

    def _argv(self, args: tuple[str, ...], fmt: str | None) -> list[str]:
        argv = ["gcloud", *args]
        if not any(a.startswith("--project") for a in args):
            argv.append(f"--project={self.project}")
        if fmt:
            argv.append(f"--format={fmt}")
        return argv

    def read(self, *args: str, dry: Any = None, timeout: float | None = None) -> Any:
        """A read whose JSON answer we need. In a dry run nothing runs and `dry` comes back."""
        argv = self._argv(args, "json")
        primed, answer = self._take_primed(argv)
        if primed:
            if answer is None:
                raise NotFound(command=" ".join(argv), returncode=1, stderr="(primed: absent)")
            return answer
        result = self._settling(lambda: self.runner.run(argv, mutating=False, timeout=timeout))
        return dry if result.dry_run else result.json()

    def describe(self, *args: str) -> dict[str, Any] | None:
        """A resource as JSON, or None when it does not exist (or in a dry run)."""
        try:
            found = self.read(*args)
        except NotFound:
            return None
        return found if isinstance(found, dict) else None

    def mutate(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float | None = None,
        fmt: str | None = "json",
        dry_stdout: str = "",
        extra_env: dict[str, str] | None = None,
    ) -> Result:
        return self._settling(
            lambda: self.runner.run(
                self._argv(args, fmt),
                mutating=True,
                stdin=stdin,
                timeout=timeout,
                dry_stdout=dry_stdout,
                extra_env=extra_env,
            )
        )

    def secret_read(self, *args: str) -> str:
        """A read whose output is a secret: registered for redaction, never logged."""
        argv = self._argv(args, None)
        result = self._settling(lambda: self.runner.run(argv, mutating=False, secret_output=True))
        return result.stdout


def create_or_keep(
    run: StepRun,
    what: str,
    create: Callable[[], object],
    describe: Callable[[], object | None],
    *,
    cold: bool,
) -> Outcome:
    """Describe, then create what is missing.

    cold: the state file has never seen this stack built (or saw it torn down), so the
    resource is almost surely absent: create straight away and let "already exists"
    mean it is there. Same end state, one gcloud process fewer on the critical path.
    """
    if not cold and describe() is not None:
        return Outcome.KEPT
    run.before_change(what)
    try:
        create()
    except AlreadyExists:
        return Outcome.KEPT
    return Outcome.CREATED
