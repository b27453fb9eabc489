"""`python flow.py airflow create` with the stack's Airflow profile makes a DAG the stack runs.

The DAG is compiled with the profile services.up wrote for Airflow, then handed to
`inv airflow.upload-dag --dry-run` as a subprocess, exactly as a user types it: it must pass
the task's DAG checks, and the namespace and account its step pods use must be the ones
services.up prepares for Airflow.

The DAG file goes in with `--path FILE`: the positional form of the README
(`inv airflow.upload-dag FILE`) is helper "cli"'s fix and is exercised by its own layer.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metaflow_gcp import airflow_dags, kube_names, nextsteps
from tests.clients import argo
from tests.clients.conftest import REPO_ROOT, SETTINGS, SWITCHES, ClientStack, MetaflowCli

pytestmark = pytest.mark.clients

INV = Path(sys.executable).with_name("inv")
DAG_FILE = "daily_dag.py"


@pytest.fixture(scope="module")
def dag_file(metaflow: MetaflowCli, client_stack: ClientStack, flow_dir: Path) -> Path:
    profile = client_stack.profile_for(nextsteps.AIRFLOW_PROFILE)
    metaflow.run(flow_dir / "daily_flow.py", "airflow", "create", DAG_FILE, profile=profile)
    return flow_dir / DAG_FILE


@pytest.fixture(scope="module")
def dag_config(dag_file: Path) -> dict[str, Any]:
    """The CONFIG literal Metaflow writes at the top of the DAG file (read, never imported)."""
    tree = ast.parse(dag_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "CONFIG"
        ]:
            config: dict[str, Any] = ast.literal_eval(node.value)
            return config
    raise AssertionError(f"{dag_file} has no CONFIG")


@pytest.fixture(scope="module")
def var_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack's settings as a Terraform-style var file, the way a user passes them."""
    path = tmp_path_factory.mktemp("settings") / "stack.tfvars"
    lines = [f'{key} = "{value}"' for key, value in SETTINGS.items()]
    lines += [f"{key} = {str(value).lower()}" for key, value in SWITCHES.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def inv(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [str(INV), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pods(dag_config: dict[str, Any]) -> list[dict[str, Any]]:
    return [state["operator_args"] for state in dag_config["states"].values()]


def test_every_step_of_the_dag_is_a_pod_in_airflows_namespace(dag_config: dict[str, Any]) -> None:
    assert {s["operator_type"] for s in dag_config["states"].values()} == {"kubernetes"}
    assert {p["namespace"] for p in pods(dag_config)} == {kube_names.AIRFLOW_NS}


def test_the_dags_pods_run_as_the_account_of_the_airflow_profile(
    dag_config: dict[str, Any], client_stack: ClientStack
) -> None:
    config = client_stack.config(client_stack.profile_for(nextsteps.AIRFLOW_PROFILE))
    assert config["METAFLOW_KUBERNETES_NAMESPACE"] == kube_names.AIRFLOW_NS
    assert {p["service_account_name"] for p in pods(dag_config)} == {
        config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
    }


def test_the_dags_pods_run_as_the_stacks_steps_account(
    dag_config: dict[str, Any], client_stack: ClientStack
) -> None:
    assert {p["service_account_name"] for p in pods(dag_config)} == {client_stack.accounts.steps}


def test_the_dag_names_no_other_namespace_and_never_the_services_account(
    dag_config: dict[str, Any], client_stack: ClientStack
) -> None:
    namespaces, accounts = argo.names_used(dag_config)
    assert namespaces == {kube_names.AIRFLOW_NS}
    assert client_stack.accounts.services not in accounts


def test_the_dag_reads_and_writes_the_stacks_datastore(
    dag_config: dict[str, Any], client_stack: ClientStack
) -> None:
    for pod in pods(dag_config):
        env = {e["name"]: e["value"] for e in pod["env_vars"]}
        assert env["METAFLOW_DATASTORE_SYSROOT_GS"] == client_stack.names.datastore_root


def test_upload_dag_takes_the_compiled_dag(dag_file: Path, var_file: Path, tmp_path: Path) -> None:
    result = inv(
        "airflow.upload-dag",
        "--dry-run",
        "--var-file",
        str(var_file),
        "--path",
        str(dag_file),
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # rich wraps long lines
    assert f"--namespace={kube_names.AIRFLOW_NS}" in out
    assert f"{airflow_dags.DAGS_DIR}/{DAG_FILE}" in out
    assert f"-c {airflow_dags.CONTAINER}" in out


def test_upload_dag_refuses_the_flow_file_in_place_of_the_dag(
    flow_dir: Path, var_file: Path, tmp_path: Path
) -> None:
    """The check that passes the DAG is a real one: the flow itself is no DAG."""
    flow = flow_dir / "daily_flow.py"
    result = inv(
        "airflow.upload-dag",
        "--dry-run",
        "--var-file",
        str(var_file),
        "--path",
        str(flow),
        home=tmp_path,
    )
    assert result.returncode != 0
    assert "never imports airflow" in result.stdout + result.stderr
    assert "kubectl" not in result.stdout
