"""Specification of the airflow namespace: charts/metaflow-airflow and values/airflow.yaml.

Airflow's metadata database lives on the stack's Cloud SQL instance behind a Cloud SQL Auth
Proxy that only Airflow's own pods may reach; Metaflow's step pods share the namespace but
not that path. The NetworkPolicies are judged by a small evaluator of Kubernetes'
NetworkPolicy rules (same-namespace peers, label selectors, ports), fed with the labels the
Apache Airflow chart and the KubernetesPodOperator put on their pods.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from metaflow_gcp import airflow_dags, airflow_db, releases, services
from metaflow_gcp.app import open_stack
from metaflow_gcp.kube_names import AIRFLOW_NS, Accounts
from tests.charts.conftest import (
    CHARTS_DIR,
    METAFLOW_CHART,
    REPO_ROOT,
    VALUES_DIR,
    Manifest,
    Rendered,
    Values,
    container,
    lint_chart,
    load_yaml,
    pod_labels,
    pod_spec,
    render_chart,
    schema_problem,
)
from tests.support.network_policy import admits, selects

CHART = CHARTS_DIR / "metaflow-airflow"
SETTINGS = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}
GENERATION = 3


@pytest.fixture(autouse=True)
def _private_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def airflow() -> Values:
    data: Values = load_yaml(VALUES_DIR / "airflow.yaml")
    return data


@pytest.fixture
def stack_values() -> Values:
    """The values services.up hands the chart for stack 'dev' (its real --set-string pairs)."""
    stack = open_stack(SETTINGS)
    pins = releases.load_versions(REPO_ROOT)
    release = releases.releases_for(stack, REPO_ROOT, pins, GENERATION)["metaflow-airflow"]
    assert release.namespace == AIRFLOW_NS
    return release.desired_values()


@pytest.fixture
def rendered(stack_values: Values) -> Rendered:
    return render_chart(CHART, stack_values, release="metaflow-airflow", namespace=AIRFLOW_NS)


def proxy(rendered: Rendered) -> Manifest:
    return rendered.get("Deployment", airflow_db.PROXY_SERVICE)


def airflow_pod(component: str) -> dict[str, str]:
    """Labels the Apache Airflow chart gives its component pods (release "airflow")."""
    return {"tier": "airflow", "component": component, "release": "airflow"}


# What a KubernetesPodOperator step pod of a Metaflow DAG carries: the operator's own labels
# (added after the task's) and Metaflow's.
STEP_POD = {
    "dag_id": "HelloFlow",
    "task_id": "start",
    "run_id": "scheduled__2026-12-01T0000000000-1a2b3c4d5",
    "try_number": "1",
    "kubernetes_pod_operator": "True",
    "airflow_version": "2.11.2",
    "airflow_kpo_in_cluster": "True",
    "app.kubernetes.io/name": "metaflow-task",
    "app.kubernetes.io/part-of": "metaflow",
}


# --- the chart as a whole -----------------------------------------------------------------


def test_every_manifest_is_valid_kubernetes(rendered: Rendered) -> None:
    assert rendered.manifests
    assert [p for m in rendered.manifests if (p := schema_problem(m))] == []


def test_helm_lint_strict_is_clean(stack_values: Values) -> None:
    assert lint_chart(CHART, stack_values, namespace=AIRFLOW_NS) == []
    assert lint_chart(CHART, None, namespace=AIRFLOW_NS) == []


def test_the_chart_renders_no_secret_and_no_rbac(rendered: Rendered) -> None:
    kinds = {m["kind"] for m in rendered.manifests}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "NetworkPolicy"}


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"database": {"instanceConnectionName": "not a connection name"}}, "does not match"),
        ({"images": {"cloudSqlProxy": {"tag": "latest"}}}, "tag"),
        ({"proxy": {"sidecar": True}}, "additional properties"),
        ({"serviceAccounts": {"steps": {"gcpServiceAccount": "me@gmail.com"}}}, "does not match"),
    ],
)
def test_bad_values_fail_the_render(override: Values, problem: str) -> None:
    with pytest.raises(Exception, match=f"(?i){problem}"):
        render_chart(CHART, override, release="metaflow-airflow", namespace=AIRFLOW_NS)


# --- the database proxy -------------------------------------------------------------------


def test_the_proxy_reaches_this_stacks_instance_over_private_ip_as_the_services_account(
    rendered: Rendered,
) -> None:
    spec = pod_spec(proxy(rendered))
    args = container(proxy(rendered), "cloud-sql-proxy")["args"]
    assert args[-1] == f"acme-ml-prod:us-west2:mf-dev-pg-{GENERATION}"
    assert "--private-ip" in args
    assert spec["serviceAccountName"] == Accounts.of(open_stack(SETTINGS).names).airflow_db
    account = rendered.get("ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "mf-dev-services@acme-ml-prod.iam.gserviceaccount.com"
    }


def test_the_proxy_listens_for_other_pods_on_the_port_airflows_url_names(
    rendered: Rendered,
) -> None:
    """As a shared Service the proxy must listen on the pod address, not its 127.0.0.1
    default; the Service is what Airflow's connection URL points at."""
    args = container(proxy(rendered), "cloud-sql-proxy")["args"]
    assert "--address=0.0.0.0" in args
    assert f"--port={airflow_db.PROXY_PORT}" in args
    service = rendered.get("Service", airflow_db.PROXY_SERVICE)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "postgres", "port": airflow_db.PROXY_PORT, "targetPort": "postgres"}
    ]
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(proxy(rendered)))
    url = airflow_db.connection_url(open_stack(SETTINGS).names, "x")
    assert f"@{airflow_db.PROXY_SERVICE}.{AIRFLOW_NS}:{airflow_db.PROXY_PORT}/airflow?" in url


