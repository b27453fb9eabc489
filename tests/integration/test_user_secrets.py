"""`inv secrets.set` / `secrets.list`: the real gcloud 528 against the fake Secret Manager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaflow_gcp import user_secrets
from metaflow_gcp.graph import Outcome
from tests.fakes.plugin import FakeCloud
from tests.integration.stacks import make_stack, output

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VALUE = "hf_Zq81-not-a-real-token"


def payloads(fake: FakeCloud, secret: str) -> list[str]:
    return [bytes(v["_data"]).decode() for v in fake.state["secrets"][secret]["_versions"]]


def test_a_secret_is_stored_under_the_stack_prefix_and_a_second_set_adds_a_version(
    fake_cloud: FakeCloud,
) -> None:
    stack = make_stack(fake_cloud)
    assert user_secrets.set_secret(stack, "HF_TOKEN", VALUE) is Outcome.CREATED
    assert user_secrets.set_secret(stack, "HF_TOKEN", VALUE + "-2") is Outcome.UPDATED

    secret = fake_cloud.state["secrets"]["mf-it-user-HF_TOKEN"]
    assert secret["labels"] == {"stack": "it", "managed-by": "metaflow-gcp", "kind": "user-secret"}
    assert "automatic" in secret["replication"]
    assert payloads(fake_cloud, "mf-it-user-HF_TOKEN") == [VALUE, VALUE + "-2"]
    # The value went in on stdin only: never on a command line, never printed.
    assert all(VALUE not in r.command for r in stack.runner.history)
    assert any("--data-file=-" in r.command for r in stack.runner.history)
    assert VALUE not in output(stack)
    assert '@secrets(sources=["HF_TOKEN"])' in output(stack)


def test_the_list_shows_names_and_versions_of_this_stack_only_never_values(
    fake_cloud: FakeCloud,
) -> None:
    stack = make_stack(fake_cloud)
    for name, value in (
        ("db-url", "postgres://u:pw@h/db"),
        ("HF_TOKEN", VALUE),
        ("HF_TOKEN", "b2"),
    ):
        user_secrets.set_secret(stack, name, value)
    other = make_stack(fake_cloud, stack="other")
    user_secrets.set_secret(other, "HF_TOKEN", "theirs")
    fake_cloud.call(  # the stack's own DB password: not a user secret
        "POST",
        "secretmanager",
        "/v1/projects/fake-project/secrets",
        {"replication": {"automatic": {}}},
        query="secretId=mf-it-db-password",
    )

    lister = make_stack(fake_cloud)
    rows = user_secrets.list_secrets(lister)
    assert [(r["name"], r["secret"], r["versions"]) for r in rows] == [
        ("HF_TOKEN", "mf-it-user-HF_TOKEN", 2),
        ("db-url", "mf-it-user-db-url", 1),
    ]
    assert all(r["created"] for r in rows)
    user_secrets.print_list(lister, rows)
    assert "HF_TOKEN" in output(lister)
    assert VALUE not in output(lister) and "pw@h" not in output(lister)


def test_inv_secrets_set_reads_the_value_from_stdin(fake_cloud: FakeCloud, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **fake_cloud.env,
        "INVOKE_STACK_ORG_PREFIX": "acme",
        "INVOKE_STACK_PROJECT": fake_cloud.project,
        "INVOKE_STACK_STACK": "it",
        "XDG_STATE_HOME": str(tmp_path),
    }
    inv = [sys.executable, "-m", "invoke"]
    done = subprocess.run(
        [*inv, "secrets.set", "API_KEY"],
        input=VALUE + "\n", capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert payloads(fake_cloud, "mf-it-user-API_KEY") == [VALUE]
    assert VALUE not in done.stdout + done.stderr
    assert VALUE not in (tmp_path / "metaflow-gcp" / "it.log").read_text()

    listed = subprocess.run(
        [*inv, "secrets.list", "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
    )  # fmt: skip
    assert [r["name"] for r in json.loads(listed.stdout)] == ["API_KEY"]
    assert VALUE not in listed.stdout

    bad = subprocess.run(
        [*inv, "secrets.set", "bad name"],
        input=VALUE, capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: secret name 'bad name' must start with")
