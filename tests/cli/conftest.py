"""The command-line layer: `inv` (and `nox`) run as a user types them, as subprocesses.

A workspace stands in for the user's checkout: tasks.py, invoke.yaml, noxfile.py and
examples/ linked from this repository, plus the my-dag.py the README's usage line names.
Two environments: offline (no gcloud, kubectl or helm on PATH, no credentials: what a dry
run must need) and the local fakes (the real gcloud pointed at tests/fakes).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.plugin import FakeCloud

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # where this environment's `inv` and `nox` live
# The stack every run here uses, as INVOKE_STACK_<KEY> variables (a --var-file wins over them).
STACK_ENV = {
    "INVOKE_STACK_ORG_PREFIX": "acme",
    "INVOKE_STACK_PROJECT": "fake-project",
    "INVOKE_STACK_STACK": "it",
}
DAG = '''"""A DAG file as `python flow.py airflow create my-dag.py` leaves it, in miniature."""
from datetime import datetime

from airflow import DAG
from airflow.operators.empty import EmptyOperator

with DAG("hello_flow", start_date=datetime(2026, 1, 1), schedule=None) as dag:
    EmptyOperator(task_id="start")
'''


@dataclass(frozen=True)
class Done:
    """A finished command: its exit code and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explain(self) -> str:
        return f"$ {shlex.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


def run_command(
    command: str, *extra: str, cwd: Path, env: Mapping[str, str], timeout: float = 180
) -> Done:
    """Run `command` (a README line: `inv ...` or `nox ...`) with this environment's program."""
    argv = shlex.split(command) + list(extra)
    program = BIN / argv[0]
    assert program.exists(), f"{argv[0]} is not installed next to {sys.executable}"
    done = subprocess.run(
        [str(program), *argv[1:]],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,  # never a terminal: confirmations must refuse, not hang
    )
    return Done(tuple(argv), done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("checkout")
    for name in ("tasks.py", "invoke.yaml", "noxfile.py", "examples"):
        (where / name).symlink_to(ROOT / name)
    (where / "my-dag.py").write_text(DAG)
    (where / "dags").mkdir()
    for name in ("first.py", "second.py"):
        (where / "dags" / name).write_text(DAG)
    return where


def _base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "COLUMNS": "200",  # rich wraps tables at the terminal width; 80 would fold every row
        "LANG": "C.UTF-8",
        **STACK_ENV,
    }


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """No gcloud, kubectl or helm on PATH, no credentials, no network configuration."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {
        **_base_env(tmp_path / "home"),
        "PATH": str(empty),
        "CLOUDSDK_CONFIG": str(tmp_path / "no-gcloud-config"),
    }


@pytest.fixture
def fakes_env(fake_cloud: FakeCloud, tmp_path: Path) -> dict[str, str]:
    """The real gcloud (and kubectl, if installed) against the local fakes."""
    return {**_base_env(tmp_path / "home"), "PATH": os.environ["PATH"], **fake_cloud.env}
