"""The one runner: dry-run, redaction, timeouts and error translation, for every command."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp import errors
from metaflow_gcp.shell import REDACTED, Runner
from tests.support.cluster import tool_stubs


def test_a_command_runs_with_an_argument_list_and_its_json_is_parsed(fp: FakeProcess) -> None:
    fp.register(["gcloud", "sql", "instances", "describe", "x"], stdout='{"name": "x"}')
    result = Runner().run(["gcloud", "sql", "instances", "describe", "x"], mutating=False)
    assert result.json() == {"name": "x"}
    assert fp.call_count(["gcloud", "sql", "instances", "describe", "x"]) == 1


def test_dry_run_runs_nothing_and_shows_each_command(fp: FakeProcess) -> None:
    shown: list[str] = []
    runner = Runner(dry_run=True, echo=shown.append)
    runner.run(["gcloud", "compute", "networks", "create", "n"], mutating=True)
    runner.run(["gcloud", "compute", "networks", "describe", "n"], mutating=False)
    assert shown == [
        "gcloud compute networks create n",
        "gcloud compute networks describe n   # read",
    ]
    assert len(fp.calls) == 0
    assert [r.mutating for r in runner.history] == [True, False]


def test_dry_run_needs_no_tool_installed() -> None:
    runner = Runner(dry_run=True, env={"PATH": "/nonexistent"})
    assert runner.run(["helm", "list"], mutating=False, dry_stdout="[]").json() == []


def test_a_missing_tool_is_one_line_with_how_to_install_it() -> None:
    runner = Runner(env={"PATH": "/nonexistent"})
    with pytest.raises(
        errors.MissingTool, match=r"'helm' was not found on PATH\. Fix: install Helm"
    ):
        runner.run(["helm", "list"], mutating=False)


def test_registered_secrets_never_reach_logs_errors_or_history(
    fp: FakeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner()
    runner.add_secret("s3cr3t-value")
    fp.register(
        ["gcloud", "--token=s3cr3t-value"],
        returncode=1,
        stderr="ERROR: bad token s3cr3t-value\n",
    )
    fp.allow_unregistered(False)
    caplog.set_level(logging.DEBUG, logger="metaflow_gcp")
    with pytest.raises(errors.CommandError) as caught:
        runner.run(["gcloud", "--token=s3cr3t-value"], mutating=False)
    everything = " ".join(
        [
            str(caught.value),
            caught.value.detail(),
            caplog.text,
            *(r.command for r in runner.history),
        ]
    )
    assert "s3cr3t-value" not in everything
    assert REDACTED in everything


def test_secret_output_is_registered_so_later_output_is_redacted(
    fp: FakeProcess, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner()
    fp.register(["gcloud", "secrets", "versions", "access", "latest"], stdout="pa55word-xyz\n")
    fp.register(["kubectl", "apply"], returncode=1, stderr="error: pa55word-xyz rejected")
    caplog.set_level(logging.DEBUG, logger="metaflow_gcp")
    value = runner.run(
        ["gcloud", "secrets", "versions", "access", "latest"], mutating=False, secret_output=True
    ).stdout
    assert value.strip() == "pa55word-xyz"
    with pytest.raises(errors.CommandError) as caught:
        runner.run(["kubectl", "apply"], mutating=True)
    assert "pa55word-xyz" not in caught.value.detail() + caplog.text


def test_secrets_go_in_on_stdin_never_on_the_command_line(fp: FakeProcess) -> None:
    seen: list[bytes | str] = []
    fp.register(["gcloud", "secrets", "create", "s", "--data-file=-"], stdin_callable=seen.append)
    Runner().run(["gcloud", "secrets", "create", "s", "--data-file=-"], mutating=True, stdin="pw")
    assert seen and "pw" in str(seen[0])


def test_a_command_that_hangs_is_stopped_and_reported() -> None:
    with pytest.raises(errors.CommandTimeout, match="sleep timed out: no answer after 0s"):
        Runner().run(["sleep", "5"], mutating=False, timeout=0.2)


GCLOUD_FAILURES = [
    (
        "ERROR: (gcloud.sql.instances.describe) HTTPError 404: The Cloud SQL instance does not exist.",
        errors.NotFound,
    ),
    (
        "ERROR: (gcloud.compute.networks.create) Could not fetch resource:\n - The resource "
        "'projects/p/global/networks/n' already exists",
        errors.AlreadyExists,
    ),
    (
        "ERROR: (gcloud.container.clusters.create) ResponseError: code=403, message=Required "
        "'container.clusters.create' permission(s) for 'projects/p'. PERMISSION_DENIED",
        errors.PermissionDenied,
    ),
    (
        "ERROR: (gcloud.sql.instances.list) HTTPError 403: Cloud SQL Admin API has not been used in "
        "project 1 before or it is disabled. reason: SERVICE_DISABLED",
        errors.ApiNotEnabled,
    ),
    (
        "ERROR: (gcloud.compute.addresses.create) Quota 'GLOBAL_INTERNAL_ADDRESSES' exceeded.",
        errors.QuotaExceeded,
    ),
    ("ERROR: HTTPError 412: Precondition failed", errors.PreconditionFailed),
    (
        "ERROR: (gcloud.projects.set-iam-policy) ABORTED: There were concurrent policy changes.",
        errors.ConcurrentChange,
    ),
    (
        "ERROR: (gcloud.sql.databases.create) HTTPError 409: Operation failed because another "
        "operation was already in progress.",
        errors.OperationInProgress,
    ),
    (
        "ERROR: (gcloud.config) You do not currently have an active account selected.",
        errors.NotAuthenticated,
    ),
    (
        "ERROR: (gcloud.x) INVALID_ARGUMENT: Role roles/foo is not supported.",
        errors.InvalidArgument,
    ),
    (
        "ERROR: (gcloud.compute.networks.delete) Could not fetch resource:\n - The network "
        "resource 'projects/p/global/networks/n' is already being used by "
        "'projects/p/global/addresses/r'",
        errors.InUse,
    ),
    (
        "ERROR: (gcloud.services.vpc-peerings.delete) HTTPError 400: Failed to delete "
        "connection; Producer services (e.g. CloudSQL, Cloud Memstore, etc.) are still using "
        "this connection. FAILED_PRECONDITION",
        errors.InUse,
    ),
    (
        "ERROR: (gcloud.projects.set-iam-policy) INVALID_ARGUMENT: Service account "
        "mf-x-steps@p.iam.gserviceaccount.com does not exist.",
        errors.NotYetPropagated,
    ),
    (
        "ERROR: (gcloud.container.node-pools.create) ResponseError: code=400, message="
        'Accelerator type "nvidia-l4" does not exist in zone us-west2-a.',
        errors.NotOfferedInZone,
    ),
    (
        "ERROR: (gcloud.container.node-pools.create) ResponseError: code=400, message=Cluster is "
        "running incompatible operation operation-1. FAILED_PRECONDITION",
        errors.InvalidArgument,  # gRPC's FAILED_PRECONDITION is no failed write condition
    ),
    (
        "ERROR: (gcloud.sql.instances.create) HTTPError 409: The Cloud SQL instance already "
        "exists. When you delete an instance, you can't reuse the name of the deleted instance "
        "until one week from the deletion date.",
        errors.AlreadyExists,
    ),
]


@pytest.mark.parametrize(
    ("stderr", "kind"), GCLOUD_FAILURES, ids=[k.__name__ for _, k in GCLOUD_FAILURES]
)
def test_gcloud_failures_become_typed_one_line_errors(
    fp: FakeProcess, stderr: str, kind: type[errors.CommandError]
) -> None:
    fp.register(["gcloud", "x"], returncode=1, stderr=stderr + "\n")
    with pytest.raises(errors.CommandError) as caught:
        Runner().run(["gcloud", "x"], mutating=False)
    assert type(caught.value) is kind
    line = caught.value.one_line()
    assert "\n" not in line
    assert line.startswith(f"gcloud {kind.kind}: ")


def test_the_one_line_quotes_gclouds_own_summary_without_the_command_group(fp: FakeProcess) -> None:
    fp.register(
        ["gcloud", "x"], returncode=1, stderr="WARNING: noise\nERROR: (gcloud.sql.x) Boom.\n"
    )
    with pytest.raises(errors.CommandError) as caught:
        Runner().run(["gcloud", "x"], mutating=False)
    assert caught.value.one_line() == "gcloud failed: Boom."


def test_kubectl_failures_are_translated_too(fp: FakeProcess) -> None:
    fp.register(
        ["kubectl", "get", "pods"],
        returncode=1,
        stderr='Error from server (NotFound): namespaces "airflow" not found\n',
    )
    with pytest.raises(errors.NotFound):
        Runner().run(["kubectl", "get", "pods"], mutating=False)


def test_a_missing_gke_auth_plugin_is_a_login_problem_not_a_missing_object(
    fp: FakeProcess,
) -> None:
    fp.register(
        ["kubectl", "get", "namespaces"],
        returncode=1,
        stderr="Error: getting credentials: exec: executable gke-gcloud-auth-plugin not found\n",
    )
    with pytest.raises(errors.NotAuthenticated) as caught:
        Runner().run(["kubectl", "get", "namespaces"], mutating=False)
    assert "gcloud components install gke-gcloud-auth-plugin" in caught.value.one_line()


@pytest.mark.parametrize(
    "stderr",
    [
        "The connection to the server 34.1.2.3 was refused - did you specify the right host "
        "or port?\n",
        "E1204 memcache.go:265] couldn't get current server API group list: Get \"https://"
        '34.1.2.3/api": dial tcp 34.1.2.3:443: connect: connection refused\n',
        "Unable to connect to the server: dial tcp 34.1.2.3:443: i/o timeout\n",
        'Error: Kubernetes cluster unreachable: Get "https://34.1.2.3/version": context '
        "deadline exceeded\n",
    ],
)
def test_a_cluster_that_does_not_answer_is_unreachable(fp: FakeProcess, stderr: str) -> None:
    fp.register(["kubectl", "get", "namespaces"], returncode=1, stderr=stderr)
    with pytest.raises(errors.Unreachable):
        Runner().run(["kubectl", "get", "namespaces"], mutating=False)


def test_a_helm_wait_that_ran_out_of_time_is_not_an_unreachable_cluster(
    fp: FakeProcess, tmp_path: Path
) -> None:
    fp.register(
        ["helm", "upgrade"],
        returncode=1,
        stderr="Error: UPGRADE FAILED: context deadline exceeded\n",
    )
    runner = Runner(env={"PATH": str(tool_stubs(tmp_path / "bin", ["helm"]))})
    with pytest.raises(errors.CommandError) as caught:
        runner.run(["helm", "upgrade"], mutating=True)
    assert not isinstance(caught.value, errors.Unreachable)


def test_a_cluster_that_refuses_is_not_unreachable(fp: FakeProcess) -> None:
    fp.register(
        ["kubectl", "get", "namespaces"],
        returncode=1,
        stderr='Error from server (Forbidden): namespaces is forbidden: User "x" cannot list\n',
    )
    with pytest.raises(errors.PermissionDenied):
        Runner().run(["kubectl", "get", "namespaces"], mutating=False)


def test_check_false_returns_the_failure_instead_of_raising(fp: FakeProcess) -> None:
    fp.register(["gcloud", "x"], returncode=2, stderr="nope")
    assert Runner().run(["gcloud", "x"], mutating=False, check=False).returncode == 2


def test_gcloud_never_waits_on_a_prompt(fp: FakeProcess) -> None:
    seen: dict[str, str] = {}

    def capture(process: object) -> None:
        seen.update(process.kwargs["env"])  # type: ignore[attr-defined]

    fp.register(["gcloud", "x"], callback=capture)
    Runner().run(["gcloud", "x"], mutating=False)
    assert seen["CLOUDSDK_CORE_DISABLE_PROMPTS"] == "1"


def test_history_counts_commands_per_program(fp: FakeProcess) -> None:
    fp.register(["gcloud", fp.any()], occurrences=3)
    fp.register(["kubectl", fp.any()])
    runner = Runner()
    for _ in range(3):
        runner.run(["gcloud", "a"], mutating=False)
    runner.run(["kubectl", "b"], mutating=True)
    assert (runner.count("gcloud"), runner.count("kubectl", mutating=True)) == (3, 1)


def test_real_subprocess_is_used(fp: FakeProcess) -> None:
    fp.pass_command(["true"])
    assert Runner().run(["true"], mutating=False).returncode == 0
    assert subprocess.run is not None
