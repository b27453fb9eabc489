"""Run steps as a dependency graph, concurrently, with a view a person can watch.

A step starts as soon as everything it needs has succeeded, so a run lasts as
long as its longest chain, not the sum. On a failure the steps in flight finish,
nothing new starts, and the report names what failed and why. Steps call
`run.before_change()` before their first mutation: that waits for the gate (the
stack lock), which is taken in the background while the first describes run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from metaflow_gcp.errors import StackError, StepFailed

if TYPE_CHECKING:
    from rich.console import Console


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    KEPT = "kept"
    DELETED = "deleted"
    GONE = "already gone"
    PLANNED = "planned"
    SKIPPED = "skipped"


class Interrupted(StackError):
    """Ctrl-C reached a step that was waiting; what it waited on goes on in Google Cloud."""

    def __init__(self, step: str) -> None:
        super().__init__(
            f"{step}: interrupted (an operation in flight continues; a re-run resumes)"
        )


class Blocked(Exception):
    """A step reached its first change, but a step it changes after did not finish."""


class PlannedChange(Exception):
    """Raised by the plan gate: the step would change something here.

    new: the change brings a resource into existence, so what is built on it cannot be
    looked at yet (a plan marks those steps planned without running them).
    """

    def __init__(self, what: str, *, new: bool) -> None:
        super().__init__(what)
        self.new = new


class Status(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    NOT_STARTED = "not started"


@dataclass
class StepRun:
    """What a step's action can do while it runs."""

    name: str
    _graph: GraphRun

    def note(self, text: str) -> None:
        """Say what the step is doing now (e.g. which operation it waits on)."""
        self._graph.note(self.name, text)

    def before_change(self, what: str = "change", *, new: bool = True, locked: bool = True) -> None:
        """Call right before a mutation: waits for the gate (the lock), raises if it failed.

        In a plan, this is where the step stops: `what` becomes the plan's line. new=False
        for changes to something that exists (grants, fixes), which later steps can look at.
        locked=False for a change that is safe without the lock (idempotent, free, never
        undone, not the stack's own): it goes ahead while the lock is still being taken.
        """
        self._graph.pass_gate(what, new=new, locked=locked)
        self._graph.wait_for_changes_after(self.name)

    def before_removal(self, what: str) -> None:
        """before_change for a delete: a removal hides nothing that a later step reads, so
        a preview goes on to look at the steps after it."""
        self.before_change(what, new=False)

    @property
    def planning(self) -> bool:
        """True in a plan: a step that would otherwise act first and read later reads first."""
        return self._graph.plan

    @property
    def stopping(self) -> bool:
        """True once another step failed: finish what is in flight, start nothing new."""
        return self._graph.stop.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait, but give up at once when the user presses Ctrl-C."""
        if self._graph.interrupt.wait(seconds):
            raise Interrupted(self.name)


Action = Callable[[StepRun], Outcome]

_current = threading.local()  # the StepRun of the step this thread works for, if any


def pause(seconds: float) -> None:
    """Wait before a retry, from code that has no StepRun at hand (the gcloud wrapper).

    In a step's thread it waits the way the step would: Ctrl-C, or a refused lock, ends the
    wait at once and nothing more is started. Elsewhere it is a plain sleep.
    """
    run: StepRun | None = getattr(_current, "run", None)
    if run is None:
        time.sleep(seconds)
    else:
        run.sleep(seconds)


@dataclass(frozen=True)
class Step:
    """changes_after: steps that must be done before this one changes anything; its reads
    run as soon as its needs are met (teardown lists Cloud SQL while the cluster empties)."""

    name: str
    title: str
    action: Action
    needs: tuple[str, ...] = ()
    changes_after: tuple[str, ...] = ()


@dataclass
class StepState:
    step: Step
    status: Status = Status.WAITING
    outcome: Outcome | None = None
    error: BaseException | None = None
    note: str = ""
    planned_new: bool = False
    started: float | None = None
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


@dataclass
class Report:
    states: dict[str, StepState]
    duration: float
    interrupted: bool = False
    gate_error: BaseException | None = None

    @property
    def failed(self) -> list[StepState]:
        return [s for s in self.states.values() if s.status is Status.FAILED]

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and not self.interrupted
            and all(s.status is Status.DONE for s in self.states.values())
        )

    def outcomes(self) -> dict[str, Outcome | None]:
        return {name: state.outcome for name, state in self.states.items()}

    def raise_for_failure(self) -> None:
        if self.gate_error is not None:
            raise self.gate_error
        if self.failed:
            first = self.failed[0]
            assert first.error is not None
            raise StepFailed(first.step.title, first.error)


class View(Protocol):
    def start(self, states: dict[str, StepState]) -> None: ...
    def event(self, state: StepState, text: str) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...


def validate_graph(steps: Sequence[Step]) -> None:
    """Unknown needs and cycles are programming errors: fail before anything runs."""
    names = {s.name for s in steps}
    for step in steps:
        missing = (set(step.needs) | set(step.changes_after)) - names
        if missing:
            raise ValueError(f"step {step.name} needs unknown steps {sorted(missing)}")
    order = topological(steps)
    if len(order) != len(steps):
        raise ValueError("the steps contain a cycle")


def topological(steps: Sequence[Step]) -> list[Step]:
    """Steps in an order that respects needs (and changes_after), keeping the given order
    among equals."""
    done: set[str] = set()
    order: list[Step] = []
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if set(s.needs) | set(s.changes_after) <= done]
        if not ready:
            break
        for step in ready:
            order.append(step)
            done.add(step.name)
            remaining.remove(step)
    return order


class GraphRun:
    """One execution of a list of steps."""

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        view: View | None = None,
        gate: Callable[[], None] | None = None,
        max_workers: int = 8,
        sequential: bool = False,
        plan: bool = False,
        keep_going: bool = False,
    ) -> None:
        validate_graph(steps)
        self.plan = plan
        self.keep_going = keep_going
        self.steps = list(steps)
        self.states = {s.name: StepState(s) for s in self.steps}
        self.view = view
        self.max_workers = 1 if sequential else max_workers
        self.stop = threading.Event()
        self.interrupt = threading.Event()
        self._lock = threading.Lock()
        self._gate = gate
        self._gate_done = threading.Event()
        self._gate_error: BaseException | None = None

    # -- the gate ------------------------------------------------------------------------

    def _run_gate(self) -> None:
        try:
            if self._gate is not None:
                self._gate()
        except BaseException as error:  # noqa: BLE001 - handed to every step that waits
            self._gate_error = error
            self.stop.set()  # no lock, no changes: start nothing new, stop waiting
            self.interrupt.set()
        finally:
            self._gate_done.set()

    def pass_gate(self, what: str, *, new: bool = True, locked: bool = True) -> None:
        if self.plan:
            raise PlannedChange(what, new=new)
        if locked:
            self._gate_done.wait()
        if self._gate_error is not None:  # a lock held elsewhere stops even unlocked changes
            raise self._gate_error

    def wait_for_changes_after(self, name: str) -> None:
        """Hold a step's first change until the steps it changes after are done; Ctrl-C or
        one of them failing or never starting ends the wait (the step is not started)."""
        after = [self.states[n] for n in self.states[name].step.changes_after]
        while not all(state.status is Status.DONE for state in after):
            if self.interrupt.is_set():
                raise Interrupted(name)
            if any(self._never_done(state) for state in after):
                raise Blocked(name)
            self.interrupt.wait(0.05)

    def _never_done(self, state: StepState) -> bool:
        """Failed or not started, or waiting for a step that will never be done."""
        if state.status in (Status.FAILED, Status.NOT_STARTED):
            return True
        if state.status is not Status.WAITING:
            return False
        return self.stop.is_set() or any(
            self._never_done(self.states[n]) for n in state.step.needs + state.step.changes_after
        )

    # -- events --------------------------------------------------------------------------

    def note(self, name: str, text: str) -> None:
        state = self.states[name]
        with self._lock:
            state.note = text
        if self.view:
            self.view.event(state, text)

    # -- running -------------------------------------------------------------------------

    def run(self) -> Report:  # noqa: PLR0912 - the scheduling loop reads best in one piece
        started = time.monotonic()
        interrupted = False
        if self.view:
            self.view.start(self.states)
        gate_thread = threading.Thread(target=self._run_gate, name="gate", daemon=True)
        gate_thread.start()
        try:
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix="step") as pool:
                running: dict[Future[Outcome], str] = {}
                try:
                    while True:
                        if not self.stop.is_set():
                            for step in self._ready(running):
                                running[pool.submit(self._execute, step)] = step.name
                                if self.max_workers == 1:
                                    break
                        if not running:
                            break
                        finished, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
                        for future in finished:
                            del running[future]
                        if self.view:
                            self.view.refresh()
                except KeyboardInterrupt:
                    interrupted = True
                    self.stop.set()
                    self.interrupt.set()
                    for future in running:
                        future.cancel()
                    raise
        finally:
            for state in self.states.values():
                if state.status is Status.WAITING:
                    state.status = Status.NOT_STARTED
            if self.view:
                self.view.stop()
        return Report(self.states, time.monotonic() - started, interrupted, self._gate_error)

    def _plan_after(self, state: StepState, parent: StepState) -> Outcome:
        with self._lock:
            state.status = Status.DONE
            state.outcome = Outcome.PLANNED
            state.planned_new = True
            state.note = f"create {state.step.title} (after {parent.step.title})"
            state.started = state.finished = time.monotonic()
        if self.view:
            self.view.event(state, f"would {state.note}")
        return Outcome.PLANNED

    def _ready(self, running: dict[Future[Outcome], str]) -> list[Step]:
        in_flight = set(running.values())
        ready = []
        for step in self.steps:
            state = self.states[step.name]
            if state.status is not Status.WAITING or step.name in in_flight:
                continue
            needs = step.needs + step.changes_after if self.max_workers == 1 else step.needs
            if all(self.states[n].status is Status.DONE for n in needs):
                ready.append(step)
        return ready

    def _execute(self, step: Step) -> Outcome:
        state = self.states[step.name]
        if self.plan:
            parents = [self.states[n] for n in step.needs if self.states[n].planned_new]
            if parents:  # built on something that does not exist yet: nothing to look at
                return self._plan_after(state, parents[0])
        with self._lock:
            state.status = Status.RUNNING
            state.started = time.monotonic()
        if self.view:
            self.view.event(state, "started")
        run = StepRun(step.name, self)
        _current.run = run
        try:
            outcome = step.action(run)
        except Blocked:  # it read, but changed nothing: as if it had never started
            self._finish(state, Status.NOT_STARTED, None, "")
            return self._told(state, "not started (a step it changes after did not finish)")
        except PlannedChange as change:
            self._finish(state, Status.DONE, Outcome.PLANNED, str(change))
            state.planned_new = change.new
            return self._told(state, f"would {change}", Outcome.PLANNED)
        except BaseException as error:
            self._finish(state, Status.FAILED, None, state.note, error)
            if not self.keep_going:
                self.stop.set()
            reason = error.one_line() if isinstance(error, StackError) else repr(error)
            self._told(state, f"failed: {reason}")
            if not isinstance(error, Exception):
                raise
            return Outcome.SKIPPED
        finally:
            _current.run = None
        self._finish(state, Status.DONE, outcome, "")
        return self._told(state, outcome.value, outcome)

    def _finish(
        self,
        state: StepState,
        status: Status,
        outcome: Outcome | None,
        note: str,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            state.status, state.outcome, state.note = status, outcome, note
            state.error = error
            state.finished = time.monotonic()

    def _told(self, state: StepState, text: str, outcome: Outcome = Outcome.SKIPPED) -> Outcome:
        if self.view:
            self.view.event(state, text)
        return outcome


# ---------------------------------------------------------------------------------------
# Views


_ICONS = {
    Status.WAITING: "[dim]·[/]",
    Status.RUNNING: "[yellow]…[/]",
    Status.DONE: "[green]✔[/]",
    Status.FAILED: "[red]✘[/]",
    Status.NOT_STARTED: "[dim]-[/]",
}


class PlainView:
    """One line per event: what a log file, CI, or a pipe can show as it happens."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def start(self, states: dict[str, StepState]) -> None:
        self.t0 = time.monotonic()

    def event(self, state: StepState, text: str) -> None:
        with self._lock:
            self.console.print(
                f"[{time.monotonic() - self.t0:6.1f}s] {state.step.title}: {text}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def refresh(self) -> None:
        pass

    def stop(self) -> None:
        pass


class LiveView:
    """A live table on a terminal: every step with its state, note and elapsed time."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.states: dict[str, StepState] = {}
        self._live: object | None = None

    def _table(self) -> object:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", show_edge=False, box=None)
        table.add_column("", width=1)
        table.add_column("step")
        table.add_column("state")
        table.add_column("time", justify="right")
        for state in self.states.values():
            if state.status is Status.DONE and state.outcome is not None:
                what = state.outcome.value
            elif state.status is Status.FAILED:
                err = state.error
                what = f"[red]{err.one_line() if isinstance(err, StackError) else err!r}[/]"
            else:
                what = state.note or state.status.value
            elapsed = f"{state.elapsed:.0f}s" if state.started is not None else ""
            table.add_row(_ICONS[state.status], state.step.title, what, elapsed)
        return table

    def start(self, states: dict[str, StepState]) -> None:
        from rich.live import Live

        self.states = states
        live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)  # type: ignore[arg-type]
        live.start()
        self._live = live

    def event(self, state: StepState, text: str) -> None:
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._live is not None:
            self.refresh()
            self._live.stop()  # type: ignore[attr-defined]
            self._live = None


def make_view(console: Console, title: str) -> View:
    """A live table on a terminal; plain lines elsewhere (rich shows nothing live there)."""
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveView(console, title)
    return PlainView(console)


def run_steps(
    steps: Sequence[Step],
    *,
    console: Console,
    title: str,
    gate: Callable[[], None] | None = None,
    dry_run: bool = False,
    plan: bool = False,
    keep_going: bool = False,
    max_workers: int = 8,
) -> Report:
    """Run the graph; a dry run goes one step at a time so the printed commands read in order.

    keep_going: a failure stops only the steps that need the failed one (independent Helm
    releases still finish); by default nothing new starts after a failure.
    """
    if dry_run:  # one at a time, each step as early in the listed order as its needs allow
        return GraphRun(steps, view=None, gate=gate, sequential=True).run()
    view = make_view(console, title)
    return GraphRun(
        steps, view=view, gate=gate, max_workers=max_workers, plan=plan, keep_going=keep_going
    ).run()
