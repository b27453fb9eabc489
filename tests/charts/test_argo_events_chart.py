"""Specification of charts/metaflow-argo-events: the Argo Events objects Metaflow needs."""

from __future__ import annotations

import re
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
    "eventBus": {
        "name": "mf-bus",
        "jetstreamVersion": "2.10.29",
        "replicas": 1,
        "persistence": {"storageClassName": "", "volumeSize": "20Gi"},
    },
    "webhook": {
        "eventSourceName": "mf-webhook",
        "eventName": "flow-event",
        "port": 12001,
        "clientPodLabels": {"team": "ml", "app.kubernetes.io/name": "metaflow-task"},
    },
    "sensorServiceAccount": "mf-sensor",
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


def jetstream_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_event_bus_runs_a_nats_release_without_known_cves(
    scenario: tuple[Values, Rendered],
) -> None:
    """NATS 2.10.10 (the chart's "latest") has CVE-2025-30215, fixed in 2.10.27."""
    _, rendered = scenario
    version = one(rendered, "EventBus")["spec"]["jetstream"]["version"]
    assert jetstream_version(version) >= (2, 10, 27)


def test_event_bus_keeps_its_streams_on_gke_persistent_disks(defaults: Rendered) -> None:
    """Unconsumed events survive a NATS pod moving to another node."""
    persistence = one(defaults, "EventBus")["spec"]["jetstream"]["persistence"]
    assert persistence == {
        "storageClassName": "standard-rwo",
        "accessMode": "ReadWriteOnce",
        "volumeSize": "5Gi",
    }


def test_event_bus_disk_can_use_the_cluster_default_class_and_another_size() -> None:
    persistence = one(render(CUSTOM), "EventBus")["spec"]["jetstream"]["persistence"]
    assert persistence == {"accessMode": "ReadWriteOnce", "volumeSize": "20Gi"}


@pytest.mark.parametrize(
    "persistence",
    [None, {"volumeSize": ""}, {"volumeSize": "5GB"}, {"volumeSize": "0Gi"}],
    ids=["none", "empty-size", "decimal-unit", "zero"],
)
def test_event_bus_without_a_valid_disk_is_refused(persistence: Values | None) -> None:
    with pytest.raises(helm_python.HelmError):
        render({"eventBus": {"persistence": persistence}})


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


