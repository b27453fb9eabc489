"""teardown's first step: the cluster is emptied before it is deleted, or teardown stops.

Disks behind PersistentVolumeClaims (Airflow's DAGs and database) and load balancers behind
Services outlive a deleted GKE cluster and keep costing money, so the step uninstalls our
Helm releases and deletes our namespaces first. The conversation with gcloud, kubectl and
helm is played by pytest-subprocess; which tools exist is decided by a PATH of stubs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp import teardown
from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.graph import Outcome, Report, Step, run_steps
from tests.support.cluster import commands, helm_call, kubectl_call, machine
from tests.support.console import CapturedConsole, printed
from tests.support.stack import CONTEXT, SETTINGS

ENDPOINT = "34.1.2.3"
DESCRIBE = ["gcloud", "container", "clusters", "describe", "mf-dev", FakeProcess.any()]
HELM_LIST = helm_call("list", FakeProcess.any())
GET_NAMESPACES = kubectl_call("get", "namespaces", FakeProcess.any())
GET_LEGACY_CLAIM = kubectl_call("get", "persistentvolumeclaim", "data-airflow-postgresql-0",
                                FakeProcess.any(), namespace="airflow")
GET_VOLUME = kubectl_call("get", "persistentvolume", "pvc-123", FakeProcess.any())
NO_SUCH_CLAIM = 'Error from server (NotFound): persistentvolumeclaims "data-airflow-postgresql-0"' \
    " not found\n"


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def make_stack(
    tmp_path: Path, *, tools: tuple[str, ...], context: bool = True, server: str = ENDPOINT
) -> Stack:
    return open_stack(
        SETTINGS,
        yes=True,
        env=machine(tmp_path, tools, context=CONTEXT if context else None,
                    server=f"https://{server}"),
        console=CapturedConsole(width=300),
    )


def only_releases(stack: Stack) -> Report:
    """The releases step alone."""
    work = teardown.Teardown(stack, delete_data=False)
    return run_steps(
        [s for s in work.steps() if s.name == "releases"], console=stack.console, title="t"
    )


def empty_then_delete(stack: Stack) -> Report:
    """The releases step and the cluster delete that waits for it."""
    work = teardown.Teardown(stack, delete_data=False)
    steps = [s for s in work.steps() if s.name in ("releases", "gke")]
    return run_steps(
        [Step(s.name, s.title, s.action, tuple(n for n in s.needs if n == "releases"))
         for s in steps],
        console=stack.console,
        title="teardown",
    )


def cluster_is_running(fp: FakeProcess) -> None:
    fp.register(
        DESCRIBE, stdout=json.dumps({"name": "mf-dev", "status": "RUNNING", "endpoint": ENDPOINT})
    )


def namespaces(*names: str) -> str:
    return json.dumps({"items": [{"metadata": {"name": n}} for n in names]})


def test_helm_uninstalls_our_releases_then_our_namespaces_go(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    listed = [
        {"name": "metaflow", "namespace": "metaflow"},
        {"name": "airflow", "namespace": "airflow"},
        {"name": "someone-elses", "namespace": "default"},
    ]
    fp.register(HELM_LIST, stdout=json.dumps(listed))
    fp.register(GET_NAMESPACES, stdout=namespaces("default", "metaflow", "airflow"))
    fp.register(GET_LEGACY_CLAIM, returncode=1, stderr=NO_SUCH_CLAIM)
    fp.register(["helm", FakeProcess.any()], occurrences=2)
    fp.register(["kubectl", FakeProcess.any()], occurrences=2)

    report = only_releases(stack)

    assert report.ok and report.outcomes()["releases"] is Outcome.DELETED
    changes = [c[2:4] for c in commands(fp, "helm") + commands(fp, "kubectl")
               if c[2] in ("uninstall", "delete")]
    assert changes == [
        ["uninstall", "airflow"],
        ["uninstall", "metaflow"],
        ["delete", "namespace"],
        ["delete", "namespace"],
    ]
    deleted = [c[4] for c in commands(fp, "kubectl") if c[2] == "delete"]
    assert deleted == ["airflow", "metaflow"], "only ours, and only those that exist"


def test_without_helm_deleting_the_namespaces_empties_the_cluster(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl"))
    cluster_is_running(fp)
    fp.register(GET_NAMESPACES, stdout=namespaces("airflow", "argo", "metaflow"))
    fp.register(GET_LEGACY_CLAIM, returncode=1, stderr=NO_SUCH_CLAIM)
    fp.register(["kubectl", FakeProcess.any()], occurrences=3)

    report = only_releases(stack)

    assert report.ok and report.outcomes()["releases"] is Outcome.DELETED
    assert commands(fp, "helm") == []
    assert [c[4] for c in commands(fp, "kubectl") if c[2] == "delete"] == [
        "airflow",
        "argo",
        "metaflow",
    ]


def test_without_kubectl_teardown_stops_before_the_cluster_is_deleted(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "helm"))
    cluster_is_running(fp)

    report = empty_then_delete(stack)

    assert not report.ok
    failed = report.failed[0]
    assert failed.step.name == "releases"
    assert "'kubectl' was not found on PATH" in str(failed.error)
    assert report.outcomes()["gke"] is None, "the cluster is not deleted with its disks inside"
    assert not any("delete" in c for c in commands(fp, "gcloud"))


def test_a_machine_without_the_clusters_credentials_fetches_them_first(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"), context=False)
    cluster_is_running(fp)
    fp.register(["gcloud", "container", "clusters", "get-credentials", FakeProcess.any()])
    fp.register(HELM_LIST, stdout="[]")
    fp.register(GET_NAMESPACES, stdout=namespaces("default"))

    report = only_releases(stack)

    assert report.outcomes()["releases"] is Outcome.GONE, "nothing of ours was on it"
    programs = [[str(a) for a in c][:4] for c in fp.calls]
    assert programs.index(["gcloud", "container", "clusters", "get-credentials"]) < (
        programs.index(["helm", f"--kube-context={CONTEXT}", "list", "--all-namespaces"])
    )


def test_a_context_left_by_an_earlier_cluster_of_that_name_is_replaced_first(
    fp: FakeProcess, tmp_path: Path
) -> None:
    """Through a stale context helm would find nothing and the cluster would go with its disks."""
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"), server="34.9.9.9")
    cluster_is_running(fp)
    fp.register(["gcloud", "container", "clusters", "get-credentials", FakeProcess.any()])
    fp.register(HELM_LIST, stdout="[]")
    fp.register(GET_NAMESPACES, stdout=namespaces("default"))

    only_releases(stack)

    assert fp.call_count(["gcloud", "container", "clusters", "get-credentials", FakeProcess.any()])


def test_an_unreachable_cluster_is_skipped_with_a_word_about_its_disks(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    fp.register(
        HELM_LIST,
        returncode=1,
        stderr="Error: Kubernetes cluster unreachable: Get \"https://34.1.2.3/version\": "
        "dial tcp 34.1.2.3:443: connect: connection refused\n",
    )

    report = only_releases(stack)

    assert report.outcomes()["releases"] is Outcome.SKIPPED
    assert "gcloud compute disks list --filter=name~^pvc- --project=acme-ml-prod" in (
        printed(stack.console).replace("\n", "")
    )


def helm_has_no_auth_plugin(fp: FakeProcess) -> None:
    """helm reaches for GKE credentials and the machine lacks gke-gcloud-auth-plugin."""
    fp.register(
        HELM_LIST,
        returncode=1,
        stderr="Error: getting credentials: exec: executable gke-gcloud-auth-plugin not found\n",
    )


def test_a_missing_auth_plugin_stops_teardown_instead_of_skipping(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    helm_has_no_auth_plugin(fp)

    report = empty_then_delete(stack)

    assert report.failed and report.failed[0].step.name == "releases"
    assert report.outcomes()["gke"] is None


def test_a_cluster_that_refuses_to_be_read_stops_teardown_before_it_is_deleted(
    fp: FakeProcess, tmp_path: Path
) -> None:
    """Only silence is passed over: a refusal would leave the disks behind unannounced."""
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    fp.register(HELM_LIST, stdout="[]")
    fp.register(
        GET_NAMESPACES,
        returncode=1,
        stderr='Error from server (Forbidden): namespaces is forbidden: User "ops@example.com" '
        'cannot list resource "namespaces" in API group "" at the cluster scope\n',
    )

    report = empty_then_delete(stack)

    assert report.failed and report.failed[0].step.name == "releases"
    assert "forbidden" in str(report.failed[0].error).lower()
    assert report.outcomes()["gke"] is None
    assert not fp.call_count(["gcloud", "container", "clusters", "delete", FakeProcess.any()])


def test_cloud_sql_is_listed_while_the_cluster_empties_but_not_deleted_when_that_fails(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    helm_has_no_auth_plugin(fp)
    listed = json.dumps([{"name": "mf-dev-pg-0", "settings": {}}])
    fp.register(["gcloud", "sql", "instances", "list", FakeProcess.any()], stdout=listed)
    steps = [s for s in teardown.Teardown(stack, delete_data=False).steps()
             if s.name in ("releases", "sql")]  # fmt: skip

    report = run_steps(steps, console=stack.console, title="teardown")

    assert report.failed and report.failed[0].step.name == "releases"
    assert report.outcomes()["sql"] is None
    assert fp.call_count(["gcloud", "sql", "instances", "list", FakeProcess.any()]) == 1
    assert not fp.call_count(["gcloud", "sql", "instances", "patch", FakeProcess.any()])
    assert not fp.call_count(["gcloud", "sql", "instances", "delete", FakeProcess.any()])


def test_a_cluster_that_is_gone_is_not_contacted(fp: FakeProcess, tmp_path: Path) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    fp.register(
        DESCRIBE,
        returncode=1,
        stderr="ERROR: (gcloud.container.clusters.describe) ResponseError: code=404, "
        "message=Not found: projects/acme-ml-prod/zones/us-west2-a/clusters/mf-dev.\n",
    )

    report = only_releases(stack)

    assert report.outcomes()["releases"] is Outcome.GONE
    assert commands(fp, "helm") == [] and commands(fp, "kubectl") == []


def legacy_airflow_volume(fp: FakeProcess, policy: str) -> None:
    """An Airflow installed by an earlier version: its history in the bundled Postgres."""
    cluster_is_running(fp)
    fp.register(HELM_LIST, stdout=json.dumps([{"name": "airflow", "namespace": "airflow"}]))
    fp.register(GET_NAMESPACES, stdout=namespaces("airflow", "metaflow"))
    fp.register(GET_LEGACY_CLAIM, stdout=json.dumps({"spec": {"volumeName": "pvc-123"}}))
    fp.register(GET_VOLUME, stdout=json.dumps({"spec": {"persistentVolumeReclaimPolicy": policy}}))


def test_airflows_history_in_the_old_bundled_postgres_stops_teardown_with_how_to_keep_it(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    legacy_airflow_volume(fp, "Delete")

    report = empty_then_delete(stack)

    assert report.failed and report.failed[0].step.name == "releases"
    message = str(report.failed[0].error)
    assert "\n" not in message
    assert "data-airflow-postgresql-0" in message and "--delete-data" in message
    assert f"kubectl --context={CONTEXT} patch pv pvc-123" in message
    assert '"persistentVolumeReclaimPolicy":"Retain"' in message
    assert report.outcomes()["gke"] is None, "the cluster, and the volume in it, stay"
    uninstalls = [c for c in commands(fp, "helm") if "uninstall" in c]
    assert uninstalls == [] and not [c for c in commands(fp, "kubectl") if "delete" in c]


def test_a_retained_old_airflow_volume_outlives_the_namespace_so_teardown_goes_on(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    legacy_airflow_volume(fp, "Retain")
    fp.register(["helm", FakeProcess.any()])
    fp.register(["kubectl", FakeProcess.any()], occurrences=2)

    report = only_releases(stack)

    assert report.ok and report.outcomes()["releases"] is Outcome.DELETED


def test_with_delete_data_the_old_airflow_volume_is_not_even_looked_at(
    fp: FakeProcess, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, tools=("gcloud", "kubectl", "helm"))
    cluster_is_running(fp)
    fp.register(HELM_LIST, stdout="[]")
    fp.register(GET_NAMESPACES, stdout=namespaces("airflow"))
    fp.register(["kubectl", FakeProcess.any()])
    work = teardown.Teardown(stack, delete_data=True)

    report = run_steps([s for s in work.steps() if s.name == "releases"], console=stack.console,
                       title="t")

    assert report.ok
    assert not fp.call_count(GET_LEGACY_CLAIM)
