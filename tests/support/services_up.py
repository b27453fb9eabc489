"""One `services.up` against the fake cluster and state, and what it did, for the tests to read.

Every command services.up hands its runner is recorded with its stdin (the runner is spied on,
not replaced: the fake cluster behind pytest-subprocess still answers), so that tests can
speak of the order of the conversation and of what travelled where.

The fixtures at the end are the services tests' common ground; a test module imports the
ones it uses (pytest finds them by their names: cluster, state, tools, up) and defines its
own where it needs a different cluster or other switches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp import services
from metaflow_gcp.app import Stack, open_stack
from tests.support.cluster import FakeCluster, machine
from tests.support.console import CapturedConsole
from tests.support.stack import SETTINGS, FakeState


@dataclass
class Run:
    """One services.up: the stack, what it printed, and every (argv, stdin) it handed the runner."""

    stack: Stack
    console: CapturedConsole
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.console.text

    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]

    def index(self, *needle: str) -> int:
        """Position of the first command containing every `needle` word, in call order."""
        for i, argv in enumerate(self.argvs()):
            if all(n in argv for n in needle):
                return i
        raise AssertionError(f"no command with {needle}: {self.argvs()}")

    def applied(self, kind: str, name: str) -> int:
        """Position of the `kubectl apply -f -` that handed over this object on stdin."""
        for i, (_, stdin) in enumerate(self.calls):
            if stdin and (m := json.loads(stdin))["kind"] == kind and m["metadata"]["name"] == name:
                return i
        raise AssertionError(f"{kind}/{name} was never applied")

    def mutating(self) -> list[str]:
        return [r.command for r in self.stack.runner.history if r.mutating]


def helm_upgrade(run: Run, release: str) -> list[str]:
    """The `helm upgrade --install` of `release` in this run."""
    return run.argvs()[run.index("upgrade", "--install", release)]


class ServicesUp:
    """Calls services.up with the given switches against the fake cluster and state.

    `argo`, `airflow` and `jobset` default to what the caller built it with; other keywords
    are set on the stack (e.g. `interactive`). `last` keeps the latest run, also when
    services.up raised, so its output can be read.
    """

    def __init__(
        self,
        tools: dict[str, str],
        state: FakeState,
        *,
        width: int,
        argo: bool,
        airflow: bool,
        jobset: bool = False,
    ) -> None:
        self.tools, self.state, self.width = tools, state, width
        self.defaults = {"argo": argo, "airflow": airflow, "jobset": jobset}
        self.last: Run | None = None

    def __call__(self, *, yes: bool = False, **kw: Any) -> Run:
        switches = {name: kw.pop(name, default) for name, default in self.defaults.items()}
        console = CapturedConsole(width=self.width)
        stack = open_stack(
            {**SETTINGS, **{f"deploy_{name}": on for name, on in switches.items()}},
            yes=yes,
            env=self.tools,
            console=console,
        )
        stack.state = self.state  # type: ignore[assignment]
        result = self.last = Run(stack, console)
        real = stack.runner.run

        def spy(argv: Any, **kwargs: Any) -> Any:
            result.calls.append(([str(a) for a in argv], kwargs.get("stdin")))
            return real(argv, **kwargs)

        stack.runner.run = spy  # type: ignore[method-assign]
        for name, value in kw.items():
            setattr(stack, name, value)
        services.up(stack)
        return result


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(name="private_homes", autouse=True)
def private_homes_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes a Metaflow config or a log into the real home."""
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "metaflowconfig"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("METAFLOW_PROFILE", raising=False)


@pytest.fixture(name="tools")
def tools_fixture(tmp_path: Path) -> dict[str, str]:
    """PATH with gcloud, kubectl and helm (never run: pytest-subprocess answers) and a kubeconfig."""
    return machine(tmp_path)


@pytest.fixture(name="cluster")
def cluster_fixture(fp: FakeProcess) -> Iterator[FakeCluster]:
    """The fake cluster on pytest-subprocess; the test fails if it saw any problem."""
    fake = FakeCluster()
    fake.install(fp)
    yield fake
    assert fake.problems == []


@pytest.fixture(name="state")
def state_fixture() -> FakeState:
    return FakeState.after_infra_up()


@pytest.fixture(name="up")
def up_fixture(tools: dict[str, str], state: FakeState) -> ServicesUp:
    """services.up, Argo on, Airflow and JobSet off (those: tests/unit/test_airflow_services.py)."""
    return ServicesUp(tools, state, width=400, argo=True, airflow=False)
