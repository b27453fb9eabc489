"""`inv status` says only what it read: the real gcloud against the fakes, through `inv`.

A read that failed makes its resource "unknown" (never "yes" or "no"), its cause is said
once in one line, and the exit code is non-zero; the same for the state file and --json.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Done, run_command
from tests.fakes.plugin import FakeCloud

pytestmark = pytest.mark.cli

STATE_BUCKET = "acme-fake-project-mf-state"
STATE_OBJECT = "stacks/it.json"
NO_LOGIN = "error: gcloud not authenticated: You do not currently have an active account selected."


def status(workspace: Path, env: dict[str, str], *flags: str) -> Done:
    return run_command("inv status", *flags, cwd=workspace, env=env)


def put_state(fake: FakeCloud, body: bytes) -> None:
    """The state document, put straight into fake-gcs-server (as a run of ours left it)."""
    buckets = f"{fake.gcs_url}/storage/v1/b?project={fake.project}"
    create = json.dumps({"name": STATE_BUCKET}).encode()
    urllib.request.urlopen(urllib.request.Request(buckets, create, method="POST"))  # noqa: S310
    name = urllib.parse.quote(STATE_OBJECT, safe="")
    upload = f"{fake.gcs_url}/upload/storage/v1/b/{STATE_BUCKET}/o?uploadType=media&name={name}"
    urllib.request.urlopen(urllib.request.Request(upload, body, method="POST"))  # noqa: S310


def seed_network(fake: FakeCloud) -> None:
    fake.call("POST", "compute", f"/v1/projects/{fake.project}/global/networks",
              {"name": "mf-it-vpc", "autoCreateSubnetworks": False})
    fake.finish_all_operations()


def row(table: str, resource: str) -> str:
    [line] = [ln for ln in table.splitlines() if ln.startswith(f"│ {resource} ")]
    return line


def one_error_line(done: Done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.explain()
    assert lines[0].startswith("error: "), done.explain()
    return lines[0]


def test_without_any_login_it_says_so_once_and_claims_nothing(
    workspace: Path, fakes_env: dict[str, str], fake_cloud: FakeCloud
) -> None:
    env = {k: v for k, v in fakes_env.items() if k != "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"}
    done = status(workspace, env)
    assert done.returncode == 1, done.explain()
    assert one_error_line(done).startswith(NO_LOGIN)
    assert "gcloud auth login" in done.stderr
    assert done.stdout == ""  # no table of guesses: nothing could be read

    as_json = status(workspace, env, "--json")
    assert as_json.returncode == 1, as_json.explain()
    assert one_error_line(as_json).startswith(NO_LOGIN)
    report: dict[str, Any] = json.loads(as_json.stdout)
    assert {r["exists"] for r in report["resources"]} == {None}
    assert report["state"]["exists"] is None and report["state"]["lock"] is None
    assert report["state"]["db_generation"] is None
    assert report["ok"] is False and len(report["errors"]) == 1
    assert len(fake_cloud.requests) == 0  # nothing reached even the fakes


def test_a_failed_read_makes_only_that_resource_unknown(
    workspace: Path, fakes_env: dict[str, str], fake_cloud: FakeCloud
) -> None:
    seed_network(fake_cloud)
    lock = {"holder": "ada@laptop", "task": "infra.up", "since": "2026-12-01T10:00:00Z"}
    put_state(fake_cloud, json.dumps({"db_generation": 2, "lock": lock}).encode())
    denied = "The caller does not have permission to list Cloud SQL instances"

    fake_cloud.fail_next(kind="sql.instances.list", status=403, message=denied)
    done = status(workspace, fakes_env)
    assert done.returncode == 1, done.explain()
    line = one_error_line(done)
    assert "permission denied" in line and denied in line
    assert " yes " in row(done.stdout, "network")
    assert " no " in row(done.stdout, "subnet")
    assert " no " in row(done.stdout, "GKE cluster")
    sql_row = row(done.stdout, "Cloud SQL instance")
    assert " unknown " in sql_row and "mf-it-pg-?" in sql_row
    assert denied not in done.stdout  # said once, below the table
    assert "present, DB generation 2, locked by ada@laptop (infra.up" in done.stdout

    fake_cloud.fail_next(kind="sql.instances.list", status=403, message=denied)
    as_json = status(workspace, fakes_env, "--json")
    assert as_json.returncode == 1, as_json.explain()
    assert one_error_line(as_json) == line
    report = json.loads(as_json.stdout)
    exists = {r["resource"]: r["exists"] for r in report["resources"]}
    assert (exists["network"], exists["subnet"], exists["Cloud SQL instance"]) == (True, False, None)
    assert report["state"]["exists"] is True and report["state"]["db_generation"] == 2


def test_an_unreadable_state_file_is_unknown_not_absent(
    workspace: Path, fakes_env: dict[str, str], fake_cloud: FakeCloud
) -> None:
    put_state(fake_cloud, b"{ this is not json")
    done = status(workspace, fakes_env, "--json")
    assert done.returncode == 1, done.explain()
    assert f"gs://{STATE_BUCKET}/{STATE_OBJECT} is not valid JSON" in one_error_line(done)
    report = json.loads(done.stdout)
    state = report["state"]
    assert (state["exists"], state["lock"], state["db_generation"]) == (None, None, None)
    assert state["error"] and state["infra_converged"] is None
    # Which Cloud SQL generation is current lives in the state file: not guessed either.
    [sql_row] = [r for r in report["resources"] if r["resource"] == "Cloud SQL instance"]
    assert (sql_row["name"], sql_row["exists"]) == ("mf-it-pg-?", False)


def test_an_empty_project_reads_as_all_absent_and_exits_zero(
    workspace: Path, fakes_env: dict[str, str]
) -> None:
    done = status(workspace, fakes_env, "--json")
    assert done.returncode == 0, done.explain()
    assert done.stderr == ""
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["errors"] == []
    assert {r["exists"] for r in report["resources"]} == {False}
    assert report["state"]["exists"] is False and report["state"]["db_generation"] == 0