def test_no_role_grants_wildcards(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for role in rendered.of_kind("Role"):
        assert not any("*" in "".join(g) for g in grants(role))
    assert not rendered.of_kind("ClusterRole")


def test_only_the_sensor_account_is_bound_and_only_here(scenario: tuple[Values, Rendered]) -> None:
    """argo-server runs in client auth mode: it reads events as the caller, so this chart no
    longer grants argo-server's own account anything."""
    values, rendered = scenario
    subjects = [s for b in rendered.of_kind("RoleBinding") for s in b["subjects"]]
    assert subjects == [
        {"kind": "ServiceAccount", "name": values["sensorServiceAccount"], "namespace": NAMESPACE}
    ]


# --- NetworkPolicies --------------------------------------------------------------------------

# Pods as the Argo Events controller (v1.9) and Metaflow label them.
BUS_POD = {"controller": "eventbus-controller", "eventbus-name": "default", "owner-name": "default"}
WEBHOOK_POD = {
    "controller": "eventsource-controller",
    "eventsource-name": "argo-events-webhook",
    "owner-name": "argo-events-webhook",
}
SENSOR_POD = {"controller": "sensor-controller", "sensor-name": "myflow", "owner-name": "myflow"}
TASK_POD = {"app.kubernetes.io/name": "metaflow-task", "app.kubernetes.io/part-of": "metaflow"}
SERVICE_POD = {"app.kubernetes.io/name": "metadata-service"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def isolating(rendered: Rendered, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        p["spec"]
        for p in rendered.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]


def admits(
    rendered: Rendered, *, to: dict[str, str], port: int, src: dict[str, str], same_ns: bool = True
) -> bool:
    """NetworkPolicy ingress semantics for one connection: the policies selecting the target
    pod, any rule whose peer and port match lets it in. A podSelector peer without a
    namespaceSelector means "pods of the policy's own namespace"."""
    specs = isolating(rendered, to)
    assert specs, f"no policy isolates {to}"
    for spec in specs:
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []):
                assert set(peer) == {"podSelector"}, "only same-namespace pod peers are expected"
                if same_ns and selects(peer["podSelector"], src):
                    return True
    return False


def test_every_pod_the_controller_makes_here_is_isolated_by_this_chart(defaults: Rendered) -> None:
    """Each of them is covered even without the metaflow chart's default deny."""
    for pod in (BUS_POD, WEBHOOK_POD, SENSOR_POD):
        assert isolating(defaults, pod), pod
    assert not isolating(defaults, TASK_POD), "step pods are the metaflow chart's business"


def test_policies_are_namespaced_by_the_release(defaults: Rendered) -> None:
    names = defaults.names("NetworkPolicy")
    assert names == {"eventbus-default", "eventsource-argo-events-webhook", "sensors"}
    for policy in defaults.of_kind("NetworkPolicy"):
        assert "namespace" not in policy["metadata"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("port", [4222, 6222])
def test_event_bus_servers_reach_each_other(defaults: Rendered, port: int) -> None:
    assert admits(defaults, to=BUS_POD, port=port, src=BUS_POD)


@pytest.mark.parametrize("client", [WEBHOOK_POD, SENSOR_POD], ids=["eventsource", "sensor"])
def test_event_sources_and_sensors_are_event_bus_clients(
    defaults: Rendered, client: dict[str, str]
) -> None:
    assert admits(defaults, to=BUS_POD, port=4222, src=client)
    assert not admits(defaults, to=BUS_POD, port=6222, src=client)


@pytest.mark.parametrize("src", [TASK_POD, SERVICE_POD], ids=["task", "other"])
def test_nobody_else_reaches_the_event_bus(defaults: Rendered, src: dict[str, str]) -> None:
    for port in (4222, 6222, 8222, 7777):
        assert not admits(defaults, to=BUS_POD, port=port, src=src)


def test_webhook_takes_events_from_metaflow_task_pods_of_this_namespace(
    defaults: Rendered,
) -> None:
    assert admits(defaults, to=WEBHOOK_POD, port=12000, src=TASK_POD)
    assert not admits(defaults, to=WEBHOOK_POD, port=12000, src=TASK_POD, same_ns=False)
    assert not admits(defaults, to=WEBHOOK_POD, port=12001, src=TASK_POD)


@pytest.mark.parametrize("src", [SENSOR_POD, BUS_POD, SERVICE_POD, {}], ids=str)
def test_webhook_refuses_every_other_pod(defaults: Rendered, src: dict[str, str]) -> None:
    assert not admits(defaults, to=WEBHOOK_POD, port=12000, src=src)


def test_webhook_policy_follows_the_configured_source_port_and_labels() -> None:
    rendered = render(CUSTOM)
    webhook = {"controller": "eventsource-controller", "eventsource-name": "mf-webhook"}
    ml_task = {"team": "ml", "app.kubernetes.io/name": "metaflow-task"}
    assert admits(rendered, to=webhook, port=12001, src=ml_task)
    assert not admits(rendered, to=webhook, port=12001, src=TASK_POD)
    assert not isolating(rendered, WEBHOOK_POD)


def test_webhook_clients_are_the_pods_metaflow_labels_as_tasks() -> None:
    """Metaflow labels every task pod app.kubernetes.io/name=metaflow-task, under Argo
    (plugins/argo/argo_workflows.py) and with --with kubernetes (plugins/kubernetes)."""
    assert effective(None)["webhook"]["clientPodLabels"] == {
        "app.kubernetes.io/name": "metaflow-task"
    }


def test_sensors_take_no_connections(defaults: Rendered) -> None:
    [spec] = isolating(defaults, SENSOR_POD)
    assert "ingress" not in spec


@pytest.mark.parametrize("labels", [None, {"app.kubernetes.io/name": ""}], ids=["none", "empty"])
def test_webhook_without_a_client_selector_is_refused(labels: dict[str, str] | None) -> None:
    """No selector, or an empty one, would admit every pod of the namespace."""
    with pytest.raises(helm_python.HelmError):
        render({"webhook": {"clientPodLabels": labels}})