def test_the_proxy_follows_the_metaflow_charts_proxy_conventions(rendered: Rendered) -> None:
    """Same image and tag, health checks on 0.0.0.0:9801 with startup and liveness probes,
    clean exit on SIGTERM, structured logs."""
    ours = container(proxy(rendered), "cloud-sql-proxy")
    metaflow = render_chart(METAFLOW_CHART, None, release="metaflow", namespace="metaflow")
    sidecar = container(metaflow.get("Deployment", "metadata-service"), "cloud-sql-proxy")
    assert ours["image"] == sidecar["image"]
    for flag in (
        "--structured-logs",
        "--exit-zero-on-sigterm",
        "--health-check",
        "--http-address=0.0.0.0",
        "--http-port=9801",
    ):
        assert flag in ours["args"] and flag in sidecar["args"], flag
    assert ours["startupProbe"]["httpGet"]["path"] == "/startup"
    assert ours["livenessProbe"]["httpGet"]["path"] == "/liveness"
    # A Service routes only to ready pods: readiness means the proxy can serve connections.
    assert ours["readinessProbe"]["httpGet"]["path"] == "/readiness"


def test_the_proxy_meets_pod_security_restricted(rendered: Rendered) -> None:
    spec = pod_spec(proxy(rendered))
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container(proxy(rendered), "cloud-sql-proxy")["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 65532
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    resources = container(proxy(rendered), "cloud-sql-proxy")["resources"]
    assert resources["requests"] and resources["limits"]["memory"]


# --- the step pods' account -----------------------------------------------------------------


def test_step_pods_get_the_steps_account_with_google_access_and_no_token(
    rendered: Rendered,
) -> None:
    names = open_stack(SETTINGS).names
    account = rendered.get("ServiceAccount", Accounts.of(names).steps)
    assert account["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": names.steps_sa}
    assert account["automountServiceAccountToken"] is False
    assert rendered.of_kind("Role") == rendered.of_kind("RoleBinding") == []


# --- network boundaries -----------------------------------------------------------------------


def test_ingress_is_denied_by_default(rendered: Rendered) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    deny = rendered.get("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for target in (airflow_pod("webserver"), airflow_pod("scheduler"), STEP_POD, {"a": "b"}):
        assert not admits(policies, STEP_POD, target, 8080), target


def test_only_airflows_own_components_reach_the_database_proxy(rendered: Rendered) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    target = pod_labels(proxy(rendered))
    for component in ("scheduler", "webserver", "run-airflow-migrations", "triggerer"):
        assert admits(policies, airflow_pod(component), target, airflow_db.PROXY_PORT), component
    assert not admits(policies, STEP_POD, target, airflow_db.PROXY_PORT)
    assert not admits(policies, airflow_pod("scheduler"), target, 9801)
    assert not admits(policies, {**airflow_pod("scheduler"), "release": "other"}, target, 5432)


def test_a_step_pod_dressed_as_the_scheduler_is_still_refused(rendered: Rendered) -> None:
    """A flow may set any labels on its pods, but the KubernetesPodOperator adds
    kubernetes_pod_operator=True after them, and the proxy refuses pods that carry it."""
    policies = rendered.of_kind("NetworkPolicy")
    disguised = {**STEP_POD, **airflow_pod("scheduler")}
    assert not admits(policies, disguised, pod_labels(proxy(rendered)), airflow_db.PROXY_PORT)


def test_no_peer_outside_the_airflow_namespace_is_let_in(rendered: Rendered) -> None:
    for policy in rendered.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), f"{policy['metadata']['name']} admits any source"
            assert all(set(peer) == {"podSelector"} for peer in rule["from"])


def test_the_webserver_reads_task_logs_from_the_scheduler_and_nobody_else(
    rendered: Rendered,
) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    scheduler = airflow_pod("scheduler")
    assert admits(policies, airflow_pod("webserver"), scheduler, 8793)
    assert admits(policies, airflow_pod("webserver"), airflow_pod("triggerer"), 8794)
    assert not admits(policies, STEP_POD, scheduler, 8793)
    assert not admits(policies, {**STEP_POD, **airflow_pod("webserver")}, scheduler, 8793)
    assert not admits(policies, airflow_pod("webserver"), scheduler, 8080)


def test_airflow_components_may_send_statsd_metrics_and_step_pods_may_not(
    rendered: Rendered,
) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    statsd = airflow_pod("statsd")
    assert admits(policies, airflow_pod("scheduler"), statsd, 9125, "UDP")
    assert not admits(policies, STEP_POD, statsd, 9125, "UDP")
    assert not admits(policies, airflow_pod("scheduler"), statsd, 9102)


def test_the_selectors_use_the_labels_the_dag_upload_finds_the_scheduler_by() -> None:
    wanted = dict(pair.split("=") for pair in airflow_dags.SCHEDULER_SELECTOR.split(","))
    assert wanted == airflow_pod("scheduler")


def test_the_history_migration_pod_may_reach_the_proxy(rendered: Rendered) -> None:
    pod = airflow_db.migration_pod(open_stack(SETTINGS).names)
    labels = pod["metadata"]["labels"]  # type: ignore[index]
    policies = rendered.of_kind("NetworkPolicy")
    assert admits(policies, labels, pod_labels(proxy(rendered)), airflow_db.PROXY_PORT)
    assert schema_problem(pod) is None  # type: ignore[arg-type]


# --- values/airflow.yaml ------------------------------------------------------------------------


def test_airflow_runs_the_last_airflow_2_release_on_the_newest_chart(
    airflow: Values, versions: dict[str, dict[str, str]]
) -> None:
    """Metaflow's generated DAGs are Airflow 2 code; chart 1.22.0 supports 2.11 and 3."""
    assert versions["airflow"]["version"] == "1.22.0"
    assert versions["airflow"]["airflowVersion"] == "2.11.2"
    assert airflow["airflowVersion"] == airflow["defaultAirflowTag"] == "2.11.2"


def test_airflow_has_no_bundled_postgres_and_no_unmaintained_image(airflow: Values) -> None:
    assert airflow["postgresql"] == {"enabled": False}

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for value in node for s in strings(value)]
        return [str(node)]

    assert not [s for s in strings(airflow) if "bitnami" in s.lower()]


