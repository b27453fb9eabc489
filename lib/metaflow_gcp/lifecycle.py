"""The life of a task that changes the stack: consent, the dry-run banner, the lock, the last write.

infra.up, services.up and teardown differ in their steps and in what they record. Everything
else they share is written here once, so the three cannot drift apart: who may be asked,
how a dry run announces itself and counts its commands, how the lock is taken (a lock broken
with --force-unlock is always named), and the single write that records the outcome and
releases the lock on every way out, a failure or Ctrl-C included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from metaflow_gcp.app import Stack
from metaflow_gcp.errors import StackError
from metaflow_gcp.graph import Report
from metaflow_gcp.state import Doc

Record = Callable[[Doc, "Report | None"], None]


class TaskRun:
    """One run of one changing task on one stack."""

    def __init__(self, stack: Stack, task: str, *, force_unlock: bool = False) -> None:
        self.stack = stack
        self.task = task
        self.force_unlock = force_unlock
        self.report: Report | None = None  # set by the task once its graph has run
        self._held = threading.Event()  # set from the graph's gate thread

    # -- consent ---------------------------------------------------------------------------

    def require_consent(self, why: str, fix: str = "run it on a terminal, or pass --yes") -> None:
        """Refuse before any cloud call when nobody could answer the question and no --yes."""
        stack = self.stack
        if not stack.dry_run and not stack.assume_yes and not stack.interactive():
            raise StackError(f"{self.task} {why}. Fix: {fix}")

    def asks(self) -> bool:
        """A person is there to answer, and has not answered already with --yes."""
        stack = self.stack
        return stack.interactive() and not stack.assume_yes and not stack.dry_run

    def confirm(self, question: str) -> bool:
        from rich.prompt import Confirm

        return bool(Confirm.ask(question, console=self.stack.console, default=False))

    def confirm_by_typing_name(self) -> bool:
        """For what cannot be undone: the answer is the stack's name, not a reflex 'y'."""
        from rich.prompt import Prompt

        name = self.stack.names.stack
        typed = Prompt.ask(
            f"Type the stack name ([bold]{name}[/]) to delete it", console=self.stack.console
        )
        return typed.strip() == name

    # -- dry run ---------------------------------------------------------------------------

    def announce_dry_run(self) -> None:
        if self.stack.dry_run:
            self.stack.console.print(
                f"[bold]Dry run[/]: the commands {self.task} would run for stack "
                f"'{self.stack.names.stack}' (nothing is called):"
            )

    def print_dry_run_counts(self) -> None:
        history = self.stack.runner.history
        mutating = sum(1 for r in history if r.mutating)
        self.stack.console.print(
            f"{mutating} changing commands and {len(history) - mutating} reads would run."
        )

    # -- the lock --------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the stack's lock for this task; a lock broken on purpose is always named."""
        broken = self.stack.state.acquire(self.task, force=self.force_unlock)
        self._held.set()
        if broken:
            self.stack.console.print(f"[yellow]![/] broke the lock of {lock_holder(broken)}")

    def gate(self, take: Callable[[], None]) -> Callable[[], None] | None:
        """What to hand the graph as its gate (`take` locks, and more if the task needs).

        A dry run takes it at once, so that the printed commands read top to bottom; a
        real run lets the graph take it beside the steps that need no lock.
        """
        if self.stack.dry_run:
            take()
            return None
        return take

    @contextmanager
    def recording(self, record: Record) -> Iterator[TaskRun]:
        """On every way out of the block, once the lock was taken: one write that records
        the outcome (`record` edits the state document) and releases our lock."""
        try:
            yield self
        finally:
            if self._held.is_set():
                self._record_and_release(record)

    def _record_and_release(self, record: Record) -> None:
        lock_id = self.stack.state.lock_id

        def change(doc: Doc) -> None:
            record(doc, self.report)
            held = doc.get("lock")
            if isinstance(held, dict) and held.get("id") == lock_id:
                doc["lock"] = None

        self.stack.state.update(change)


def lock_holder(lock: Mapping[str, Any]) -> str:
    return f"{lock.get('holder')} ({lock.get('task')}, since {lock.get('since')})"
