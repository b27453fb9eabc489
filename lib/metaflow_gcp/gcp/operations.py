"""Follow long-running operations ourselves instead of sleeping or blocking in gcloud.

A blocking `gcloud sql instances create` gives up after 600 s while the instance
keeps creating, and gcloud's own backoff reaches 20 s between polls. We poll fast
while an operation is young and slow down as it ages, so a finished operation is
noticed within seconds without burning a gcloud process every second for 20 minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from metaflow_gcp.errors import StackError
from metaflow_gcp.graph import StepRun, pause

T = TypeVar("T")

# (age in seconds, poll interval). The second look comes half a second after the first:
# most quick operations (a patch, a small delete) are done by then, where a 2 s sleep
# would leave them unnoticed on a dependency chain. Then every 2 s for the first minute,
# then back off.
SCHEDULE: tuple[tuple[float, float], ...] = (
    (1.5, 0.5),
    (60, 2.0),
    (300, 5.0),
    (float("inf"), 10.0),
)


def interval(age: float) -> float:
    for limit, every in SCHEDULE:
        if age < limit:
            return every
    return SCHEDULE[-1][1]


class OperationFailed(StackError):
    pass


def follow(
    run: StepRun,
    what: str,
    poll: Callable[[], tuple[bool, str]],
    *,
    timeout: float,
    first_wait: float = 0.0,
) -> None:
    """Call `poll` until it reports done; `poll` returns (done, status text) or raises.

    first_wait: how long the operation usually takes at least, so we don't poll uselessly.
    """
    started = time.monotonic()
    if first_wait:
        run.sleep(first_wait)
    while True:
        done, status = poll()
        age = time.monotonic() - started
        if done:
            return
        if age > timeout:
            raise OperationFailed(
                f"{what} still not finished after {timeout / 60:.0f} min (last status {status}); "
                "it continues in Google Cloud: re-run later to pick it up"
            )
        run.note(f"{what}: {status.lower()} ({age:.0f}s)")
        run.sleep(interval(age))


# ---------------------------------------------------------------------------------------
# Retrying a call that may answer "not yet": the one loop every retry goes through.


@dataclass(frozen=True)
class RetryOn:
    """An error that means "not yet": wait `pause` seconds, note why, and call again, for
    at most `within` seconds after the first call and only while `still()` holds."""

    error: type[Exception]
    pause: float
    note: str = ""
    within: float = float("inf")
    still: Callable[[], bool] | None = None


def retry(
    call: Callable[[], T], *rules: RetryOn, run: StepRun | None = None, attempts: int = 0
) -> T:
    """`call` until it returns, or raises what no rule covers (or covers no longer).

    attempts: at most that many calls (0: no limit but the rules'). The waits end at once on
    Ctrl-C or a refused lock, through the step's own sleep, so nothing is started after.
    """
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return call()
        except tuple(rule.error for rule in rules) as error:
            rule = next(r for r in rules if isinstance(error, r.error))
            late = time.monotonic() - started > rule.within
            if late or (rule.still and not rule.still()) or (attempts and tries >= attempts):
                raise
            if run is not None and rule.note:
                run.note(rule.note)
            if rule.pause:
                run.sleep(rule.pause) if run is not None else pause(rule.pause)
