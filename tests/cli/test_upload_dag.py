"""`inv airflow.upload-dag`: one positional PATH (a file or a folder), more with --also.

Invoke takes no repeatable positional, so several paths read `PATH --also PATH ...`.
Every run here is a dry run in the offline environment: the files are checked for real
and the kubectl commands printed; no cluster is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import run_command

pytestmark = pytest.mark.cli

UPLOAD = "inv airflow.upload-dag"


def copied(output: str) -> list[str]:
    return [line.split()[2] for line in output.splitlines() if line.startswith("  would copy ")]


def test_help_names_the_path_and_shows_the_forms(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, "--help", cwd=workspace, env=offline_env)
    assert done.returncode == 0, done.explain()
    assert "--path=STRING" in done.stdout
    assert "PATH: one more DAG file or folder; repeatable" in done.stdout
    for form in ("inv airflow.upload-dag my-dag.py", "inv airflow.upload-dag dags/",
                 "inv airflow.upload-dag a.py --also b.py"):
        assert form in done.stdout
    assert "error" not in done.output  # the help, not a run with the path '--help'


def test_one_file(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, "my-dag.py", "--dry-run", cwd=workspace, env=offline_env)
    assert done.returncode == 0, done.explain()
    assert copied(done.stdout) == ["my-dag.py"]


def test_a_folder_uploads_its_python_files(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, "dags", "--dry-run", cwd=workspace, env=offline_env)
    assert done.returncode == 0, done.explain()
    assert copied(done.stdout) == ["dags/first.py", "dags/second.py"]


def test_several_paths_with_also(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, "my-dag.py", "--also", "dags/second.py", "--also", "dags",
                       "--dry-run", cwd=workspace, env=offline_env)
    assert done.returncode == 0, done.explain()
    assert copied(done.stdout) == ["my-dag.py", "dags/second.py", "dags/first.py"]


def test_a_bad_file_is_one_line_before_any_command(
    workspace: Path, offline_env: dict[str, str], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.py"
    notes.write_text("print('no dag here')\n")
    done = run_command(UPLOAD, "my-dag.py", "--also", str(notes), "--dry-run",
                       cwd=workspace, env=offline_env)
    assert done.returncode == 1, done.explain()
    assert done.stderr.splitlines()[0] == (
        f"error: {notes}: is not an Airflow DAG file: it never imports airflow "
        "(Metaflow writes one with `python flow.py airflow create my_dag.py`)"
    )
    assert "kubectl" not in done.stdout


def test_no_path_is_invokes_own_one_line(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, cwd=workspace, env=offline_env)
    assert done.returncode != 0
    assert "did not receive required positional arguments: 'path'" in done.stderr


def test_a_flag_where_the_path_belongs_is_refused(workspace: Path, offline_env: dict[str, str]) -> None:
    done = run_command(UPLOAD, "--echo", cwd=workspace, env=offline_env)
    assert done.returncode == 2, done.explain()
    assert done.stderr.strip() == (
        "error: --echo: is not a path, and airflow.upload-dag takes a path first. "
        "Fix: inv airflow.upload-dag my-dag.py --echo"
    )
