"""The task layer: every collection is there, flags are consistent, and listing stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metaflow_gcp.config import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def test_listing_tasks_imports_nothing_heavy() -> None:
    """`inv --list` must stay fast: rich, sh and our package load only when a task runs.

    (yaml is Invoke's own: it reads invoke.yaml.)"""
    probe = (
        "import sys, json, tasks; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rich', 'metaflow_gcp', 'sh'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert json.loads(done.stdout) == []


def test_every_collection_and_task_is_listed() -> None:
    listed = inv("--list").stdout
    for name in ("infra.up", "infra.plan", "services.up", "airflow.upload-dag", "teardown",
                 "status", "port-forward", "unlock"):
        assert name in listed


def test_the_invoke_config_declares_every_stack_setting() -> None:
    import tasks

    assert tuple(tasks.STACK_KEYS) == SETTING_NAMES


@pytest.mark.parametrize(
    ("task", "flags"),
    [
        ("infra.up", ["--var-file", "--dry-run", "--yes", "--verbose", "--force-unlock"]),
        ("services.up", ["--argo", "--no-argo", "--airflow", "--no-airflow", "--dry-run", "--yes"]),
        ("teardown", ["--delete-data", "--dry-run", "--yes", "--verbose"]),
        ("airflow.upload-dag", ["--path=STRING", "--also", "--dest-name", "--namespace", "--dry-run",
                                "--var-file"]),
        ("status", ["--json", "--var-file", "--verbose"]),
    ],
)
def test_tasks_take_the_common_flags(task: str, flags: list[str]) -> None:
    text = inv(task, "--help").stdout
    for flag in flags:
        assert flag in text


def test_contradictory_switches_are_one_clear_line() -> None:
    done = inv("services.up", "--argo", "--no-argo", "--dry-run",
               "--var-file", "examples/example.tfvars")
    assert done.returncode == 2
    assert "--argo and --no-argo contradict each other" in done.stderr


def test_a_bad_setting_fails_before_any_command_with_one_line(tmp_path: Path) -> None:
    var_file = tmp_path / "bad.tfvars"
    var_file.write_text('org_prefix = "acme"\nproject = "Bad_Project"\n')
    done = inv("infra.up", "--dry-run", f"--var-file={var_file}")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: project: 'Bad_Project' is not a valid project ID")
    assert "$ gcloud" not in done.stdout


def test_the_readme_dry_run_prints_the_whole_plan_without_any_call() -> None:
    done = inv("infra.up", "--dry-run", "--var-file", "examples/example.tfvars")
    assert done.returncode == 0, done.stderr
    assert "gcloud sql instances create mf-dev-pg-0" in done.stdout
    assert "gcloud container clusters create mf-dev" in done.stdout
    assert "would run" in done.stdout
