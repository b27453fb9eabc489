"""Keep `kubectl port-forward`s to the stack's services alive on this machine.

Nothing in the stack is exposed to the internet, so a person reaches the services through
local port-forwards. A forward dies whenever its pod goes away (rollout, node upgrade),
so each one is supervised: restarted with a backoff and announced on the console. On the
way out every child is terminated and reaped, so no `kubectl` keeps holding a port.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING

from metaflow_gcp import kube_names as k
from metaflow_gcp.errors import StackError
from metaflow_gcp.kube import Kubectl

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("metaflow_gcp.portforward")

# kubectl binds `localhost` on both 127.0.0.1 and ::1, so the printed http://localhost URLs
# work whichever address a browser tries first. The free-port check probes the IPv4 one.
LISTEN = k.LOCAL_HOST
HOST = "127.0.0.1"
READY_MARK = "Forwarding from"  # what kubectl prints once it listens
_NOISE = "Handling connection for"  # one line per connection: drained, never kept


@dataclass(frozen=True)
class Forward:
    """One local port forwarded to a Kubernetes Service; `url` is what a person opens."""

    name: str
    namespace: str
    target: str
    local_port: int
    remote_port: int
    url: str
    hint: str = ""  # one line printed under the URL table (how to log in)

    @property
    def ports(self) -> str:
        return f"{self.local_port}:{self.remote_port}"


# What `inv port-forward` says about the Argo UI, which asks for a token (client auth mode).
ARGO_LOGIN = (
    "Argo Workflows UI: log in with the token that "
    'echo "Bearer $(gcloud auth print-access-token)" prints (your own Google access token, '
    "valid for about an hour)"
)


def _forward(
    name: str,
    local: str,
    namespace: str,
    service: str,
    remote: int,
    *,
    path: str = "",
    hint: str = "",
) -> Forward:
    """A forward of Service `service` to the local port kube_names gives `local`."""
    port = k.LOCAL_PORTS[local]
    return Forward(name, namespace, f"svc/{service}", port, remote, k.local_url(local, path), hint)


def forwards_for(deploy_argo: bool, deploy_airflow: bool) -> list[Forward]:
    """The forwards for what the stack deploys. Always plain http: nothing here serves TLS."""
    services = k.SERVICES_NS
    forwards = [
        _forward(
            "Metaflow metadata service", "metadata", services, k.METADATA_SERVICE, k.METADATA_PORT
        ),
        _forward(
            "Metaflow UI backend", "ui-backend", services, k.UI_BACKEND_SERVICE, k.UI_BACKEND_PORT
        ),
        _forward("Metaflow UI", "ui", services, k.UI_SERVICE, k.UI_PORT),
    ]
    if deploy_argo:
        forwards += [
            _forward(
                "Argo Workflows UI",
                "argo",
                k.ARGO_NS,
                k.ARGO_SERVER_SERVICE,
                k.ARGO_SERVER_PORT,
                hint=ARGO_LOGIN,
            ),
            _forward(
                "Argo Events webhook",
                "webhook",
                k.METAFLOW_NS,
                k.EVENT_SOURCE_SERVICE,
                k.WEBHOOK_PORT,
                path=f"/{k.EVENT_NAME}",
            ),
        ]
    if deploy_airflow:
        forwards.append(
            _forward(
                "Airflow UI",
                "airflow",
                k.AIRFLOW_NS,
                k.AIRFLOW_WEBSERVER_SERVICE,
                k.AIRFLOW_WEBSERVER_PORT,
            )
        )
    return forwards


def taken_ports(forwards: Sequence[Forward], host: str = HOST) -> list[str]:
    """One line per local port that is unusable (in use, or wanted twice)."""
    problems: list[str] = []
    wanted: dict[int, Forward] = {}
    for forward in forwards:
        port = forward.local_port
        if port in wanted:
            problems.append(f"port {port} is wanted twice ({wanted[port].name} and {forward.name})")
            continue
        wanted[port] = forward
        reason = _bind_problem(host, port)
        if reason:
            problems.append(
                f"port {port} on {host} ({forward.name}, {forward.target}) {reason}; "
                f"stop what holds it (`lsof -iTCP:{port} -sTCP:LISTEN` names it), "
                "e.g. an older `inv port-forward`"
            )
    return problems


def check_ports_free(forwards: Sequence[Forward], host: str = HOST) -> None:
    """Refuse before starting anything if a local port is taken: kubectl would only loop on it."""
    problems = taken_ports(forwards, host)
    if problems:
        raise StackError("\n".join(problems))


def _bind_problem(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like kubectl's own listener: a port in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "is already in use"
            return f"cannot be used ({error.strerror or error})"
    return ""


# ---------------------------------------------------------------------------------------
# Supervision


@dataclass
class _Run:
    """One `kubectl` process of a forward, and what its output said so far."""

    proc: subprocess.Popen[str]
    started_at: float
    ready: threading.Event = field(default_factory=threading.Event)
    last_line: str = ""
    announced: bool = False
    reader: threading.Thread | None = None


@dataclass
class _Child:
    """One forward: its current run (None while it waits to be restarted) and its history."""

    forward: Forward
    backoff: float
    run: _Run | None = None
    restart_at: float = 0.0
    restarts: int = 0
    exits: int = 0
    listed_ready: bool = False  # shown as up in the URL table

    @property
    def ready(self) -> bool:
        return self.run is not None and self.run.ready.is_set()


class Supervisor:
    """Runs one `kubectl port-forward` per Forward and restarts those that die.

    A child that exits is restarted after a backoff that doubles from `min_backoff` up
    to `max_backoff`, and falls back to `min_backoff` when the child had stayed up for
    `stable_after` seconds. Output is read continuously: kubectl prints a line per
    connection, and an unread pipe would fill up and freeze the forward.
    `clock` (and `run`'s `sleep`) are injectable so tests drive time instead of waiting.
    """

    def __init__(
        self,
        kubectl: Kubectl,
        forwards: Sequence[Forward],
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
        settle_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.kubectl = kubectl
        self.console = console
        self.clock = clock
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.settle_timeout = settle_timeout
        self.stop_timeout = stop_timeout
        self.children = [_Child(f, backoff=min_backoff) for f in forwards]
        self.urls_shown = False
        self._began = 0.0
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every forward; if one cannot even be started, stop the others and re-raise."""
        self._began = self.clock()
        try:
            for child in self.children:
                self._spawn(child)
        except BaseException:
            self.stop()
            raise

    def poll(self) -> None:
        """One supervision pass: notice exits, restart what is due, announce readiness."""
        now = self.clock()
        for child in self.children:
            if self._stopping.is_set():
                return  # children killed by the same Ctrl-C are not "failures" to restart
            run = child.run
            if run is None:
                if child.exits and now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                continue
            code = run.proc.poll()
            if code is not None:
                self._exited(child, run, code, now)
            elif run.ready.is_set() and not run.announced:
                run.announced = True
                if self.urls_shown and (child.restarts or not child.listed_ready):
                    again = "forwarding again" if child.restarts else "now forwarding"
                    self._say(f"[green]{child.forward.name}: {again}[/] at {child.forward.url}")
        if not self.urls_shown and all(self._settled(c, now) for c in self.children):
            self.urls_shown = True
            self.show_urls()

    def run(
        self,
        stop_event: threading.Event,
        *,
        interval: float = 0.25,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """Start, then supervise until `stop_event` is set; always stop every child.

        A dry run only shows the commands (through the runner) and the URLs.
        """
        wait = sleep or stop_event.wait
        self._stopping = stop_event  # set by a signal handler: no restarts mid-pass
        self.start()
        try:
            if self.kubectl.dry_run:
                self.show_urls()
                return
            while not stop_event.is_set():
                self.poll()
                wait(interval)
        finally:
            self.stop()

    def stop(self) -> None:
        """Terminate every child, wait for it, kill it if it will not go: no orphans."""
        self._stopping.set()
        runs = [c.run for c in self.children if c.run is not None]
        for run in runs:
            if run.proc.poll() is None:
                run.proc.terminate()
        deadline = self.clock() + self.stop_timeout
        for run in runs:
            try:
                run.proc.wait(timeout=max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                run.proc.kill()
                try:
                    run.proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("kubectl (pid %s) survived SIGKILL", run.proc.pid)
            _reap(run)
        for child in self.children:
            child.run = None

    # -- output --------------------------------------------------------------------------

    def show_urls(self) -> None:
        """The table a person came for: what is where (plain http, all on localhost)."""
        from rich.table import Table  # lazy: keeps `inv --list` fast

        dry = self.kubectl.dry_run
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        for child in self.children:
            child.listed_ready = child.ready
            if dry or child.ready:
                state = ""
            elif child.run is None:
                state = "[yellow](restarting)[/]"
            else:
                state = "[yellow](starting)[/]"
            table.add_row(child.forward.name, f"[bold]{child.forward.url}[/]", state)
        self.console.print(table)
        for child in self.children:
            if child.forward.hint:
                self._say(child.forward.hint)
        if not dry:
            self.console.print("Press Ctrl-C to stop all port-forwards.")

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    # -- internals -----------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        forward = child.forward
        started = self.clock()
        proc = self.kubectl.spawn(
            "port-forward",
            forward.target,
            forward.ports,
            f"--address={LISTEN}",
            namespace=forward.namespace,
        )
        if proc is None:  # dry run: the runner has shown the command
            return
        run = _Run(proc, started)
        if proc.stdout is not None:
            run.reader = threading.Thread(
                target=_drain,
                args=(proc.stdout, run, forward.local_port),
                name=f"port-forward {forward.local_port}",
                daemon=True,
            )
            run.reader.start()
        child.run = run
        if child.restarts:
            self._say(f"{forward.name}: started kubectl port-forward again")

    def _exited(self, child: _Child, run: _Run, code: int, now: float) -> None:
        from rich.markup import escape  # lazy: keeps `inv --list` fast

        _reap(run)
        child.run = None
        child.exits += 1
        if now - run.started_at >= self.stable_after:
            child.backoff = self.min_backoff  # it had been healthy: a fresh failure
        delay = child.backoff
        child.backoff = min(delay * 2, self.max_backoff)
        child.restart_at = now + delay
        why = escape(run.last_line) if run.last_line else f"exit code {code}"
        self._say(
            f"[yellow]{child.forward.name}: kubectl port-forward stopped[/] ({why}); "
            f"restarting in {delay:g}s"
        )

    def _settled(self, child: _Child, now: float) -> bool:
        """Ready, failed at least once, or given enough time: then the URL table can show."""
        return child.ready or child.exits > 0 or now - self._began >= self.settle_timeout


def _reap(run: _Run) -> None:
    """Collect the reader (its pipe ends when kubectl does), then close the pipe."""
    if run.reader is not None:
        run.reader.join(timeout=1.0)
        if run.reader.is_alive():
            # Something else still holds the pipe open; closing it under a blocked read
            # could hang. The daemon reader ends on its own when the pipe does.
            return
        run.reader = None
    if run.proc.stdout is not None:
        run.proc.stdout.close()


def _drain(stream: IO[str], run: _Run, port: int) -> None:
    """Read kubectl's output until it ends: note readiness, keep the last useful line."""
    try:
        for raw in stream:
            line = raw.strip()
            if not line or line.startswith(_NOISE):
                continue
            if line.startswith(READY_MARK):
                run.ready.set()
            else:
                run.last_line = line
            log.debug("port-forward %s: %s", port, line)
    except (OSError, ValueError):  # closed under us during shutdown
        return


# ---------------------------------------------------------------------------------------
# The task


def run_port_forward(
    kubectl: Kubectl,
    forwards: Sequence[Forward],
    console: Console,
    *,
    stop_event: threading.Event | None = None,
    supervisor: Supervisor | None = None,
) -> None:
    """Check the ports, start every forward and keep them up until Ctrl-C (or `stop_event`).

    Ctrl-C, SIGTERM and SIGHUP only set the stop event, so shutdown is never cut short
    half-way and every kubectl is reaped. A dry run shows the commands and URLs and returns.
    """
    if not forwards:
        raise StackError("nothing to forward")
    supervisor = supervisor or Supervisor(kubectl, forwards, console)
    stop_event = stop_event or threading.Event()
    if kubectl.dry_run:
        for problem in taken_ports(forwards):
            console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
        supervisor.run(stop_event)
        return
    check_ports_free(forwards)
    console.print(
        f"Starting {len(forwards)} port-forwards to context {kubectl.context}…", highlight=False
    )
    with _signals_set(stop_event):
        supervisor.run(stop_event)
    console.print("All port-forwards stopped.")


@contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into `event.set()` while inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    wanted = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
