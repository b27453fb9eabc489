"""`inv services.up`: what it asks of gcloud, kubectl and helm, in which order, and what it never does.

The cluster, Helm and the two gcloud APIs involved are played by `FakeCluster`
(tests/support/cluster.py) behind pytest-subprocess: it keeps releases, namespaces, Secrets
and the IAM policy between calls, so a second run sees what the first one left and re-runs
can be judged. The state file is `FakeState`, in memory with the same lock semantics as the
real store.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_subprocess import FakeProcess

from metaflow_gcp import releases, services
from metaflow_gcp.app import open_stack
from metaflow_gcp.errors import LockHeld, StackError
from metaflow_gcp.lifecycle import TaskRun
from tests.support.cluster import FakeCluster, HelmRelease, flag, helm_user_values
from tests.support.console import CapturedConsole
from tests.support.services_up import (  # noqa: F401 - fixtures, found by pytest by name
    ServicesUp,
    cluster_fixture,
    helm_upgrade,
    private_homes_fixture,
    state_fixture,
    tools_fixture,
    up_fixture,
)
from tests.support.stack import (
    CONTEXT,
    LEGACY_GSA,
    PASSWORD,
    POOL,
    SECRET_V3,
    SERVICES_GSA,
    SERVICES_KSA,
    SETTINGS,
    STEPS_GSA,
    STEPS_KSA,
    FakeState,
)

ROOT = Path(__file__).resolve().parents[2]
PINS = yaml.safe_load((ROOT / "values" / "versions.yaml").read_text())


# ---------------------------------------------------------------------------------------
# The conversation


def test_a_first_run_binds_identity_then_secret_then_metaflow_then_argo_then_events(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    run = up(argo=True, airflow=False)

    wi = max(run.index("set-iam-policy", SERVICES_GSA), run.index("set-iam-policy", STEPS_GSA))
    steps_ns = run.applied("Namespace", "metaflow")
    services_ns = run.applied("Namespace", "metaflow-services")
    secret = run.applied("Secret", "metaflow-db")
    metaflow = run.index("upgrade", "--install", "metaflow")
    workflows = run.index("upgrade", "--install", "argo-workflows")
    events = run.index("upgrade", "--install", "argo-events")
    objects = run.index("upgrade", "--install", "metaflow-argo-events")
    assert wi < metaflow and services_ns < secret < metaflow and steps_ns < metaflow
    assert steps_ns < workflows and run.applied("Namespace", "argo") < workflows
    assert events < objects and steps_ns < objects  # the CRDs come with argo-events
    assert run.applied("Namespace", "argo-events") < events
    assert cluster.release_names() == {
        "metaflow",
        "argo-workflows",
        "argo-events",
        "metaflow-argo-events",
    }
    assert cluster.wi_members(STEPS_GSA) == {f"serviceAccount:{POOL}[metaflow/{STEPS_KSA}]"}
    assert cluster.wi_members(SERVICES_GSA) == {
        f"serviceAccount:{POOL}[metaflow-services/{SERVICES_KSA}]"
    }
    assert state.doc["lock"] is None
    assert state.doc["services"]["argo"] is True and state.doc["services"]["airflow"] is False
    assert state.doc["services"]["ok"] is True
    assert "services.up finished" in run.output


def test_every_kubectl_and_helm_call_names_the_stack_context(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    run = up(argo=True)

    for argv in run.argvs():
        if argv[0] == "kubectl":
            assert argv[1] == f"--context={CONTEXT}", argv
        if argv[0] == "helm":
            assert argv[1] == f"--kube-context={CONTEXT}", argv


def test_upstream_charts_come_from_the_pinned_repo_and_version_with_their_values_file(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    run = up(argo=True)

    for name in ("argo-workflows", "argo-events"):
        argv = helm_upgrade(run, name)
        assert argv[5] == PINS[name]["chart"]
        assert flag(argv, "--repo") == PINS[name]["repo"]
        assert flag(argv, "--version") == PINS[name]["version"]
        assert flag(argv, "--values") == str(ROOT / "values" / f"{name}.yaml")
        assert "--wait" in argv
    for name in ("metaflow", "metaflow-argo-events"):
        argv = helm_upgrade(run, name)
        assert argv[5] == str(ROOT / "charts" / name)
        assert flag(argv, "--repo") is None


def test_the_metaflow_release_gets_the_stack_values_and_the_sql_generation_from_state(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    run = up(argo=True)

    argv = helm_upgrade(run, "metaflow")
    assert argv[argv.index("--set-string") :][:12] == [
        "--set-string",
        f"serviceAccounts.steps.name={STEPS_KSA}",
        "--set-string",
        f"serviceAccounts.steps.gcpServiceAccount={STEPS_GSA}",
        "--set-string",
        f"serviceAccounts.services.name={SERVICES_KSA}",
        "--set-string",
        f"serviceAccounts.services.gcpServiceAccount={SERVICES_GSA}",
        "--set-string",
        "database.instanceConnectionName=acme-ml-prod:us-west2:mf-dev-pg-2",
        "--set-string",
        "datastore.sysroot=gs://acme-acme-ml-prod-mf-dev/metaflow",
    ]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ["argoWorkflows.enabled=true", "networkPolicy.allowAirflow=false"]
    assert flag(argv, "--namespace") == "metaflow" and "--create-namespace" in argv
    assert flag(argv, "--timeout") == "10m"


def test_the_db_password_travels_only_on_stdin_of_kubectl_apply(
    cluster: FakeCluster, up: ServicesUp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="metaflow_gcp")
    run = up(argo=True)

    encoded = base64.b64encode(PASSWORD.encode()).decode()
    carriers = [argv for argv, stdin in run.calls if stdin and encoded in stdin]
    assert carriers == [
        [
            "kubectl",
            f"--context={CONTEXT}",
            "--namespace=metaflow-services",
            "apply",
            "--server-side",
            "--field-manager=metaflow-gcp",
            "--force-conflicts",
            "-f",
            "-",
        ]
    ]
    for argv, stdin in run.calls:
        assert not any(PASSWORD in a or encoded in a for a in argv)
        assert stdin is None or PASSWORD not in stdin  # base64 in a Secret, never raw
    assert PASSWORD not in run.output and encoded not in run.output
    assert PASSWORD not in caplog.text and encoded not in caplog.text
    assert ("metaflow", "metaflow-db") not in cluster.secrets  # never where user steps run
    secret = cluster.secrets[("metaflow-services", "metaflow-db")]
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
    assert secret["metadata"]["annotations"] == {"metaflow-gcp/secret-version": SECRET_V3}


def test_a_second_run_against_the_same_cluster_changes_nothing(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)
    before = len(cluster.mutations)
    revisions = {k: r.revision for k, r in cluster.releases.items()}

    again = up(argo=True)

    assert again.mutating() == []
    assert len(cluster.mutations) == before
    assert {k: r.revision for k, r in cluster.releases.items()} == revisions
    assert not any(argv[-2:] == ["-f", "-"] for argv in again.argvs())
    assert not any("access" in argv for argv in again.argvs())  # password not even read
    assert "everything was already in place" in again.output


def test_a_new_password_version_rewrites_only_the_secret(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)
    cluster.secret_version = SECRET_V3.replace("versions/3", "versions/4")

    again = up(argo=True)

    assert [m.split(" ")[3] for m in again.mutating()] == ["apply"]
    annotations = cluster.secrets[("metaflow-services", "metaflow-db")]["metadata"]["annotations"]
    assert annotations == {"metaflow-gcp/secret-version": cluster.secret_version}


def test_an_edited_local_chart_is_upgraded_even_with_the_same_version(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    up(argo=True)
    state.doc["services"]["charts"]["metaflow"] = "0ld-checksum"  # recorded before an edit

    again = up(argo=True)

    assert len(again.mutating()) == 1
    assert " upgrade --install metaflow " in again.mutating()[0]
    assert state.doc["services"]["charts"]["metaflow"] == releases.chart_checksum(
        ROOT / "charts" / "metaflow"
    )


def test_changed_values_upgrade_that_release_only(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    up(argo=True)
    state.doc["db_generation"] = 3  # infra.up moved to a new SQL instance

    again = up(argo=True)

    assert len(again.mutating()) == 1
    assert cluster.releases[("metaflow", "metaflow")].values["database"] == {
        "instanceConnectionName": "acme-ml-prod:us-west2:mf-dev-pg-3"
    }


# ---------------------------------------------------------------------------------------
# Namespaces, identities, and the upgrade from the single-account shape

PSA = "pod-security.kubernetes.io"


def test_every_namespace_is_labelled_for_pod_security_before_anything_lands_in_it(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    run = up(argo=True)  # airflow's namespace: tests/unit/test_airflow_services.py

    expected = {
        "metaflow": "baseline",
        "metaflow-services": "baseline",
        "argo": "baseline",
        "argo-events": "baseline",
    }
    for namespace, enforce in expected.items():
        labels = cluster.namespaces[namespace]
        assert labels[f"{PSA}/enforce"] == enforce, namespace
        assert labels[f"{PSA}/warn"] == labels[f"{PSA}/audit"] == "restricted", namespace
        assert labels[f"{PSA}/enforce-version"] == "v1.33"
        assert labels["app.kubernetes.io/managed-by"] == "metaflow-gcp"
    assert not any(a.startswith("create") and "namespace" in a for a in run.mutating())


def test_an_existing_namespace_gets_its_labels_and_keeps_its_own(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.namespaces["metaflow"] = {"team": "ml", f"{PSA}/enforce": "privileged"}

    run = up(argo=False)

    assert cluster.namespaces["metaflow"]["team"] == "ml"
    assert cluster.namespaces["metaflow"][f"{PSA}/enforce"] == "baseline"
    manifest = json.loads(run.calls[run.applied("Namespace", "metaflow")][1] or "{}")
    assert set(manifest["metadata"]) == {"name", "labels"}  # nothing but our labels applied


def test_each_google_account_is_bound_to_its_own_kubernetes_account_only(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)  # Airflow's accounts: tests/unit/test_airflow_services.py

    assert cluster.wi_members(SERVICES_GSA) == {
        f"serviceAccount:{POOL}[metaflow-services/{SERVICES_KSA}]"
    }
    assert cluster.wi_members(STEPS_GSA) == {f"serviceAccount:{POOL}[metaflow/{STEPS_KSA}]"}


def test_two_stacks_in_one_project_share_no_workload_identity_member(
    cluster: FakeCluster, tools: dict[str, str], state: FakeState
) -> None:
    def members(stack_name: str) -> set[str]:
        stack = open_stack({**SETTINGS, "stack": stack_name}, env=tools)
        run = services.ServicesRun(stack, None, None, ROOT)  # type: ignore[arg-type]
        return {f"{ns}/{ksa}" for pairs in run.wanted_ksas().values() for ns, ksa in pairs}

    assert members("dev").isdisjoint(members("prod"))


def test_an_upgrade_moves_the_services_then_removes_the_old_secret_account_and_google_account(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.upgraded_from_the_single_account_shape()

    run = up(argo=True)

    release = run.index("upgrade", "--install", "metaflow")
    assert run.applied("Secret", "metaflow-db") < release
    old_secret = run.index("delete", "secret", "metaflow-db")
    old_account = run.index("delete", "serviceaccount", "metaflow")
    assert release < old_secret and release < old_account
    assert flag(run.argvs()[old_secret], "--namespace") == "metaflow"
    assert ("metaflow", "metaflow-db") not in cluster.secrets
    assert ("metaflow", "metaflow") not in cluster.service_accounts
    assert ("metaflow-services", "metaflow-db") in cluster.secrets
    # The legacy Google account goes last, after every release moved off it.
    retired = run.index("iam", "service-accounts", "delete", LEGACY_GSA)
    assert all(
        i < retired for i, argv in enumerate(run.argvs()) if "upgrade" in argv and "helm" in argv
    )
    assert LEGACY_GSA not in cluster.google_accounts
    assert "services.up finished" in run.output


def test_an_upgraded_stack_converges_and_a_re_run_changes_nothing(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.upgraded_from_the_single_account_shape()
    up(argo=True)

    again = up(argo=True)

    assert again.mutating() == []


def test_the_old_account_stays_while_a_pod_still_runs_as_it_and_goes_on_the_next_run(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.upgraded_from_the_single_account_shape()
    cluster.pods = [
        {
            "metadata": {"name": "old-workflow-step-1", "namespace": "metaflow"},
            "spec": {"serviceAccountName": "metaflow"},
            "status": {"phase": "Running"},
        }
    ]

    up(argo=True)
    assert ("metaflow", "metaflow") in cluster.service_accounts
    assert ("metaflow", "metaflow-db") not in cluster.secrets  # the password goes at once

    cluster.pods[0]["status"]["phase"] = "Succeeded"
    up(argo=True)
    assert ("metaflow", "metaflow") not in cluster.service_accounts


def test_argo_workflows_defaults_to_this_stacks_steps_account(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    run = up(argo=True)

    argv = helm_upgrade(run, "argo-workflows")
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set-string"]
    # The only account Argo needs named: charts/metaflow binds the executor and agent Roles
    # to it, since the chart's own workflow RBAC would land in "argo" (singleNamespace).
    assert sets == [f"controller.workflowDefaults.spec.serviceAccountName={STEPS_KSA}"]
    values = cluster.releases[("argo", "argo-workflows")].values
    assert values["workflow"]["rbac"] == {"create": False}


def test_the_config_carries_the_secrets_prefix_from_the_recorded_project_number(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)

    config = json.loads((services.nextsteps.config_home() / "config.json").read_text())
    assert config["METAFLOW_GCP_SECRET_MANAGER_PREFIX"] == "projects/123456/secrets/mf-dev-user-"
    assert config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] == STEPS_KSA


# ---------------------------------------------------------------------------------------
# Failures


def test_a_failed_release_is_named_on_one_line_and_the_independent_ones_finish(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    cluster.fail = {"argo-events"}

    with pytest.raises(StackError, match=r"release argo-events \(argo-events\).* failed"):
        up(argo=True)

    assert {"metaflow", "argo-workflows"} <= cluster.release_names()
    assert ("metaflow", "metaflow-argo-events") not in cluster.releases  # needs argo-events
    assert state.doc["lock"] is None and state.doc["services"]["ok"] is False


def test_the_failure_summary_is_one_line_per_failed_release(
    cluster: FakeCluster, tools: dict[str, str], state: FakeState
) -> None:
    cluster.fail = {"argo-events"}
    console = CapturedConsole(width=400)
    stack = open_stack(
        {**SETTINGS, "deploy_argo": True, "deploy_jobset": False}, env=tools, console=console
    )
    stack.state = state  # type: ignore[assignment]

    with pytest.raises(StackError):
        services.up(stack)

    crosses = [line for line in console.text.splitlines() if line.startswith("✘")]
    assert crosses == [
        "✘ release argo-events (argo-events) 2.4.22 failed: helm failed: Error: INSTALLATION "
        "FAILED: context deadline exceeded"
    ]
    assert "not started (they need what failed): release metaflow-argo-events" in console.text


def test_a_release_stuck_in_pending_upgrade_says_how_to_unstick_it(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.releases[("argo", "argo-workflows")] = HelmRelease(
        "argo-workflows", "argo", "argo-workflows-0.45.20", {}, status="pending-upgrade"
    )

    with pytest.raises(StackError, match="argo-workflows"):
        up(argo=True)

    assert up.last is not None
    assert (
        "release argo-workflows in argo is 'pending-upgrade' (an earlier helm run was "
        f"interrupted). Fix: `helm --kube-context={CONTEXT} rollback argo-workflows "
        "--namespace=argo`, then run `inv services.up` again"
    ) in up.last.output
    assert not any(m[2:5] == ["upgrade", "--install", "argo-workflows"] for m in cluster.mutations)
    assert "metaflow" in cluster.release_names()  # the independent releases went on


def test_a_lock_held_by_someone_else_stops_before_any_change(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    state.doc["lock"] = {"id": "x", "holder": "ana@laptop", "since": "09:00", "task": "infra.up"}

    with pytest.raises(LockHeld, match="ana@laptop"):
        up(argo=True)

    assert cluster.mutations == []


def test_a_missing_kube_context_is_one_line_with_the_fix(
    fp: FakeProcess, tools: dict[str, str], state: FakeState, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-kubeconfig"
    empty.write_text("contexts: []\n")
    stack = open_stack(SETTINGS, env={**tools, "KUBECONFIG": str(empty)}, console=CapturedConsole())
    stack.state = state  # type: ignore[assignment]

    with pytest.raises(StackError, match="gcloud container clusters get-credentials mf-dev"):
        services.up(stack)

    assert len(fp.calls) == 0


def test_a_stack_without_infra_is_refused_and_the_lock_released(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    del state.doc["infra"]

    with pytest.raises(StackError, match=re.escape("run `inv infra.up` first")):
        up(argo=True)

    assert cluster.mutations == [] and state.doc["lock"] is None


# ---------------------------------------------------------------------------------------
# Switching components on and off


def test_argo_without_airflow_never_touches_airflow(cluster: FakeCluster, up: ServicesUp) -> None:
    run = up(argo=True, airflow=False)

    assert "airflow" not in cluster.release_names()
    assert "airflow" not in cluster.namespaces
    assert not any("airflow" in m for m in cluster.wi_members(STEPS_GSA))
    assert not any(a.startswith("--namespace=airflow") for argv in run.argvs() for a in argv)


def test_switching_argo_off_removes_the_event_objects_before_argo_events(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)

    run = up(argo=False, yes=True)

    assert cluster.release_names() == {"metaflow"}
    assert run.index("uninstall", "metaflow-argo-events") < run.index("uninstall", "argo-events")
    assert cluster.releases[("metaflow", "metaflow")].values["argoWorkflows"] == {"enabled": False}


def test_a_release_uninstalled_with_kept_history_counts_as_absent(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.releases[("airflow", "airflow")] = HelmRelease(
        "airflow", "airflow", "airflow-1.15.0", {}, status="uninstalled"
    )

    up(argo=True, airflow=False, interactive=lambda: False)  # nothing to confirm, no refusal

    assert not any("uninstall" in m for m in cluster.mutations)


def test_switching_off_without_a_terminal_or_yes_refuses_in_one_line(
    cluster: FakeCluster, up: ServicesUp, state: FakeState
) -> None:
    up(argo=True)
    cluster.mutations.clear()
    writes = state.writes

    with pytest.raises(StackError) as refused:
        up(argo=False, interactive=lambda: False)

    assert str(refused.value) == (
        "services.up would uninstall metaflow-argo-events, argo-events, argo-workflows; nothing "
        "was changed. Fix: pass --yes to confirm, or --argo to keep them"
    )
    assert cluster.mutations == [] and state.writes == writes
    assert "argo-workflows" in cluster.release_names()


def test_declining_the_removal_changes_nothing(
    cluster: FakeCluster, up: ServicesUp, monkeypatch: pytest.MonkeyPatch
) -> None:
    up(argo=True)
    cluster.mutations.clear()
    monkeypatch.setattr(TaskRun, "confirm", lambda self, question: False)

    with pytest.raises(StackError, match="not confirmed"):
        up(argo=False, interactive=lambda: True)

    assert cluster.mutations == []


# ---------------------------------------------------------------------------------------
# Dry run


def test_dry_run_prints_every_command_in_order_and_calls_nothing(
    fp: FakeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class NoStdin:
        def read(self, *args: Any) -> str:
            raise AssertionError("a dry run read stdin")

        readline = read

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NoStdin())
    console = CapturedConsole(width=500)
    stack = open_stack(
        {**SETTINGS, "deploy_argo": True, "deploy_airflow": False, "deploy_jobset": False},
        dry_run=True,
        env={"PATH": str(tmp_path / "nothing-here")},
        console=console,
    )

    services.up(stack)

    assert len(fp.calls) == 0
    lines = [line.strip() for line in console.text.splitlines() if line.strip().startswith("$")]
    order = [
        f"gcloud iam service-accounts set-iam-policy {SERVICES_GSA}",
        f"gcloud iam service-accounts set-iam-policy {STEPS_GSA}",
        "kubectl --context=gke_acme-ml-prod_us-west2-a_mf-dev apply --server-side",
        "gcloud secrets versions access latest",
        "--namespace=metaflow-services apply --server-side",
        "upgrade --install metaflow ",
        "--namespace=metaflow get secret metaflow-db",
        "--namespace=metaflow get serviceaccount metaflow",
        "upgrade --install argo-workflows ",
        "upgrade --install argo-events ",
        "upgrade --install metaflow-argo-events ",
        f"gcloud iam service-accounts delete {LEGACY_GSA}",
    ]
    positions = [next(i for i, line in enumerate(lines) if part in line) for part in order]
    assert positions == sorted(positions)
    assert not any("airflow" in line for line in lines)
    assert "would write" in console.text
    assert not (tmp_path / "metaflowconfig").exists()


# ---------------------------------------------------------------------------------------
# Pieces


def test_the_repository_root_is_found_from_the_package() -> None:
    assert releases.repo_root() == ROOT
    assert releases.repo_root(ROOT / "lib" / "metaflow_gcp" / "services.py") == ROOT


def test_the_repository_root_is_a_clear_error_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="cannot find the charts/ and values/ folders"):
        releases.repo_root(tmp_path / "x.py")


def test_versions_without_an_exact_pin_are_refused(tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "versions.yaml").write_text(
        "argo-workflows: {repo: r, chart: c}\nargo-events: {repo: r, chart: c, version: '1'}\n"
        "airflow: {repo: r, chart: c, version: '1'}\n"
    )
    with pytest.raises(StackError, match="'argo-workflows' lacks version"):
        releases.load_versions(tmp_path)


def test_chart_checksum_changes_with_any_template_edit(tmp_path: Path) -> None:
    chart = tmp_path / "metaflow"
    shutil.copytree(ROOT / "charts" / "metaflow", chart)
    before = releases.chart_checksum(chart)
    assert releases.chart_checksum(chart) == before
    (chart / "templates" / "ui.yaml").write_text("# edited\n", encoding="utf-8")
    assert releases.chart_checksum(chart) != before


def test_set_keys_and_values_are_escaped_the_way_helm_parses_them() -> None:
    release = releases.Release(
        "r",
        "ns",
        "chart",
        "chart",
        "1",
        set_string=((("a", "iam.gke.io/x"), "v,w"),),
    )
    argv = release.argv()
    assert argv[argv.index("--set-string") + 1] == "a.iam\\.gke\\.io/x=v\\,w"
    assert helm_user_values(argv) == release.desired_values() == {"a": {"iam.gke.io/x": "v,w"}}
