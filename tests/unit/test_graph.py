"""The step graph: concurrency, failure semantics, the lock gate, plans, and what people see."""

from __future__ import annotations

import threading
import time

import pytest

from metaflow_gcp.errors import LockHeld, StackError
from metaflow_gcp.graph import (
    GraphRun,
    Outcome,
    PlainView,
    Status,
    Step,
    StepRun,
    run_steps,
    validate_graph,
)
from tests.support.console import CapturedConsole


def sleeper(seconds: float, log: list[str] | None = None, name: str = "") -> object:
    def action(run: StepRun) -> Outcome:
        if log is not None:
            log.append(f"start {name}")
        time.sleep(seconds)
        if log is not None:
            log.append(f"end {name}")
        return Outcome.CREATED

    return action


def quiet() -> CapturedConsole:
    return CapturedConsole()


def test_independent_steps_run_at_the_same_time_so_the_run_lasts_its_longest_chain() -> None:
    both_running = threading.Barrier(2, timeout=5)

    def meets_the_other(run: StepRun) -> Outcome:
        both_running.wait()  # only returns if the other independent step runs meanwhile
        return Outcome.CREATED

    steps = [
        Step("network", "network", meets_the_other),
        Step("bucket", "bucket", meets_the_other),
        Step("subnet", "subnet", sleeper(0.0), ("network",)),  # type: ignore[arg-type]
    ]
    report = GraphRun(steps).run()
    assert report.ok


def test_a_step_starts_only_after_everything_it_needs() -> None:
    log: list[str] = []
    steps = [
        Step("net", "net", sleeper(0.05, log, "net")),  # type: ignore[arg-type]
        Step("subnet", "subnet", sleeper(0.01, log, "subnet"), ("net",)),  # type: ignore[arg-type]
    ]
    GraphRun(steps).run()
    assert log.index("end net") < log.index("start subnet")


def test_after_a_failure_in_flight_steps_finish_and_nothing_new_starts() -> None:
    finished = threading.Event()

    def slow(run: StepRun) -> Outcome:
        time.sleep(0.3)
        finished.set()
        return Outcome.CREATED

    def boom(run: StepRun) -> Outcome:
        time.sleep(0.05)
        raise StackError("quota exceeded")

    steps = [
        Step("slow", "slow", slow),
        Step("boom", "boom", boom),
        Step("later", "later", sleeper(0.0), ("boom",)),  # type: ignore[arg-type]
        Step("after_slow", "after slow", sleeper(0.0), ("slow",)),  # type: ignore[arg-type]
    ]
    report = GraphRun(steps).run()
    assert finished.is_set()
    assert report.states["slow"].status is Status.DONE
    assert report.states["boom"].status is Status.FAILED
    assert report.states["after_slow"].status is Status.NOT_STARTED
    assert report.states["later"].status is Status.NOT_STARTED
    with pytest.raises(StackError, match="step 'boom' failed: quota exceeded"):
        report.raise_for_failure()


def test_keep_going_lets_independent_work_finish_after_a_failure() -> None:
    def boom(run: StepRun) -> Outcome:
        raise StackError("release failed")

    steps = [
        Step("airflow", "airflow", boom),
        Step("metaflow", "metaflow", sleeper(0.05)),  # type: ignore[arg-type]
        Step("events", "events", sleeper(0.0), ("metaflow",)),  # type: ignore[arg-type]
        Step("after_airflow", "x", sleeper(0.0), ("airflow",)),  # type: ignore[arg-type]
    ]
    report = GraphRun(steps, keep_going=True).run()
    assert report.states["events"].status is Status.DONE
    assert report.states["after_airflow"].status is Status.NOT_STARTED
    assert not report.ok


def test_changes_wait_for_the_gate_while_describes_run_meanwhile() -> None:
    order: list[str] = []
    gate_open = threading.Event()

    def gate() -> None:
        time.sleep(0.2)
        order.append("lock taken")
        gate_open.set()

    def step(run: StepRun) -> Outcome:
        order.append("describe")
        run.before_change("create it")
        order.append("create")
        return Outcome.CREATED

    report = GraphRun([Step("s", "s", step)], gate=gate).run()
    assert report.ok
    assert order == ["describe", "lock taken", "create"]


def test_a_change_safe_without_the_lock_goes_ahead_while_the_lock_is_taken() -> None:
    order: list[str] = []

    def gate() -> None:
        time.sleep(0.2)
        order.append("lock taken")

    def enable_apis(run: StepRun) -> Outcome:
        run.before_change("enable compute", locked=False)
        order.append("apis enabled")
        return Outcome.CREATED

    def create(run: StepRun) -> Outcome:
        run.before_change("create network")
        order.append("network created")
        return Outcome.CREATED

    steps = [Step("apis", "apis", enable_apis), Step("net", "net", create, ("apis",))]
    report = GraphRun(steps, gate=gate).run()
    assert report.ok
    assert order == ["apis enabled", "lock taken", "network created"]


