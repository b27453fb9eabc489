"""`inv port-forward`: which forwards, refusing taken ports, restarting dead children, no orphans."""

from __future__ import annotations

import io
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_subprocess import FakeProcess
from rich.console import Console

from metaflow_gcp import kube_names, nextsteps
from metaflow_gcp.config import validate
from metaflow_gcp.errors import MissingTool, StackError
from metaflow_gcp.kube import Kubectl
from metaflow_gcp.portforward import (
    Forward,
    Supervisor,
    check_ports_free,
    forwards_for,
    run_port_forward,
)
from metaflow_gcp.shell import Runner
from tests.support.cluster import kubectl_call, long_running
from tests.support.console import CapturedConsole

ROOT = Path(__file__).resolve().parents[2]

CTX = validate({"org_prefix": "acme", "project": "acme-ml-prod"}).names().kube_context
READY = "Forwarding from 127.0.0.1:{port} -> {port}"


# -- fakes -----------------------------------------------------------------------------


class FakeChild:
    """A `kubectl port-forward` child: prints its lines, runs until told to stop (or exits)."""

    _pids = itertools.count(4000)

    def __init__(
        self, argv: Sequence[str], lines: Sequence[str], *, exit_code: int | None, stubborn: bool
    ) -> None:
        self.args = list(argv)
        self.stdout = io.StringIO("".join(f"{line}\n" for line in lines))
        self.returncode = exit_code
        self.stubborn = stubborn  # ignores SIGTERM
        self.signals: list[str] = []
        self.pid = next(self._pids)

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.signals.append("TERM")
        if not self.stubborn:
            self.returncode = -15

    def kill(self) -> None:
        self.signals.append("KILL")
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    @property
    def port(self) -> int:
        return int(self.args[self.args.index("port-forward") + 2].split(":")[0])


