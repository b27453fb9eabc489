"""The life of a changing task (lifecycle.TaskRun), the same for infra.up, services.up and teardown.

Each task hands over its steps and a record function; these tests specify the rest: who is
asked, how a dry run announces itself, how the lock is taken, and the one write that
records the outcome and releases the lock on every way out.
"""

from __future__ import annotations

from typing import Any

import pytest

from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.errors import LockHeld, StackError
from metaflow_gcp.graph import Outcome, Report, Step, StepRun, run_steps
from metaflow_gcp.lifecycle import TaskRun
from metaflow_gcp.state import Doc
from tests.support.console import CapturedConsole
from tests.support.stack import SETTINGS, FakeState

OTHER_LOCK = {"id": "someone-else", "holder": "ana@host", "task": "infra.up", "since": "09:00"}


def make_stack(
    state: FakeState, *, dry_run: bool = False, yes: bool = False, terminal: bool = False
) -> Stack:
    stack = open_stack(SETTINGS, dry_run=dry_run, yes=yes, console=CapturedConsole())
    stack.state = state  # type: ignore[assignment]
    stack.interactive = lambda: terminal  # type: ignore[method-assign]
    return stack


def record_outcome(doc: Doc, report: Report | None) -> None:
    doc["last"] = {"ok": bool(report and report.ok), "recorded": report is not None}


def one_step(action: Any) -> list[Step]:
    return [Step("only", "the only step", action)]


# -- consent ------------------------------------------------------------------------------------


def test_without_a_terminal_or_yes_a_changing_task_refuses_before_anything_is_called() -> None:
    state = FakeState({})
    task = TaskRun(make_stack(state), "teardown")

    with pytest.raises(StackError, match=r"^teardown deletes resources\. Fix: pass --yes$"):
        task.require_consent("deletes resources", fix="pass --yes")
    assert state.writes == 0


@pytest.mark.parametrize("how", [{"yes": True}, {"dry_run": True}, {"terminal": True}])
def test_yes_a_dry_run_or_a_person_at_a_terminal_may_go_on(how: dict[str, bool]) -> None:
    TaskRun(make_stack(FakeState({}), **how), "infra.up").require_consent("costs money")


def test_only_a_person_at_a_terminal_without_yes_is_asked() -> None:
    assert TaskRun(make_stack(FakeState({}), terminal=True), "t").asks()
    assert not TaskRun(make_stack(FakeState({}), terminal=True, yes=True), "t").asks()
    assert not TaskRun(make_stack(FakeState({}), terminal=True, dry_run=True), "t").asks()


# -- the lock and the last write -----------------------------------------------------------------


def test_the_outcome_and_the_lock_release_are_one_write() -> None:
    state = FakeState({})
    task = TaskRun(make_stack(state), "services.up")

    with task.recording(record_outcome):
        task.report = run_steps(
            one_step(lambda run: Outcome.CREATED),
            console=task.stack.console,
            title="t",
            gate=task.gate(task.lock),
        )

    assert state.writes == 2  # the lock, then outcome and release together
    assert state.doc["lock"] is None
    assert state.doc["last"] == {"ok": True, "recorded": True}


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_or_ctrl_c_still_records_and_releases(error: BaseException) -> None:
    state = FakeState({})
    task = TaskRun(make_stack(state), "infra.up")

    with pytest.raises(type(error)), task.recording(record_outcome):
        task.lock()
        raise error

    assert state.doc["lock"] is None
    assert state.doc["last"] == {"ok": False, "recorded": False}


def test_a_lock_held_by_someone_else_stops_the_task_and_nothing_is_written() -> None:
    state = FakeState({"lock": dict(OTHER_LOCK)})
    task = TaskRun(make_stack(state), "teardown")

    with pytest.raises(LockHeld), task.recording(record_outcome):
        task.lock()

    assert state.writes == 0
    assert state.doc["lock"] == OTHER_LOCK


def test_a_lock_broken_with_force_unlock_is_named() -> None:
    state = FakeState({"lock": dict(OTHER_LOCK)})
    task = TaskRun(make_stack(state), "teardown", force_unlock=True)

    with task.recording(record_outcome):
        task.lock()

    said = task.stack.console.text  # type: ignore[attr-defined]
    assert "broke the lock of ana@host (infra.up, since 09:00)" in said
    assert state.doc["lock"] is None


def test_the_release_leaves_a_lock_that_someone_else_took_over_alone() -> None:
    state = FakeState({})
    task = TaskRun(make_stack(state), "infra.up")

    with task.recording(record_outcome):
        task.lock()
        state.doc["lock"] = dict(OTHER_LOCK)  # broken by another run with --force-unlock

    assert state.doc["lock"] == OTHER_LOCK
    assert state.doc["last"]["recorded"] is False


# -- dry run ----------------------------------------------------------------------------------


def test_a_dry_run_takes_the_lock_first_so_its_commands_read_top_to_bottom() -> None:
    seen: list[str] = []
    task = TaskRun(make_stack(FakeState({}), dry_run=True), "infra.up")

    gate = task.gate(lambda: seen.append("lock"))

    assert gate is None and seen == ["lock"]


def test_a_real_run_lets_the_graph_take_the_lock_beside_the_first_steps() -> None:
    seen: list[str] = []
    task = TaskRun(make_stack(FakeState({})), "infra.up")

    gate = task.gate(lambda: seen.append("lock"))

    assert gate is not None and seen == []


def test_a_dry_run_announces_itself_and_counts_what_it_would_run() -> None:
    stack = make_stack(FakeState({}), dry_run=True)
    task = TaskRun(stack, "teardown")

    task.announce_dry_run()
    stack.runner.run(["gcloud", "compute", "networks", "describe", "n"], mutating=False)
    stack.runner.run(["gcloud", "compute", "networks", "delete", "n"], mutating=True)
    task.print_dry_run_counts()

    said = stack.console.text  # type: ignore[attr-defined]
    assert "Dry run: the commands teardown would run for stack 'dev' (nothing is called):" in said
    assert "1 changing commands and 1 reads would run." in said


def test_a_step_that_needs_the_lock_waits_for_it() -> None:
    order: list[str] = []
    state = FakeState({})
    task = TaskRun(make_stack(state), "infra.up")

    def take() -> None:
        order.append("lock")
        task.lock()

    def change(run: StepRun) -> Outcome:
        run.before_change("create it")
        order.append("change")
        return Outcome.CREATED

    with task.recording(record_outcome):
        task.report = run_steps(
            one_step(change), console=task.stack.console, title="t", gate=task.gate(take)
        )

    assert order == ["lock", "change"]