def test_a_lock_held_elsewhere_stops_even_a_change_safe_without_it() -> None:
    def gate() -> None:
        time.sleep(0.1)
        raise LockHeld("alice@host", "2026-01-01T00:00:00Z", "infra.up")

    changed: list[str] = []

    def enable_apis(run: StepRun) -> Outcome:
        time.sleep(0.4)  # still reading when the lock is refused
        run.before_change("enable compute", locked=False)
        changed.append("apis")
        return Outcome.CREATED

    report = GraphRun([Step("apis", "apis", enable_apis)], gate=gate).run()
    with pytest.raises(LockHeld, match="alice@host"):
        report.raise_for_failure()
    assert changed == []


def test_a_gate_that_fails_stops_everything_and_is_reported_as_itself() -> None:
    def gate() -> None:
        raise LockHeld("alice@host", "2026-01-01T00:00:00Z", "infra.up")

    def step(run: StepRun) -> Outcome:
        run.before_change("create it")
        return Outcome.CREATED

    report = GraphRun([Step("s", "s", step), Step("t", "t", step, ("s",))], gate=gate).run()
    with pytest.raises(LockHeld, match="alice@host"):
        report.raise_for_failure()
    assert report.states["t"].status is Status.NOT_STARTED


def test_a_plan_stops_each_step_at_its_first_change() -> None:
    def missing(run: StepRun) -> Outcome:
        run.before_change("create network n")
        raise AssertionError("a plan never changes anything")

    def never_looked_at(run: StepRun) -> Outcome:
        raise AssertionError("its network does not exist yet: nothing to describe")

    steps = [Step("net", "net", missing), Step("sub", "subnet s", never_looked_at, ("net",))]
    report = run_steps(steps, console=quiet(), title="plan", plan=True)
    assert report.states["net"].outcome is Outcome.PLANNED
    assert report.states["net"].note == "create network n"
    assert report.states["sub"].outcome is Outcome.PLANNED
    assert report.states["sub"].note == "create subnet s (after net)"


def test_a_plan_still_looks_at_what_is_built_on_a_resource_that_only_changes() -> None:
    def grant(run: StepRun) -> Outcome:
        run.before_change("grant roles/x", new=False)
        return Outcome.UPDATED

    def present(run: StepRun) -> Outcome:
        return Outcome.KEPT

    steps = [Step("iam", "iam", grant), Step("gke", "gke", present, ("iam",))]
    report = run_steps(steps, console=quiet(), title="plan", plan=True)
    assert report.states["iam"].outcome is Outcome.PLANNED
    assert report.states["gke"].outcome is Outcome.KEPT


def test_a_dry_run_goes_one_step_at_a_time_in_the_listed_order() -> None:
    log: list[str] = []
    steps = [
        Step(name, name, sleeper(0.0, log, name), needs)  # type: ignore[arg-type]
        for name, needs in [("apis", ()), ("net", ("apis",)), ("sub", ("net",)),
                            ("bucket", ("apis",))]
    ]
    run_steps(steps, console=quiet(), title="", dry_run=True)
    assert [e.split()[1] for e in log if e.startswith("start")] == ["apis", "net", "sub", "bucket"]