class Spawner:
    """Replaces Runner.spawn: plays a script per local port, else a healthy child."""

    def __init__(self) -> None:
        self.scripts: dict[int, list[dict[str, Any]]] = {}
        self.children: list[FakeChild] = []
        self.fail_on: int | None = None

    def script(self, port: int, *runs: dict[str, Any]) -> None:
        self.scripts.setdefault(port, []).extend(runs)

    def __call__(self, argv: Sequence[str]) -> FakeChild:
        port = int(argv[argv.index("port-forward") + 2].split(":")[0])
        if port == self.fail_on:
            raise MissingTool("kubectl", "install kubectl")
        plan = self.scripts.get(port, [])
        run = plan.pop(0) if plan else {}
        child = FakeChild(
            argv,
            run.get("lines", [READY.format(port=port)]),
            exit_code=run.get("exit_code"),
            stubborn=run.get("stubborn", False),
        )
        self.children.append(child)
        return child

    def of(self, port: int) -> list[FakeChild]:
        return [c for c in self.children if c.port == port]

    def running(self) -> list[FakeChild]:
        return [c for c in self.children if c.returncode is None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spawner(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawner]:
    fake = Spawner()
    monkeypatch.setattr(Runner, "spawn", lambda self, argv: fake(argv))
    yield fake


@pytest.fixture
def console() -> CapturedConsole:
    return CapturedConsole(width=200)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def forwards(*ports: int) -> list[Forward]:
    return [
        Forward(f"service {p}", "metaflow", f"svc/s{p}", p, p, f"http://127.0.0.1:{p}")
        for p in ports
    ]


def supervisor(console: Console, clock: Clock, fwds: Sequence[Forward]) -> Supervisor:
    return Supervisor(Kubectl(Runner(), CTX), fwds, console, clock=clock)


def settle(sup: Supervisor) -> None:
    """Let every child's output be read (the fakes' output is already complete)."""
    for child in sup.children:
        if child.run is not None and child.run.reader is not None:
            child.run.reader.join(timeout=2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- which forwards --------------------------------------------------------------------


def test_metaflow_services_are_always_forwarded() -> None:
    got = {(f.namespace, f.target, f.local_port, f.remote_port) for f in forwards_for(False, False)}
    # The services live in metaflow-services, apart from user code.
    assert got == {
        ("metaflow-services", "svc/metadata-service", 8080, 8080),
        ("metaflow-services", "svc/metaflow-ui-backend", 8083, 8083),
        ("metaflow-services", "svc/metaflow-ui", 3000, 3000),
    }


def test_argo_adds_its_server_and_the_events_webhook() -> None:
    extra = set(forwards_for(True, False)) - set(forwards_for(False, False))
    assert {(f.namespace, f.target, f.local_port, f.remote_port) for f in extra} == {
        ("argo", "svc/argo-workflows-server", 2746, 2746),
        ("metaflow", "svc/argo-events-webhook-eventsource-svc", 12000, 12000),
    }


def test_airflow_adds_its_webserver_on_local_9090() -> None:
    extra = set(forwards_for(False, True)) - set(forwards_for(False, False))
    assert {(f.namespace, f.target, f.local_port, f.remote_port, f.url) for f in extra} == {
        ("airflow", "svc/airflow-webserver", 9090, 8080, "http://localhost:9090"),
    }


def test_every_url_is_plain_http_on_its_own_local_port() -> None:
    everything = forwards_for(True, True)
    assert len(everything) == 6
    assert all(f.url.startswith(f"http://localhost:{f.local_port}") for f in everything)
    assert len({f.local_port for f in everything}) == 6


def test_the_urls_are_the_ones_the_config_and_the_ui_backend_expect() -> None:
    """The UI backend accepts one origin (ORIGIN_TO_ALLOW_CORS_FROM), so the UI must be opened
    exactly where the chart's ui.corsOrigin and the next steps say: localhost, not 127.0.0.1."""
    urls = {f.name: f.url for f in forwards_for(True, True)}
    assert urls["Metaflow UI"] == kube_names.local_url("ui") == nextsteps.UI_URL
    assert urls["Metaflow metadata service"] == nextsteps.METADATA_URL
    assert urls["Argo Workflows UI"] == nextsteps.ARGO_UI_URL
    assert urls["Airflow UI"] == nextsteps.AIRFLOW_UI_URL
    chart = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    assert chart["ui"]["corsOrigin"] == urls["Metaflow UI"]


def test_the_argo_ui_forward_says_how_to_log_in_and_shows_no_token(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    (argo,) = [f for f in forwards_for(True, False) if f.name == "Argo Workflows UI"]
    assert 'echo "Bearer $(gcloud auth print-access-token)"' in argo.hint
    sup = supervisor(console, clock, [argo])
    sup.start()
    sup.show_urls()
    sup.stop()
    assert "gcloud auth print-access-token" in console.text


# -- taken ports -----------------------------------------------------------------------


def test_a_taken_port_is_refused_naming_the_port_and_what_wanted_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(StackError) as caught:
            check_ports_free(
                [Forward("Metaflow UI", "metaflow", "svc/metaflow-ui", taken, 3000, "http://x")]
            )
    message = str(caught.value)
    assert message.startswith(
        f"port {taken} on 127.0.0.1 (Metaflow UI, svc/metaflow-ui) is already in use"
    )
    assert "\n" not in message


def test_each_taken_port_gets_its_own_line() -> None:
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen()
        ports = [a.getsockname()[1], b.getsockname()[1]]
        with pytest.raises(StackError) as caught:
            check_ports_free(forwards(*ports))
    lines = str(caught.value).splitlines()
    assert [line.split()[1] for line in lines] == [str(p) for p in ports]


def test_free_ports_pass_and_a_port_wanted_twice_does_not() -> None:
    port = free_port()
    check_ports_free(forwards(port))
    with pytest.raises(StackError, match=f"port {port} is wanted twice"):
        check_ports_free(forwards(port, port))


def test_nothing_starts_when_a_port_is_taken(spawner: Spawner, console: CapturedConsole) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(StackError, match=f"port {taken}"):
            run_port_forward(Kubectl(Runner(), CTX), forwards(free_port(), taken), console)
    assert spawner.children == []


# -- supervision -----------------------------------------------------------------------


def test_each_forward_runs_kubectl_port_forward_on_the_stack_context(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    sup = supervisor(console, clock, forwards_for(True, True))
    sup.start()
    sup.stop()
    argvs = [c.args for c in spawner.children]
    assert argvs[0] == [
        "kubectl",
        f"--context={CTX}",
        "--namespace=metaflow-services",
        "port-forward",
        "svc/metadata-service",
        "8080:8080",
        "--address=localhost",  # kubectl binds 127.0.0.1 and ::1
    ]
    assert argvs[-1][2:6] == [
        "--namespace=airflow",
        "port-forward",
        "svc/airflow-webserver",
        "9090:8080",
    ]
    assert all(argv[1] == f"--context={CTX}" for argv in argvs)


def test_urls_are_printed_once_every_forward_is_up(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    sup = supervisor(console, clock, forwards(18080, 13000))
    sup.start()
    settle(sup)
    sup.poll()
    sup.poll()
    text = console.text
    assert text.count("http://127.0.0.1:18080") == 1
    assert "service 13000  http://127.0.0.1:13000" in text
    assert "https" not in text
    assert "Press Ctrl-C to stop" in text
    sup.stop()


def test_urls_wait_for_a_slow_forward_but_not_forever(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    spawner.script(13000, {"lines": []})  # running, but has not said "Forwarding from" yet
    sup = supervisor(console, clock, forwards(18080, 13000))
    sup.start()
    settle(sup)
    sup.poll()
    assert "http://" not in console.text
    clock.now += sup.settle_timeout
    sup.poll()
    assert "http://127.0.0.1:13000  (starting)" in console.text
    sup.stop()


def test_a_child_that_exits_is_restarted_after_a_backoff_and_it_is_said(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    spawner.script(
        18080,
        {"lines": [READY.format(port=18080), "error: lost connection to pod"], "exit_code": 1},
    )
    sup = supervisor(console, clock, forwards(18080, 13000))
    sup.start()
    settle(sup)
    sup.poll()
    assert (
        "service 18080: kubectl port-forward stopped (error: lost connection to pod); restarting in 1s"
        in console.text
    )
    assert len(spawner.of(18080)) == 1

    clock.now += 0.5
    sup.poll()
    assert len(spawner.of(18080)) == 1  # not before the backoff is over

    clock.now += 0.5
    sup.poll()
    assert len(spawner.of(18080)) == 2
    assert "service 18080: started kubectl port-forward again" in console.text
    settle(sup)
    sup.poll()
    assert "service 18080: forwarding again at http://127.0.0.1:18080" in console.text
    assert len(spawner.of(13000)) == 1  # the healthy one was left alone
    sup.stop()


def test_the_backoff_doubles_up_to_30s_and_resets_after_a_healthy_stretch(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    crash = {"lines": ['error: services "s18080" not found'], "exit_code": 1}
    spawner.script(18080, *[crash] * 7, {"lines": [READY.format(port=18080)]})
    sup = supervisor(console, clock, forwards(18080))
    sup.start()
    delays: list[float] = []
    for _ in range(7):
        settle(sup)
        sup.poll()
        child = sup.children[0]
        delays.append(child.restart_at - clock.now)
        clock.now = child.restart_at
        sup.poll()  # restarts it
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert '(error: services "s18080" not found); restarting in 30s' in console.text

    # The 8th child is healthy for a while, then dies: the backoff starts over.
    settle(sup)
    sup.poll()
    clock.now += sup.stable_after
    spawner.of(18080)[-1].returncode = 1
    sup.poll()
    assert sup.children[0].restart_at - clock.now == 1
    sup.stop()


def test_stop_terminates_every_child_and_kills_one_that_ignores_it(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    spawner.script(13000, {"stubborn": True})
    sup = supervisor(console, clock, forwards(18080, 13000, 12746))
    sup.start()
    settle(sup)
    sup.poll()
    sup.stop()
    assert spawner.running() == []
    assert [c.signals for c in spawner.children] == [["TERM"], ["TERM", "KILL"], ["TERM"]]
    assert all(c.stdout.closed for c in spawner.children)


def test_if_one_cannot_start_the_ones_already_started_are_stopped(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    spawner.fail_on = 13000
    sup = supervisor(console, clock, forwards(18080, 13000))
    with pytest.raises(MissingTool):
        sup.start()
    assert len(spawner.children) == 1
    assert spawner.running() == []


def test_exits_seen_while_stopping_are_not_restarted(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    sup = supervisor(console, clock, forwards(18080))
    stop = threading.Event()

    def ctrl_c_reaches_everyone(_: float) -> None:
        spawner.children[0].returncode = -2  # kubectl got the terminal's SIGINT too
        stop.set()

    sup.run(stop, sleep=ctrl_c_reaches_everyone)
    assert len(spawner.children) == 1
    assert "restarting" not in console.text


# -- the task --------------------------------------------------------------------------


def sleeper(
    clock: Clock, stop: threading.Event, after: int, hook: Callable[[int], None] | None = None
) -> Callable[[float], None]:
    """A `sleep` that moves the fake clock and ends the run after `after` passes."""
    passes = itertools.count(1)

    def sleep(seconds: float) -> None:
        n = next(passes)
        if hook:
            hook(n)
        clock.now += seconds
        if n >= after:
            stop.set()

    return sleep


def test_run_port_forward_supervises_until_stopped_then_leaves_nothing_running(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    fwds = forwards(free_port(), free_port())
    kubectl = Kubectl(Runner(), CTX)
    sup = Supervisor(kubectl, fwds, console, clock=clock)
    stop = threading.Event()
    sleep = sleeper(clock, stop, after=20, hook=lambda n: settle(sup))
    runner = threading.Thread(target=lambda: sup.run(stop, sleep=sleep))
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert spawner.running() == []
    assert f"http://127.0.0.1:{fwds[0].local_port}" in console.text


def test_sigterm_stops_every_child_and_restores_the_handler(
    spawner: Spawner, console: CapturedConsole, clock: Clock
) -> None:
    fwds = forwards(free_port(), free_port())
    kubectl = Kubectl(Runner(), CTX)
    sup = Supervisor(kubectl, fwds, console, clock=clock)
    never = threading.Event()

    def sleep(_: float) -> None:
        settle(sup)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    original_run = sup.run
    sup.run = lambda stop, **kw: original_run(stop, sleep=sleep)  # type: ignore[method-assign]
    run_port_forward(kubectl, fwds, console, stop_event=never, supervisor=sup)
    assert never.is_set()
    assert spawner.running() == []
    assert signal.getsignal(signal.SIGTERM) is before
    assert console.text.rstrip().endswith("All port-forwards stopped.")


def test_dry_run_shows_the_commands_and_urls_and_starts_nothing(
    fp: FakeProcess, console: CapturedConsole
) -> None:
    shown: list[str] = []
    kubectl = Kubectl(Runner(dry_run=True, echo=shown.append, env={"PATH": "/nonexistent"}), CTX)
    run_port_forward(kubectl, forwards_for(True, False), console)
    assert len(fp.calls) == 0
    assert len(shown) == 5
    assert all(line.startswith(f"kubectl --context={CTX} --namespace=") for line in shown)
    assert "port-forward svc/argo-workflows-server 2746:2746 --address=localhost" in shown[3]
    assert "http://localhost:12000/metaflow-event" in console.text


# -- through the real Runner (pytest-subprocess fakes Popen) ---------------------------


def argv_for(f: Forward) -> list[str]:
    return kubectl_call(
        "port-forward", f.target, f.ports, "--address=localhost", context=CTX, namespace=f.namespace
    )


def test_with_real_popen_a_dead_child_is_restarted_and_stop_signals_every_child(
    fp: FakeProcess, console: CapturedConsole, clock: Clock
) -> None:
    a, b = forwards(18080, 13000)
    fp.register(argv_for(a), stdout=["error: lost connection to pod"], returncode=1)
    long_running(fp, argv_for(a))
    long_running(fp, argv_for(b))
    sup = supervisor(console, clock, [a, b])
    sup.start()
    procs = [c.run.proc for c in sup.children if c.run is not None]
    procs[0].wait(timeout=2)  # the first one exits at once
    sup.poll()
    assert "stopped (error: lost connection to pod); restarting in 1s" in console.text
    clock.now += 1
    sup.poll()
    assert fp.call_count(argv_for(a)) == 2
    running = [c.run.proc for c in sup.children if c.run is not None]
    sup.stop()
    assert all(p.returncode is not None for p in running)
    assert all(signal.SIGTERM in p.received_signals() for p in running)  # type: ignore[attr-defined]


# -- with real child processes ---------------------------------------------------------


def test_a_real_child_is_drained_supervised_and_reaped(
    tmp_path: Path, console: CapturedConsole
) -> None:
    """A stand-in kubectl that floods its output (as one line per connection does) first.

    Were the pipe not read, it would block long before saying "Forwarding from".
    """
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        'yes "Handling connection for 18080" | head -n 100000\n'
        'echo "Forwarding from 127.0.0.1:18080 -> 18080"\n'
        "exec sleep 30\n"
    )
    fake.chmod(0o755)
    runner = Runner(env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    sup = Supervisor(Kubectl(runner, CTX), forwards(18080), console)
    sup.start()
    try:
        deadline = time.monotonic() + 10
        while not sup.urls_shown and time.monotonic() < deadline:
            sup.poll()
            time.sleep(0.02)
        assert sup.urls_shown
        assert sup.children[0].ready
        proc = sup.children[0].run.proc  # type: ignore[union-attr]
    finally:
        sup.stop()
    assert proc.returncode == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    assert "http://127.0.0.1:18080" in console.text
