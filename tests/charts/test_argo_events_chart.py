"""Specification of charts/metaflow-argo-events: the Argo Events objects Metaflow needs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.charts.conftest import (
    ARGO_EVENTS_CHART,
    VALUES_DIR,
    Rendered,
    Values,
    is_custom_resource,
    lint_chart,
    load_yaml,
    render_chart,
    schema_problem,
)

RELEASE = "metaflow-argo-events"
NAMESPACE = "metaflow"

CUSTOM: Values = {
    "eventBus": {"name": "mf-bus", "jetstreamVersion": "2.10.10", "replicas": 1},
    "webhook": {"eventSourceName": "mf-webhook", "eventName": "flow-event", "port": 12001},
    "sensorServiceAccount": "mf-sensor",
    "argoServer": {"serviceAccount": "argo-ui", "namespace": "argo-system"},
}
SCENARIOS: dict[str, Values | None] = {"defaults": None, "custom": CUSTOM}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ARGO_CRD_GROUP = "argoproj.io/v1alpha1"


def render(values: Values | None) -> Rendered:
    return render_chart(ARGO_EVENTS_CHART, values, release=RELEASE, namespace=NAMESPACE)


def effective(values: Values | None) -> Values:
    with helm_python.Chart.load(ARGO_EVENTS_CHART) as chart:
        result: Values = chart.merge_values(values or {})
    return result


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[Values, Rendered]:
    values = SCENARIOS[request.param]
    return effective(values), render(values)


@pytest.fixture(scope="module")
def defaults() -> Rendered:
    return render(None)


def one(rendered: Rendered, kind: str) -> dict[str, Any]:
    found = rendered.of_kind(kind)
    assert len(found) == 1
    return found[0]


# --- the chart as a whole -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chart_lints_without_warnings(name: str) -> None:
    assert lint_chart(ARGO_EVENTS_CHART, SCENARIOS[name], namespace=NAMESPACE) == []


def test_built_in_objects_are_valid_kubernetes(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    problems = [
        p for m in rendered.manifests if not is_custom_resource(m) and (p := schema_problem(m))
    ]
    assert problems == []


def test_custom_resources_have_the_fields_the_controller_requires(
    scenario: tuple[Values, Rendered],
) -> None:
    """No offline schema exists for Argo's CRDs, so check their shape by hand."""
    _, rendered = scenario
    custom = [m for m in rendered.manifests if is_custom_resource(m)]
    assert sorted(m["kind"] for m in custom) == ["EventBus", "EventSource"]
    for manifest in custom:
        assert manifest["apiVersion"] == ARGO_CRD_GROUP
        assert DNS_LABEL.match(manifest["metadata"]["name"])
        assert isinstance(manifest["spec"], dict)
        assert set(manifest) <= {"apiVersion", "kind", "metadata", "spec"}


