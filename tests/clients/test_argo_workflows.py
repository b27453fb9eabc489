"""`argo-workflows create` with the stack's config compiles to objects our cluster accepts and runs.

Metaflow compiles a flow with @kubernetes, @schedule and @trigger into a WorkflowTemplate, a
CronWorkflow and a Sensor. Each must be valid for the CRDs of the pinned Argo charts, and
every name in them (namespace, service accounts, event bus, event source, webhook Service,
port and endpoint, metadata service) must be one our charts install, with RBAC that allows
what the objects do. Names are compared with kube_names and with the rendered charts, never
re-typed.

Two runs, as a user types them:
- `python flow.py argo-workflows create --only-json` prints the WorkflowTemplate and never
  contacts a cluster (Metaflow skips the token lookup and the deploy; there is no kubeconfig
  at all in the test's HOME);
- `python flow.py argo-workflows create` deploys to a recording stand-in of the Kubernetes
  API (tests/clients/kube_api.py), the only way to see the CronWorkflow and the Sensor: the
  JSON output holds the WorkflowTemplate alone. METAFLOW_SERVICE_VERSION_CHECK=false for that
  run only: the check asks the metadata service, which is not running here, for its version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from metaflow_gcp import kube_names
from tests.clients import argo
from tests.clients.cluster import Installed, workflow_default_account
from tests.clients.conftest import ClientStack, MetaflowCli
from tests.clients.crds import Validator
from tests.clients.kube_api import RecordingKubeApi

pytestmark = pytest.mark.clients

Manifest = dict[str, Any]
FLOW = "nightly_flow.py"
WORKFLOW = "nightlyflow"  # Metaflow's name for NightlyFlow on Argo (lower case)
ARGO = "argoproj.io"


@pytest.fixture(scope="module")
def only_json(metaflow: MetaflowCli, flow_dir: Path) -> Manifest:
    assert "KUBECONFIG" not in metaflow.env
    assert not (Path(metaflow.env["HOME"]) / ".kube").exists()
    result = metaflow.run(flow_dir / FLOW, "argo-workflows", "create", "--only-json")
    return argo.parse_only_json(result.stdout)


@pytest.fixture(scope="module")
def deployed(
    metaflow: MetaflowCli, flow_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> RecordingKubeApi:
    with RecordingKubeApi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        metaflow.run(
            flow_dir / FLOW,
            "argo-workflows",
            "create",
            extra_env={"KUBECONFIG": str(kubeconfig), "METAFLOW_SERVICE_VERSION_CHECK": "false"},
        )
    return api


@pytest.fixture(scope="module")
def sent(deployed: RecordingKubeApi) -> dict[str, Manifest]:
    return {kind: s.body for kind, s in deployed.kinds().items()}


@pytest.fixture(scope="module")
def sensor(sent: dict[str, Manifest]) -> Manifest:
    return sent["Sensor"]


def namespace_of(deployed: RecordingKubeApi, kind: str) -> str:
    return deployed.kinds()[kind].namespace


def step_account(client_stack: ClientStack) -> tuple[str, str]:
    config = client_stack.config()
    return config["METAFLOW_KUBERNETES_NAMESPACE"], config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]


# -- what is emitted -----------------------------------------------------------------------


def test_only_json_prints_the_workflow_template_for_the_metaflow_namespace(
    only_json: Manifest,
) -> None:
    assert only_json["kind"] == "WorkflowTemplate"
    assert only_json["metadata"]["name"] == WORKFLOW
    assert only_json["metadata"]["namespace"] == kube_names.METAFLOW_NS


def test_deploying_creates_a_template_a_cron_workflow_and_a_sensor_in_the_metaflow_namespace(
    deployed: RecordingKubeApi,
) -> None:
    assert [(s.method, s.group, s.plural, s.namespace) for s in deployed.sent] == [
        ("POST", ARGO, "workflowtemplates", kube_names.METAFLOW_NS),
        ("POST", ARGO, "cronworkflows", kube_names.METAFLOW_NS),
        ("POST", ARGO, "sensors", kube_names.METAFLOW_NS),
    ]


def test_the_deployed_template_is_the_one_only_json_prints(
    only_json: Manifest, sent: dict[str, Manifest]
) -> None:
    """Two compiles differ only in the production token and timestamps, not in their pods."""

    def shape(workflow_template: Manifest) -> list[tuple[str, str | None, str | None]]:
        return [
            (t["name"], t.get("serviceAccountName"), (t.get("container") or {}).get("image"))
            for t in argo.templates(workflow_template)
        ]

    assert shape(sent["WorkflowTemplate"]) == shape(only_json)


def test_the_cron_workflow_starts_the_template_on_the_flows_schedule(
    sent: dict[str, Manifest],
) -> None:
    cron = sent["CronWorkflow"]["spec"]
    assert cron["workflowSpec"]["workflowTemplateRef"] == {"name": WORKFLOW}
    assert cron["schedule"].split()[:2] == ["0", "0"]  # @schedule(daily=True): midnight


@pytest.mark.parametrize("kind", ["WorkflowTemplate", "CronWorkflow", "Sensor"])
def test_every_object_is_valid_for_the_pinned_argo_crds(
    kind: str, sent: dict[str, Manifest], only_json: Manifest, argo_crds: Validator
) -> None:
    """Argo Workflows' full CRDs check every field. The pinned Argo Events CRDs give the
    Sensor's spec no schema (x-kubernetes-preserve-unknown-fields): for it only group,
    version, kind and scope are checked here, its names by the tests further down."""
    objects = [sent[kind], only_json] if kind == "WorkflowTemplate" else [sent[kind]]
    for obj in objects:
        assert argo_crds.crd_for(obj).scope == "Namespaced"
        assert argo_crds.problems(obj) == []


def test_the_crd_check_refuses_unknown_fields_and_wrong_types(
    only_json: Manifest, argo_crds: Validator
) -> None:
    """The validator is strict enough to catch what the API server or controller would not take."""
    broken: Manifest = {**only_json, "spec": {**only_json["spec"], "parallelism": "many"}}
    broken["spec"]["noSuchField"] = True
    problems = argo_crds.problems(broken)
    assert any("parallelism" in p for p in problems)
    assert any("noSuchField" in p for p in problems)


# -- who runs it, and may it ---------------------------------------------------------------


def test_step_pods_run_as_the_account_of_the_config_which_our_chart_creates(
    only_json: Manifest, client_stack: ClientStack, installed: Installed
) -> None:
    namespace, account = step_account(client_stack)
    assert namespace == only_json["metadata"]["namespace"]
    for t in argo.container_templates(only_json):
        assert t["serviceAccountName"] == account, t["name"]
    assert installed.find("ServiceAccount", account, namespace) is not None


def test_pods_that_name_no_account_run_as_argos_default_which_our_chart_creates(
    only_json: Manifest, client_stack: ClientStack, installed: Installed
) -> None:
    """Argo runs templates without an account (exit hooks, resource steps) as its default."""
    nameless = [t["name"] for t in argo.pod_templates(only_json) if not t.get("serviceAccountName")]
    default = only_json["spec"].get("serviceAccountName") or workflow_default_account(
        client_stack.stack
    )
    if nameless:
        assert default, f"templates {nameless} would run as the namespace's `default` account"
    assert default == step_account(client_stack)[1]
    assert installed.find("ServiceAccount", default, kube_names.METAFLOW_NS) is not None


@pytest.mark.parametrize("verb", ["create", "patch"])
def test_the_steps_account_may_report_task_results_to_argo(
    verb: str, client_stack: ClientStack, installed: Installed
) -> None:
    """Argo's executor in every step pod writes WorkflowTaskResults as the pod's account."""
    namespace, account = step_account(client_stack)
    assert installed.allows((namespace, account), verb, ARGO, "workflowtaskresults", namespace)


def test_step_pods_run_as_the_stacks_own_steps_account(
    only_json: Manifest, client_stack: ClientStack
) -> None:
    """The design: user code runs as mf-<stack>-steps, never as a name two stacks share."""
    accounts = {t["serviceAccountName"] for t in argo.container_templates(only_json)}
    assert accounts == {client_stack.accounts.steps}


def test_the_sensor_runs_as_our_sensor_account_which_may_start_the_workflow(
    sensor: Manifest, deployed: RecordingKubeApi, installed: Installed
) -> None:
    namespace = namespace_of(deployed, "Sensor")
    account = sensor["spec"]["template"]["serviceAccountName"]
    assert account == kube_names.SENSOR_KSA
    assert installed.find("ServiceAccount", account, namespace) is not None
    for trigger in sensor["spec"]["triggers"]:
        k8s = trigger["template"]["k8s"]
        created = k8s["source"]["resource"]
        assert (k8s["operation"], created["kind"]) == ("create", "Workflow")
        target = created["metadata"]["namespace"]
        assert target == kube_names.METAFLOW_NS
        assert installed.allows((namespace, account), "create", ARGO, "workflows", target)


def test_nothing_emitted_names_the_services_namespace_or_account(
    only_json: Manifest, sent: dict[str, Manifest], client_stack: ClientStack
) -> None:
    """User code stays out of metaflow-services and never acts as the services' account.

    (The CronWorkflow names no namespace: it lives where it is created, see above.)
    """
    for obj in [only_json, *sent.values()]:
        namespaces, accounts = argo.names_used(obj)
        assert namespaces <= {kube_names.METAFLOW_NS}, obj["kind"]
        assert client_stack.accounts.services not in accounts, obj["kind"]


# -- events ----------------------------------------------------------------------------------


def test_the_sensor_listens_on_the_event_bus_our_chart_installs_beside_it(
    sensor: Manifest, deployed: RecordingKubeApi, installed: Installed
) -> None:
    namespace = namespace_of(deployed, "Sensor")
    bus = sensor["spec"]["eventBusName"]
    assert bus == kube_names.EVENT_BUS
    assert installed.find("EventBus", bus, namespace) is not None


def test_the_sensor_waits_for_the_webhook_event_of_our_event_source(
    sensor: Manifest, deployed: RecordingKubeApi, installed: Installed
) -> None:
    namespace = namespace_of(deployed, "Sensor")
    for dependency in sensor["spec"]["dependencies"]:
        assert dependency["eventSourceName"] == kube_names.EVENT_SOURCE
        assert dependency["eventName"] == kube_names.EVENT_NAME
        source = installed.find("EventSource", dependency["eventSourceName"], namespace)
        assert source is not None, f"no EventSource {dependency['eventSourceName']} in {namespace}"
        assert dependency["eventName"] in source.manifest["spec"]["webhook"]


def test_steps_publish_events_to_the_webhook_service_port_and_endpoint_we_install(
    only_json: Manifest, installed: Installed
) -> None:
    """@trigger flows are started by events the steps (and users) post to the webhook."""
    urls = {
        argo.env(t["container"]).get("METAFLOW_ARGO_EVENTS_WEBHOOK_URL")
        for t in argo.container_templates(only_json)
    } - {None}
    assert len(urls) == 1, urls
    url = urlsplit(urls.pop() or "")
    service, namespace = (url.hostname or "").removesuffix(".svc.cluster.local").split(".")
    source = installed.find("EventSource", kube_names.EVENT_SOURCE, namespace)
    assert source is not None, f"no EventSource {kube_names.EVENT_SOURCE} in {namespace}"
    # The Argo Events controller names an EventSource's Service <name>-eventsource-svc.
    assert service == f"{source.name}-eventsource-svc" == kube_names.EVENT_SOURCE_SERVICE
    webhook = source.manifest["spec"]["webhook"][kube_names.EVENT_NAME]
    assert url.port == int(webhook["port"]) == kube_names.WEBHOOK_PORT
    assert url.port in {p["port"] for p in source.manifest["spec"]["service"]["ports"]}
    assert url.path == webhook["endpoint"]
    assert webhook["method"] == "POST"


def test_steps_reach_the_metadata_service_by_the_name_our_chart_gives_it(
    only_json: Manifest, installed: Installed
) -> None:
    urls = {
        argo.env(t["container"]).get("METAFLOW_SERVICE_URL")
        for t in argo.container_templates(only_json)
        if t["name"] in {"start", "end"}
    }
    assert len(urls) == 1, urls
    url = urls.pop()
    assert url is not None
    service, port, _ = installed.service_for_url(url)
    assert service is not None, f"{url} names no Service our charts install"
    assert service.name == kube_names.METADATA_SERVICE
    assert port == kube_names.METADATA_PORT
    assert port in {p["port"] for p in service.manifest["spec"]["ports"]}