def test_without_a_terminal_each_event_is_one_plain_line() -> None:
    console = CapturedConsole(width=120)
    run_steps([Step("net", "network mf-dev-vpc", sleeper(0.0))],  # type: ignore[arg-type]
              console=console, title="t")
    lines = console.text.splitlines()
    assert any(line.endswith("network mf-dev-vpc: started") for line in lines)
    assert any(line.endswith("network mf-dev-vpc: created") for line in lines)
    assert isinstance(PlainView(console), PlainView)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Step("a", "a", sleeper(0), ("ghost",))], "needs unknown steps"),  # type: ignore[arg-type]
        ([Step("a", "a", sleeper(0), ("b",)), Step("b", "b", sleeper(0), ("a",))], "cycle"),  # type: ignore[arg-type]
    ],
    ids=["unknown need", "cycle"],
)
def test_a_malformed_graph_fails_before_anything_runs(steps: list[Step], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_graph(steps)


def test_sleeping_steps_wake_up_at_once_when_interrupted() -> None:
    run = GraphRun([Step("s", "s", sleeper(0))])  # type: ignore[arg-type]
    step = StepRun("s", run)
    run.interrupt.set()
    started = time.monotonic()
    with pytest.raises(StackError, match="interrupted"):
        step.sleep(10)
    assert time.monotonic() - started < 0.5


# -- changes_after: reads early, changes in order -------------------------------------------


def reads_then_changes(log: list[str], name: str) -> object:
    def action(run: StepRun) -> Outcome:
        log.append(f"{name} reads")
        run.before_change(f"delete {name}")
        log.append(f"{name} changes")
        return Outcome.DELETED

    return action


def test_a_step_reads_at_once_but_changes_only_after_the_steps_it_changes_after() -> None:
    log: list[str] = []
    emptied = threading.Event()

    def empty(run: StepRun) -> Outcome:
        assert emptied.wait(5)  # the other step has read by now, while this one runs
        log.append("cluster emptied")
        return Outcome.DELETED

    def sql(run: StepRun) -> Outcome:
        log.append("sql reads")
        emptied.set()
        run.before_change("delete sql")
        log.append("sql changes")
        return Outcome.DELETED

    steps = [
        Step("releases", "releases", empty),
        Step("sql", "sql", sql, changes_after=("releases",)),
    ]
    report = GraphRun(steps).run()

    assert report.ok
    assert log == ["sql reads", "cluster emptied", "sql changes"]


@pytest.mark.parametrize("keep_going", [False, True])
def test_when_the_step_it_changes_after_fails_it_changes_nothing_and_counts_as_not_started(
    keep_going: bool,
) -> None:
    log: list[str] = []

    def refuse(run: StepRun) -> Outcome:
        time.sleep(0.05)
        raise StackError("the cluster refused")

    steps = [
        Step("releases", "releases", refuse),
        Step("sql", "sql", reads_then_changes(log, "sql"), changes_after=("releases",)),  # type: ignore[arg-type]
    ]
    report = GraphRun(steps, keep_going=keep_going).run()

    assert log == ["sql reads"]
    assert report.states["sql"].status is Status.NOT_STARTED
    assert report.outcomes()["sql"] is None and not report.ok


def test_waiting_on_a_step_that_can_never_start_ends_too() -> None:
    """keep_going leaves a step whose need failed waiting: nobody may wait on it forever."""
    log: list[str] = []

    def fail(run: StepRun) -> Outcome:
        raise StackError("no")

    steps = [
        Step("describe", "describe", fail),
        Step("releases", "releases", sleeper(0.0), ("describe",)),  # type: ignore[arg-type]
        Step("sql", "sql", reads_then_changes(log, "sql"), changes_after=("releases",)),  # type: ignore[arg-type]
    ]
    started = time.monotonic()
    report = GraphRun(steps, keep_going=True).run()

    assert time.monotonic() - started < 5
    assert report.states["sql"].status is Status.NOT_STARTED and log == ["sql reads"]


def test_ctrl_c_ends_the_wait_for_the_step_it_changes_after() -> None:
    log: list[str] = []

    def long_uninstall(run: StepRun) -> Outcome:
        run.sleep(30)
        return Outcome.DELETED

    steps = [
        Step("releases", "releases", long_uninstall),
        Step("sql", "sql", reads_then_changes(log, "sql"), changes_after=("releases",)),  # type: ignore[arg-type]
    ]
    graph = GraphRun(steps)
    threading.Timer(0.3, graph.interrupt.set).start()  # what Ctrl-C does to a run
    started = time.monotonic()
    report = graph.run()

    assert time.monotonic() - started < 5
    assert "interrupted" in str(report.states["sql"].error)
    assert log == ["sql reads"]


def test_a_dry_run_runs_a_step_after_the_steps_it_changes_after() -> None:
    """One at a time, the printed commands read in the order they would run."""
    log: list[str] = []
    steps = [
        Step("sql", "sql", reads_then_changes(log, "sql"), changes_after=("releases",)),  # type: ignore[arg-type]
        Step("releases", "releases", reads_then_changes(log, "releases")),  # type: ignore[arg-type]
    ]
    report = GraphRun(steps, sequential=True).run()

    assert report.ok
    assert log == ["releases reads", "releases changes", "sql reads", "sql changes"]


def test_changes_after_an_unknown_step_or_in_a_circle_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        validate_graph([Step("a", "a", sleeper(0.0), changes_after=("nope",))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cycle"):
        validate_graph(
            [
                Step("a", "a", sleeper(0.0), ("b",)),  # type: ignore[arg-type]
                Step("b", "b", sleeper(0.0), changes_after=("a",)),  # type: ignore[arg-type]
            ]
        )