def test_objects_are_namespaced_by_the_release_only(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for manifest in rendered.manifests:
        assert manifest["metadata"].get("namespace") in (None, NAMESPACE)


def test_every_object_carries_the_standard_labels(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for manifest in rendered.manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "metaflow-argo-events"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "metaflow"
        assert labels["helm.sh/chart"].startswith("metaflow-argo-events-")


def test_chart_creates_no_secret(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    assert rendered.of_kind("Secret") == []


# --- EventBus -------------------------------------------------------------------------------


def test_event_bus_is_a_pinned_jetstream_bus(scenario: tuple[Values, Rendered]) -> None:
    values, rendered = scenario
    bus = one(rendered, "EventBus")
    assert bus["metadata"]["name"] == values["eventBus"]["name"]
    jetstream = bus["spec"]["jetstream"]
    assert jetstream["version"] == values["eventBus"]["jetstreamVersion"]
    assert jetstream["version"] != "latest"
    assert set(bus["spec"]) == {"jetstream"}


def test_event_bus_version_is_offered_by_the_argo_events_controller() -> None:
    """The controller only starts buses whose version its config lists."""
    offered = {
        v["version"]
        for v in load_yaml(VALUES_DIR / "argo-events.yaml")["configs"]["jetstream"]["versions"]
    }
    assert effective(None)["eventBus"]["jetstreamVersion"] in offered


def test_event_bus_defaults_to_a_three_node_cluster(defaults: Rendered) -> None:
    jetstream = one(defaults, "EventBus")["spec"]["jetstream"]
    assert jetstream["replicas"] == 3
    assert "streamConfig" not in jetstream


def test_single_node_event_bus_lowers_stream_replication() -> None:
    jetstream = one(render(CUSTOM), "EventBus")["spec"]["jetstream"]
    assert jetstream["replicas"] == 1
    assert jetstream["streamConfig"].strip() == "replicas: 1"


@pytest.mark.parametrize("replicas", [0, 2])
def test_event_bus_sizes_the_controller_rejects_are_refused(replicas: int) -> None:
    with pytest.raises(helm_python.HelmError):
        render({"eventBus": {"replicas": replicas}})


def test_latest_jetstream_version_is_refused() -> None:
    with pytest.raises(helm_python.HelmError):
        render({"eventBus": {"jetstreamVersion": "latest"}})


def test_event_bus_pods_run_unprivileged(defaults: Rendered) -> None:
    jetstream = one(defaults, "EventBus")["spec"]["jetstream"]
    assert jetstream["securityContext"]["runAsNonRoot"] is True
    for template in ("containerTemplate", "reloaderContainerTemplate", "metricsContainerTemplate"):
        ctx = jetstream[template]["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
    assert jetstream["containerTemplate"]["resources"]["requests"]


# --- EventSource (webhook) --------------------------------------------------------------------


def test_webhook_event_source_listens_on_the_configured_port_and_endpoint(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    webhook = values["webhook"]
    source = one(rendered, "EventSource")
    assert source["metadata"]["name"] == webhook["eventSourceName"]
    assert source["spec"]["eventBusName"] == values["eventBus"]["name"]
    assert source["spec"]["webhook"] == {
        webhook["eventName"]: {
            "port": str(webhook["port"]),
            "endpoint": f"/{webhook['eventName']}",
            "method": "POST",
        }
    }


def test_webhook_is_exposed_through_a_service_on_the_same_port(
    scenario: tuple[Values, Rendered],
) -> None:
    """Without spec.service.ports the controller creates no Service at all."""
    values, rendered = scenario
    ports = one(rendered, "EventSource")["spec"]["service"]["ports"]
    port = values["webhook"]["port"]
    assert [(p["port"], p["targetPort"]) for p in ports] == [(port, port)]


def test_default_webhook_service_gets_the_name_metaflow_is_configured_with(
    defaults: Rendered,
) -> None:
    """The controller names the Service "<EventSource name>-eventsource-svc"."""
    source = one(defaults, "EventSource")
    assert f"{source['metadata']['name']}-eventsource-svc" == (
        "argo-events-webhook-eventsource-svc"
    )
    assert (
        "http://argo-events-webhook-eventsource-svc.metaflow:12000/metaflow-event" in defaults.notes
    )


def test_webhook_pod_runs_unprivileged(defaults: Rendered) -> None:
    template = one(defaults, "EventSource")["spec"]["template"]
    assert template["securityContext"]["runAsNonRoot"] is True
    ctx = template["container"]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["readOnlyRootFilesystem"] is True


# --- RBAC -------------------------------------------------------------------------------------


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_sensor_service_account_can_operate_workflows(scenario: tuple[Values, Rendered]) -> None:
    values, rendered = scenario
    account = values["sensorServiceAccount"]
    assert rendered.names("ServiceAccount") == {account}
    resources = ["workflows", "workflowtemplates", "cronworkflows", "clusterworkflowtemplates"]
    verbs = ["create", "get", "list", "watch", "patch", "update", "delete"]
    assert grants(rendered.get("Role", "operate-workflow-role")) == {
        ("argoproj.io", r, v) for r in resources for v in verbs
    }
    binding = rendered.get("RoleBinding", "operate-workflow-role-binding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "operate-workflow-role",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


# The plurals the pinned Argo Events CRDs register (argo-events chart 2.4.22, templates/crds):
# RBAC matches these names exactly, and the EventBus CRD's plural is "eventbus", not
# "eventbuses" (a rule naming "eventbuses" grants nothing).
EVENT_PLURALS = ("eventsources", "eventbus", "sensors")


def test_argo_server_account_can_view_event_objects(scenario: tuple[Values, Rendered]) -> None:
    values, rendered = scenario
    assert grants(rendered.get("Role", "view-events-role")) == {
        ("argoproj.io", r, v) for r in EVENT_PLURALS for v in ("get", "list", "watch")
    }
    binding = rendered.get("RoleBinding", "view-events-role-binding")
    assert binding["roleRef"]["name"] == "view-events-role"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": values["argoServer"]["serviceAccount"],
            "namespace": values["argoServer"]["namespace"],
        }
    ]


@pytest.mark.skipif(not os.environ.get("UPSTREAM_CHARTS_DIR"), reason="UPSTREAM_CHARTS_DIR not set")
def test_event_plurals_are_the_ones_the_pinned_argo_events_crds_register(
    versions: dict[str, dict[str, str]],
) -> None:
    """Checked against the CRDs themselves when the pinned chart is unpacked (see
    test_upstream_values.py for UPSTREAM_CHARTS_DIR)."""
    pin = versions["argo-events"]["version"]
    chart_dir = Path(os.environ["UPSTREAM_CHARTS_DIR"]) / f"argo-events-{pin}"
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked")
    upstream = render_chart(
        chart_dir,
        load_yaml(VALUES_DIR / "argo-events.yaml"),
        release="argo-events",
        namespace="argo-events",
    )
    registered = {
        crd["spec"]["names"]["kind"]: crd["spec"]["names"]["plural"]
        for crd in upstream.of_kind("CustomResourceDefinition")
    }
    wanted = {registered[kind] for kind in ("EventSource", "EventBus", "Sensor")}
    assert set(EVENT_PLURALS) == wanted


def test_view_events_binding_names_the_account_the_argo_chart_creates(defaults: Rendered) -> None:
    """The old template bound a service account that did not exist."""
    argo = load_yaml(VALUES_DIR / "argo-workflows.yaml")["server"]["serviceAccount"]
    subject = defaults.get("RoleBinding", "view-events-role-binding")["subjects"][0]
    assert argo["create"] is True
    assert subject == {
        "kind": "ServiceAccount",
        "name": argo["name"],
        "namespace": "argo",
    }


def test_no_role_grants_wildcards(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for role in rendered.of_kind("Role"):
        assert not any("*" in "".join(g) for g in grants(role))
    assert not rendered.of_kind("ClusterRole")
