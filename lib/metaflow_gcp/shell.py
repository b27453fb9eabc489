"""The one place external commands run.

Built on `subprocess` with argument lists (never a shell string) so that
pytest-subprocess can fake it and no quoting bug can turn a value into a command.
Dry-run, logging, secret redaction, timeouts and error translation happen here once,
for gcloud, kubectl and helm alike.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaflow_gcp.errors import CommandTimeout, MissingTool, translate

log = logging.getLogger("metaflow_gcp.commands")

REDACTED = "****"
DEFAULT_TIMEOUT = 300.0

INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)",
    "kubectl": "run `gcloud components install kubectl` or install kubectl from your package "
    "manager",
    "helm": "install Helm 3.x (https://helm.sh/docs/intro/install/)",
}

# Environment that keeps gcloud from ever stopping to ask a question on stdin.
_QUIET_ENV = {"CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}


@dataclass(frozen=True)
class Result:
    """What a finished command returned. `stdout` may hold a secret when asked for one."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    dry_run: bool = False

    def json(self) -> Any:
        """gcloud's `--format=json` output, parsed in one place. Empty output means null."""
        text = self.stdout.strip()
        return json.loads(text) if text else None


@dataclass(frozen=True)
class CommandRecord:
    """A redacted trace of one command, for the plan printout, tests and benchmarks."""

    command: str
    mutating: bool
    returncode: int | None
    duration: float
    dry_run: bool


@dataclass
class Runner:
    """Runs commands; shared by every step of a run (it is thread-safe)."""

    dry_run: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    default_timeout: float = DEFAULT_TIMEOUT
    echo: Callable[[str], None] | None = None  # where dry-run commands are shown
    history: list[CommandRecord] = field(default_factory=list)
    _secrets: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- secrets -----------------------------------------------------------------------

    def add_secret(self, value: str) -> None:
        """Register a value that must never be shown; short values would redact noise."""
        if value and len(value) >= 4:
            with self._lock:
                self._secrets.add(value)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    def render(self, argv: Sequence[str]) -> str:
        return self.redact(shlex.join(argv))

    # -- running -------------------------------------------------------------------------

    def has(self, program: str) -> bool:
        """Whether `program` is on the PATH the commands run with (the runner's env wins)."""
        return shutil.which(program, path=self.env.get("PATH", os.environ.get("PATH"))) is not None

    def run(
        self,
        argv: Sequence[str],
        *,
        mutating: bool,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        secret_output: bool = False,
        dry_stdout: str = "",
        extra_env: Mapping[str, str] | None = None,
    ) -> Result:
        """Run `argv`; raise a typed `CommandError` if it fails and `check` is set.

        mutating: whether the command changes anything (shown in plans, counted in tests).
        stdin: data for the command's standard input - the only way secrets go in.
        secret_output: stdout is a secret; it is registered and never logged.
        dry_stdout: what a dry run pretends the command printed.
        extra_env: variables for this command only (applied last).
        """
        argv = [str(part) for part in argv]
        command = self.render(argv)
        if self.dry_run:
            self._record(command, mutating, None, 0.0, dry_run=True)
            if self.echo is not None:
                self.echo(command if mutating else f"{command}   # read")
            return Result(tuple(argv), 0, dry_stdout, "", 0.0, dry_run=True)

        program = argv[0]
        if not self.has(program):
            raise MissingTool(program, INSTALL_HINTS.get(program, f"install {program}"))

        log.info("$ %s", command)
        started = time.monotonic()
        try:
            completed = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout or self.default_timeout,
                env={**os.environ, **_QUIET_ENV, **self.env, **(extra_env or {})},
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            duration = time.monotonic() - started
            self._record(command, mutating, None, duration, dry_run=False)
            stderr = _text(expired.stderr)
            raise CommandTimeout(
                command=command,
                returncode=-1,
                stderr=self.redact(stderr),
                summary=f"no answer after {timeout or self.default_timeout:.0f}s",
            ) from None
        duration = time.monotonic() - started
        if secret_output and completed.returncode == 0:
            self.add_secret(completed.stdout.strip())
        stderr = self.redact(completed.stderr)
        self._record(command, mutating, completed.returncode, duration, dry_run=False)
        log.debug(
            "exit %s after %.2fs%s",
            completed.returncode,
            duration,
            f"\n{stderr.rstrip()}" if stderr.strip() else "",
        )
        if check and completed.returncode != 0:
            raise translate(_program_name(program), command, completed.returncode, stderr)
        return Result(
            tuple(argv), completed.returncode, completed.stdout, completed.stderr, duration
        )

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[str] | None:
        """Start a long-lived child (e.g. `kubectl port-forward`); None in a dry run.

        Output goes to a pipe the caller reads; the caller owns stopping it.
        """
        argv = [str(part) for part in argv]
        command = self.render(argv)
        if self.dry_run:
            self._record(command, False, None, 0.0, dry_run=True)
            if self.echo is not None:
                self.echo(command)
            return None
        program = argv[0]
        if not self.has(program):
            raise MissingTool(program, INSTALL_HINTS.get(program, f"install {program}"))
        log.info("$ %s &", command)
        self._record(command, False, None, 0.0, dry_run=False)
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **_QUIET_ENV, **self.env},
        )

    def _record(
        self, command: str, mutating: bool, rc: int | None, duration: float, *, dry_run: bool
    ) -> None:
        with self._lock:
            self.history.append(CommandRecord(command, mutating, rc, duration, dry_run))

    # -- conveniences --------------------------------------------------------------------

    def count(self, program: str = "gcloud", *, mutating: bool | None = None) -> int:
        """How many commands of `program` ran (used by benchmarks and tests)."""
        with self._lock:
            return sum(
                1
                for record in self.history
                if record.command.split(" ", 1)[0].endswith(program)
                and (mutating is None or record.mutating == mutating)
            )


def _program_name(program: str) -> str:
    return Path(program).name


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
