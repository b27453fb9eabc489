"""The database user's password reaches Cloud SQL through stdin only, with the real gcloud.

gcloud writes every parsed flag to its own log files; the suite's gcloud environment turns
file logging off for speed, so these tests turn it back on to prove the tool does not rely
on that: the password must appear in no file gcloud leaves behind.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from metaflow_gcp.app import open_stack
from metaflow_gcp.gcp import sql
from metaflow_gcp.graph import Outcome, Step, run_steps
from tests.fakes.plugin import FakeCloud
from tests.fakes.seeds import seed_private_network, seed_sql_instance

pytestmark = pytest.mark.integration

PASSWORD = "Qx9-only-on-stdin-7Hd2"
INSTANCE = "psql-user"


def files_containing(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def make_user(fake: FakeCloud, env: dict[str, str], *, exists: bool) -> Outcome:
    stack = open_stack(
        {"org_prefix": "acme", "project": fake.project, "stack": "it"},
        yes=True,
        env=env,
        console=Console(file=io.StringIO()),
    )
    stack.runner.add_secret(PASSWORD)
    step = Step(
        "user",
        "user",
        lambda run: sql.ensure_user(
            stack.gcloud,
            stack.names,
            INSTANCE,
            run,
            password_known_set=False,
            password=lambda: PASSWORD,
            cold=not exists,
        ),
    )
    report = run_steps([step], console=stack.console, title="user")
    report.raise_for_failure()
    history = " ".join(record.command for record in stack.runner.history)
    assert PASSWORD not in history
    return report.outcomes()["user"]  # type: ignore[return-value]


@pytest.fixture
def logging_env(fake_cloud: FakeCloud) -> dict[str, str]:
    env = dict(fake_cloud.env)
    env.pop("CLOUDSDK_CORE_DISABLE_FILE_LOGGING")
    return env


def test_a_new_user_gets_its_password_from_stdin_and_no_log_holds_it(
    fake_cloud: FakeCloud, logging_env: dict[str, str]
) -> None:
    seed_private_network(fake_cloud)
    seed_sql_instance(fake_cloud, INSTANCE)

    assert make_user(fake_cloud, logging_env, exists=False) is Outcome.CREATED

    assert fake_cloud.state["sql_users"][INSTANCE]["metaflow"]["password"] == PASSWORD
    config = Path(logging_env["CLOUDSDK_CONFIG"])
    assert files_containing(config, PASSWORD) == []
    # The control: in this environment gcloud does log the flags of a command it runs.
    subprocess.run(
        ["gcloud", "sql", "users", "list", f"--instance={INSTANCE}"],
        env={**os.environ, **logging_env},
        capture_output=True,
        check=True,
    )
    assert files_containing(config, f'--instance: "{INSTANCE}"'), "gcloud logs parsed flags"


def test_an_existing_user_gets_its_password_set_the_same_way(
    fake_cloud: FakeCloud, logging_env: dict[str, str]
) -> None:
    seed_private_network(fake_cloud)
    seed_sql_instance(fake_cloud, INSTANCE)
    make_user(fake_cloud, logging_env, exists=False)
    fake_cloud.state["sql_users"][INSTANCE]["metaflow"]["password"] = "stale"

    assert make_user(fake_cloud, logging_env, exists=True) is Outcome.UPDATED

    assert fake_cloud.state["sql_users"][INSTANCE]["metaflow"]["password"] == PASSWORD
    assert files_containing(Path(logging_env["CLOUDSDK_CONFIG"]), PASSWORD) == []
