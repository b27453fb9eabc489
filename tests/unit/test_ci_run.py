""".ci/run: the README's test command, exactly, with the upstream charts when CI has them.

The script runs in a copy of the repository layout whose `python3` is a stand-in that builds
a .venv of recording stand-ins for pip and nox, so nothing is installed and no test runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# `python3 -m venv .venv` makes .venv/bin/{pip,nox}; each appends its argv and the variable
# to calls.log.
FAKE_PYTHON = """#!/bin/sh
[ "$1 $2 $3" = "-m venv .venv" ] || { echo "unexpected: $*" >&2; exit 2; }
mkdir -p .venv/bin
for tool in pip nox; do
  printf '#!/bin/sh\\necho "%s $* UPSTREAM_CHARTS_DIR=${UPSTREAM_CHARTS_DIR:-}" >> "%s"\\n' \
    "$tool" "$CALLS" > .venv/bin/$tool
  chmod +x .venv/bin/$tool
done
"""


def run_ci(tmp_path: Path, *, charts: bool, env: dict[str, str] | None = None) -> list[str]:
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", clone / ".ci" / "run")
    if charts:
        (tmp_path / "shared" / "upstream-charts").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    calls = tmp_path / "calls.log"
    base = {k: v for k, v in os.environ.items() if k != "UPSTREAM_CHARTS_DIR"}
    full_env = {**base, "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), **(env or {})}
    subprocess.run(
        ["bash", str(clone / ".ci" / "run")], env=full_env, check=True, capture_output=True
    )
    return calls.read_text().splitlines()


def test_ci_runs_the_readme_command_then_lint_and_typecheck(tmp_path: Path) -> None:
    assert "python3 -m venv .venv && .venv/bin/pip install nox && .venv/bin/nox" in (
        REPO / "README.md"
    ).read_text(encoding="utf-8")
    calls = run_ci(tmp_path, charts=False)
    assert [c.split(" UPSTREAM")[0] for c in calls] == [
        "pip install nox",
        "nox ",
        "nox -s lint typecheck",
    ]


def test_ci_points_the_chart_tests_at_the_upstream_charts_beside_the_clone(
    tmp_path: Path,
) -> None:
    wanted = tmp_path / "shared" / "upstream-charts"
    for call in run_ci(tmp_path, charts=True):
        assert call.endswith(f"UPSTREAM_CHARTS_DIR={wanted.resolve()}")


def test_without_the_charts_the_variable_stays_unset_and_those_tests_skip(tmp_path: Path) -> None:
    for call in run_ci(tmp_path, charts=False):
        assert call.endswith("UPSTREAM_CHARTS_DIR=")


@pytest.mark.parametrize("charts", [True, False])
def test_a_variable_set_by_ci_itself_wins(tmp_path: Path, charts: bool) -> None:
    for call in run_ci(tmp_path, charts=charts, env={"UPSTREAM_CHARTS_DIR": "/opt/charts"}):
        assert call.endswith("UPSTREAM_CHARTS_DIR=/opt/charts")