def test_airflow_reads_its_database_url_from_the_secret_services_up_makes(
    airflow: Values,
) -> None:
    assert airflow["data"] == {"metadataSecretName": airflow_db.CONNECTION_SECRET}
    assert services.AIRFLOW_DB_SECRET == airflow_db.CONNECTION_SECRET


def test_the_chart_default_service_name_and_port_are_the_ones_the_url_uses() -> None:
    defaults = load_yaml(CHART / "values.yaml")
    assert defaults["proxy"]["serviceName"] == airflow_db.PROXY_SERVICE
    assert defaults["proxy"]["port"] == airflow_db.PROXY_PORT
    assert defaults["airflowRelease"] == "airflow"


def test_airflow_keeps_its_dag_volume_webserver_key_and_scheduler_account(airflow: Values) -> None:
    assert airflow["dags"]["persistence"] == {
        "enabled": True,
        "size": "1Gi",
        "accessMode": "ReadWriteOnce",
    }
    assert airflow["webserverSecretKeySecretName"] == services.AIRFLOW_SECRET
    assert airflow["scheduler"]["serviceAccount"] == {"create": True, "name": "airflow-scheduler"}
    assert airflow["webserver"]["defaultUser"] == {"enabled": False}


def test_airflows_own_network_policies_stay_off_ours_are_the_boundary(airflow: Values) -> None:
    """The chart's policies would admit the webserver from anywhere; ours replace them."""
    assert "networkPolicies" not in airflow


@pytest.mark.skipif(not os.environ.get("UPSTREAM_CHARTS_DIR"), reason="UPSTREAM_CHARTS_DIR not set")
def test_values_render_with_the_pinned_airflow_chart(
    airflow: Values, versions: dict[str, dict[str, str]]
) -> None:
    chart_dir = (
        Path(os.environ["UPSTREAM_CHARTS_DIR"]) / f"airflow-{versions['airflow']['version']}"
    )
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked (the Apache Airflow chart is not vendored)")
    rendered = render_chart(chart_dir, airflow, release="airflow", namespace=AIRFLOW_NS)
    scheduler = rendered.get("Deployment", "airflow-scheduler")
    assert selects({"matchLabels": airflow_pod("scheduler")}, pod_labels(scheduler))
    assert not rendered.of_kind("StatefulSet")  # no bundled Postgres
