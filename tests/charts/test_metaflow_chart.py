"""Specification of charts/metaflow: what the Metaflow services look like on GKE."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import pytest

from metaflow_gcp import kube_names
from tests.charts.conftest import (
    METAFLOW_CHART,
    Rendered,
    Values,
    all_containers,
    container,
    containers,
    env_of,
    is_custom_resource,
    lint_chart,
    merged,
    pod_labels,
    pod_spec,
    render_chart,
    schema_problem,
)

RELEASE = "metaflow"
NAMESPACE = "metaflow"  # where the release record lives, and user code runs
SERVICES_NS = "metaflow-services"

STEPS_KSA = "mf-dev-steps"
SERVICES_KSA = "mf-dev-services"
STEPS_GSA = "mf-dev-steps@acme-ml.iam.gserviceaccount.com"
SERVICES_GSA = "mf-dev-services@acme-ml.iam.gserviceaccount.com"
CONNECTION_NAME = "acme-ml:europe-west4:psql-metaflow-3f9a1c2e"

# What the task runner passes for a real stack (deliberately different from the defaults).
STACK_VALUES: Values = {
    "serviceAccounts": {
        "steps": {"name": STEPS_KSA, "gcpServiceAccount": STEPS_GSA},
        "services": {"name": SERVICES_KSA, "gcpServiceAccount": SERVICES_GSA},
    },
    "database": {
        "instanceConnectionName": CONNECTION_NAME,
        "name": "metaflow",
        "user": "metaflow",
        "passwordSecret": {"name": "metaflow-db-credentials", "key": "pg-password"},
    },
    "datastore": {"sysroot": "gs://acme-ml-metaflow/metaflow"},
    "ui": {"backendUrl": "http://localhost:18083/api", "corsOrigin": "http://localhost:13000"},
    "argoWorkflows": {"enabled": True},
}
WITHOUT_ARGO: Values = merged(STACK_VALUES, {"argoWorkflows": {"enabled": False}})
WITH_AIRFLOW: Values = merged(STACK_VALUES, {"networkPolicy": {"allowAirflow": True}})
BARE: Values = merged(
    WITHOUT_ARGO, {"jobsets": {"enabled": False}, "networkPolicy": {"enabled": False}}
)

SCENARIOS: dict[str, Values | None] = {
    "defaults": None,
    "stack": STACK_VALUES,
    "stack-without-argo": WITHOUT_ARGO,
    "stack-with-airflow": WITH_AIRFLOW,
    "no-argo-no-jobsets-no-policies": BARE,
}

# (Deployment, Service, port, health path) for the three services.
SERVICES = [
    ("metadata-service", "metadata-service", 8080, "/ping"),
    ("metaflow-ui-backend", "metaflow-ui-backend", 8083, "/api/ping"),
    ("metaflow-ui", "metaflow-ui", 3000, "/"),
]
DATABASE_DEPLOYMENTS = ["metadata-service", "metaflow-ui-backend"]
METADATA_IMAGE_REPO = "public.ecr.aws/outerbounds/metaflow_metadata_service"


def render(values: Values | None) -> Rendered:
    return render_chart(METAFLOW_CHART, values, release=RELEASE, namespace=NAMESPACE)


def effective(values: Values | None) -> Values:
    """The values a release would actually use (chart defaults + overrides)."""
    with helm_python.Chart.load(METAFLOW_CHART) as chart:
        result: Values = chart.merge_values(values or {})
    return result


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[Values, Rendered]:
    values = SCENARIOS[request.param]
    return effective(values), render(values)


@pytest.fixture(scope="module")
def stack() -> Rendered:
    return render(STACK_VALUES)


def refused(values: Values) -> str:
    """Render and expect Helm to refuse the values; returns the error text."""
    with pytest.raises(helm_python.HelmError) as excinfo:
        render(values)
    return str(excinfo.value)


# --- the chart as a whole -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chart_lints_without_warnings(name: str) -> None:
    assert lint_chart(METAFLOW_CHART, SCENARIOS[name], namespace=NAMESPACE) == []


def test_every_manifest_is_valid_kubernetes(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    assert not any(is_custom_resource(m) for m in rendered.manifests)
    problems = [p for m in rendered.manifests if (p := schema_problem(m))]
    assert problems == []


def test_renders_the_three_services_and_their_deployments(stack: Rendered) -> None:
    names = {name for name, _, _, _ in SERVICES}
    assert stack.names("Deployment") == names
    assert stack.names("Service") == names


SERVICE_KINDS = {"Deployment", "Service"}


def test_services_live_apart_from_user_code(scenario: tuple[Values, Rendered]) -> None:
    """Every object names its namespace: the services' in metaflow-services, where no user
    pod runs; what user code needs (its account, RBAC) in metaflow."""
    _, rendered = scenario
    for manifest in rendered.manifests:
        namespace = manifest["metadata"]["namespace"]
        if manifest["kind"] in SERVICE_KINDS:
            assert namespace == SERVICES_NS, manifest["metadata"]["name"]
        elif manifest["kind"] in ("Role", "RoleBinding", "Secret"):
            assert namespace == NAMESPACE, manifest["metadata"]["name"]
        else:
            assert namespace in (NAMESPACE, SERVICES_NS)


def test_the_chart_namespaces_are_the_shared_names() -> None:
    namespaces = effective(None)["namespaces"]
    assert namespaces == {
        "steps": kube_names.METAFLOW_NS,
        "services": kube_names.SERVICES_NS,
        "airflow": kube_names.AIRFLOW_NS,
    }


def test_services_and_user_code_cannot_share_a_namespace() -> None:
    error = refused(merged(STACK_VALUES, {"namespaces": {"services": NAMESPACE}}))
    assert "namespaces.services must differ" in error


def test_every_object_carries_the_standard_labels(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for manifest in rendered.manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "metaflow"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "metaflow"
        assert labels["helm.sh/chart"].startswith("metaflow-")
        if manifest["kind"] in ("Deployment", "Service", "ServiceAccount"):
            assert labels["app.kubernetes.io/component"]


def test_no_object_uses_a_cluster_wide_kind(stack: Rendered) -> None:
    assert not {m["kind"] for m in stack.manifests} & {"ClusterRole", "ClusterRoleBinding"}


# --- services and their selectors -----------------------------------------------------------


@pytest.mark.parametrize(("deployment", "service", "port", "path"), SERVICES)
def test_each_service_selects_only_its_own_pods(
    stack: Rendered, deployment: str, service: str, port: int, path: str
) -> None:
    selector = stack.get("Service", service)["spec"]["selector"]
    assert selector
    for workload in stack.of_kind("Deployment"):
        labels = pod_labels(workload)
        selected = all(labels.get(k) == v for k, v in selector.items())
        assert selected == (workload["metadata"]["name"] == deployment)


def test_ui_service_selects_the_ui_pods(stack: Rendered) -> None:
    """The old Terraform template's UI Service selected a label no pod had (no endpoints)."""
    selector = stack.get("Service", "metaflow-ui")["spec"]["selector"]
    labels = pod_labels(stack.get("Deployment", "metaflow-ui"))
    assert selector.items() <= labels.items()


def test_deployment_selectors_match_their_own_pod_template(stack: Rendered) -> None:
    for workload in stack.of_kind("Deployment"):
        match = workload["spec"]["selector"]["matchLabels"]
        assert match.items() <= pod_labels(workload).items()


@pytest.mark.parametrize(("deployment", "service", "port", "path"), SERVICES)
def test_services_are_cluster_ip_and_reach_the_app_port(
    stack: Rendered, deployment: str, service: str, port: int, path: str
) -> None:
    svc = stack.get("Service", service)["spec"]
    assert svc["type"] == "ClusterIP"
    assert [p["port"] for p in svc["ports"]] == [port]
    app = pod_spec(stack.get("Deployment", deployment))["containers"][0]
    named = {p["name"]: p["containerPort"] for p in app["ports"]}
    assert named[svc["ports"][0]["targetPort"]] == port


@pytest.mark.parametrize(("deployment", "service", "port", "path"), SERVICES)
def test_app_containers_are_probed_on_their_health_endpoint(
    stack: Rendered, deployment: str, service: str, port: int, path: str
) -> None:
    app = pod_spec(stack.get("Deployment", deployment))["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert app[probe]["httpGet"]["path"] == path
        assert app[probe]["httpGet"]["port"] in ("http", port)


# --- Cloud SQL Auth Proxy -------------------------------------------------------------------


@pytest.mark.parametrize("deployment", DATABASE_DEPLOYMENTS)
def test_database_pods_start_the_proxy_first_as_a_native_sidecar(
    stack: Rendered, deployment: str
) -> None:
    spec = pod_spec(stack.get("Deployment", deployment))
    proxy = spec["initContainers"][0]
    assert proxy["name"] == "cloud-sql-proxy"
    assert proxy["restartPolicy"] == "Always"
    assert proxy["image"].startswith("gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.")
    assert all(c["name"] != "cloud-sql-proxy" for c in spec["containers"])


@pytest.mark.parametrize("deployment", DATABASE_DEPLOYMENTS)
def test_proxy_dials_the_private_ip_of_the_configured_instance(
    stack: Rendered, deployment: str
) -> None:
    args = container(stack.get("Deployment", deployment), "cloud-sql-proxy")["args"]
    assert "--private-ip" in args
    assert "--port=5432" in args
    assert args[-1] == CONNECTION_NAME
    assert "--structured-logs" in args
    assert "--exit-zero-on-sigterm" in args
    # The listener itself stays on the default 127.0.0.1; only health checks are exposed.
    assert not any(a.startswith(("--address", "-a")) for a in args)


@pytest.mark.parametrize("deployment", DATABASE_DEPLOYMENTS)
def test_proxy_health_checks_are_reachable_by_the_kubelet(stack: Rendered, deployment: str) -> None:
    proxy = container(stack.get("Deployment", deployment), "cloud-sql-proxy")
    assert "--health-check" in proxy["args"]
    assert "--http-address=0.0.0.0" in proxy["args"]
    port = next(a.split("=", 1)[1] for a in proxy["args"] if a.startswith("--http-port="))
    ports = {p["name"]: str(p["containerPort"]) for p in proxy["ports"]}
    assert proxy["startupProbe"]["httpGet"]["path"] == "/startup"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/liveness"
    for probe in ("startupProbe", "livenessProbe"):
        assert ports[proxy[probe]["httpGet"]["port"]] == port


def test_only_database_pods_carry_the_proxy(stack: Rendered) -> None:
    with_proxy = {
        w["metadata"]["name"]
        for w in stack.of_kind("Deployment")
        if any(c["name"] == "cloud-sql-proxy" for c in containers(w))
    }
    assert with_proxy == set(DATABASE_DEPLOYMENTS)


def test_instance_connection_name_only_appears_in_proxy_args(stack: Rendered) -> None:
    for _, c in all_containers(stack):
        mentions = CONNECTION_NAME in repr(c)
        assert mentions == (c["name"] == "cloud-sql-proxy")


def test_malformed_instance_connection_name_is_refused() -> None:
    error = refused(merged(STACK_VALUES, {"database": {"instanceConnectionName": "psql-only"}}))
    assert "instanceConnectionName" in error


# --- migrations and database settings -------------------------------------------------------


def test_migrations_run_as_an_init_container_after_the_proxy(stack: Rendered) -> None:
    init = pod_spec(stack.get("Deployment", "metadata-service"))["initContainers"]
    assert [c["name"] for c in init] == ["cloud-sql-proxy", "db-migrations"]
    migrate = init[1]
    assert "restartPolicy" not in migrate
    assert migrate["command"][:2] == ["/opt/latest/bin/python3", "/root/run_goose.py"]
    # Every pending migration is applied, so image upgrades also upgrade the schema.
    assert "--only-if-empty-db" not in migrate["command"]


def test_ui_backend_waits_for_the_migrated_metadata_service(stack: Rendered) -> None:
    init = pod_spec(stack.get("Deployment", "metaflow-ui-backend"))["initContainers"]
    assert [c["name"] for c in init] == ["cloud-sql-proxy", "wait-for-metadata-service"]
    assert init[1]["command"][-1] == "http://metadata-service.metaflow-services.svc:8080/ping"


def database_containers(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        c
        for name in DATABASE_DEPLOYMENTS
        for c in containers(rendered.get("Deployment", name))
        if "MF_METADATA_DB_HOST" in env_of(c)
    ]


def test_database_settings_point_at_the_local_proxy(scenario: tuple[Values, Rendered]) -> None:
    values, rendered = scenario
    found = database_containers(rendered)
    assert {c["name"] for c in found} == {"db-migrations", "metadata-service", "ui-backend"}
    for c in found:
        env = env_of(c)
        assert env["MF_METADATA_DB_HOST"]["value"] in ("127.0.0.1", "localhost")
        assert env["MF_METADATA_DB_PORT"]["value"] == "5432"
        assert env["MF_METADATA_DB_USER"]["value"] == values["database"]["user"]
        assert env["MF_METADATA_DB_NAME"]["value"] == values["database"]["name"]


def test_database_password_comes_from_the_configured_secret(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    for c in database_containers(rendered):
        password = env_of(c)["MF_METADATA_DB_PSWD"]
        assert "value" not in password
        assert password["valueFrom"] == {"secretKeyRef": values["database"]["passwordSecret"]}


# --- no secrets -------------------------------------------------------------------------------


def test_the_only_secret_is_a_service_account_token_that_carries_no_data(
    scenario: tuple[Values, Rendered],
) -> None:
    """The chart supplies no secret material. The one Secret it may render is a request for a
    service account token (the Argo agent's), which Kubernetes' token controller fills in."""
    values, rendered = scenario
    for secret in rendered.of_kind("Secret"):
        name = secret["metadata"]["name"]
        assert secret["type"] == "kubernetes.io/service-account-token", name
        assert "data" not in secret, name
        assert "stringData" not in secret, name
    token = f"{values['serviceAccounts']['steps']['name']}.service-account-token"
    expected = {token} if values["argoWorkflows"]["enabled"] else set()
    assert rendered.names("Secret") == expected


CANARY = "canary-S3cr3t-7f3a9e"


@pytest.mark.parametrize(
    "values",
    [
        {"database": {"password": CANARY}},
        {"database": {"passwordSecret": {"value": CANARY}}},
        {"database": {"passwordSecret": {"password": CANARY}}},
        {"password": CANARY},
        {"env": {"MF_METADATA_DB_PSWD": CANARY}},
        {"ui": {"password": CANARY}},
    ],
    ids=lambda v: ".".join(_first_path(v)),
)
def test_a_password_passed_as_a_value_is_refused(values: Values) -> None:
    """There is no values key that could carry a password into a manifest."""
    assert CANARY not in refused(merged(STACK_VALUES, values))


def _first_path(values: Values) -> list[str]:
    key = next(iter(values))
    inner = values[key]
    return [key, *(_first_path(inner) if isinstance(inner, dict) else [])]


SECRETISH_ENV = re.compile(r"PSWD|PASSWORD|SECRET|TOKEN|_KEY$")


def test_no_literal_secret_looking_env_values(stack: Rendered) -> None:
    for workload, c in all_containers(stack):
        for entry in c.get("env", []):
            if SECRETISH_ENV.search(entry["name"]):
                assert "value" not in entry, f"{workload}/{c['name']}: {entry['name']}"


def test_rendered_output_contains_no_credentials(stack: Rendered) -> None:
    text = stack.text
    assert not re.search(r"postgres(ql)?://[^\s:/@]+:[^\s@]+@", text)
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?[^\s'\"]", text)
    assert "-----BEGIN" not in text


# --- container hardening --------------------------------------------------------------------


def runs_metadata_image(c: dict[str, Any]) -> bool:
    return str(c["image"]).startswith(METADATA_IMAGE_REPO + ":")


def test_every_container_drops_privileges(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for workload, c in all_containers(rendered):
        ctx = c["securityContext"]
        where = f"{workload}/{c['name']}"
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in ctx["capabilities"], where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        assert ctx.get("privileged", False) is False, where


def test_every_pod_uses_the_runtime_default_seccomp_profile(stack: Rendered) -> None:
    for workload in stack.of_kind("Deployment"):
        assert pod_spec(workload)["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_only_the_stock_metadata_service_image_runs_as_root(
    scenario: tuple[Values, Rendered],
) -> None:
    """That image keeps its code under /root (0700) and has no USER; everything else is
    non-root. The root containers still have no capabilities and cannot escalate."""
    _, rendered = scenario
    for workload, c in all_containers(rendered):
        ctx = c["securityContext"]
        if ctx["runAsUser"] == 0:
            assert runs_metadata_image(c), f"{workload}/{c['name']} runs as root"
            assert ctx["runAsNonRoot"] is False
        else:
            assert ctx["runAsNonRoot"] is True, f"{workload}/{c['name']}"


def test_a_rebuilt_non_root_metadata_image_makes_every_container_non_root() -> None:
    rendered = render(merged(STACK_VALUES, {"images": {"metadataService": {"runAsUser": 1000}}}))
    for workload, c in all_containers(rendered):
        assert c["securityContext"]["runAsNonRoot"] is True, f"{workload}/{c['name']}"
        assert c["securityContext"]["runAsUser"] != 0


def test_proxy_and_ui_have_read_only_root_filesystems(stack: Rendered) -> None:
    for workload, c in all_containers(stack):
        if c["name"] in ("cloud-sql-proxy", "ui"):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, workload


def test_ui_gets_writable_scratch_space_for_nginx(stack: Rendered) -> None:
    ui = stack.get("Deployment", "metaflow-ui")
    mounts = {m["mountPath"] for m in container(ui, "ui")["volumeMounts"]}
    assert {"/etc/nginx/conf.d", "/var/cache/nginx", "/run"} <= mounts
    assert all("emptyDir" in v for v in pod_spec(ui)["volumes"])


def test_every_container_requests_resources_and_caps_memory(
    scenario: tuple[Values, Rendered],
) -> None:
    _, rendered = scenario
    for workload, c in all_containers(rendered):
        resources = c["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), f"{workload}/{c['name']}"
        assert "memory" in resources["limits"], f"{workload}/{c['name']}"


def test_pods_do_not_mount_a_kubernetes_api_token(stack: Rendered) -> None:
    for workload in stack.of_kind("Deployment"):
        assert pod_spec(workload)["automountServiceAccountToken"] is False


# --- images ---------------------------------------------------------------------------------


def test_every_image_tag_is_pinned(scenario: tuple[Values, Rendered]) -> None:
    _, rendered = scenario
    for workload, c in all_containers(rendered):
        repository, _, tag = str(c["image"]).rpartition(":")
        assert repository and "/" in repository, f"{workload}/{c['name']}: {c['image']}"
        assert tag and tag != "latest", f"{workload}/{c['name']}: {c['image']}"
        assert c["imagePullPolicy"] != "Always"


def test_metadata_service_and_ui_backend_run_the_same_image(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    image = "{repository}:{tag}".format(**values["images"]["metadataService"])
    for name in DATABASE_DEPLOYMENTS:
        for c in containers(rendered.get("Deployment", name)):
            if c["name"] != "cloud-sql-proxy":
                assert c["image"] == image


@pytest.mark.parametrize("image", ["metadataService", "ui", "cloudSqlProxy"])
@pytest.mark.parametrize("tag", ["latest", ""])
def test_floating_or_missing_tags_are_refused(image: str, tag: str) -> None:
    refused(merged(STACK_VALUES, {"images": {image: {"tag": tag}}}))


# --- service accounts and Workload Identity -------------------------------------------------


def accounts(rendered: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m
        for m in rendered.of_kind("ServiceAccount")
    }


def test_each_trust_level_has_its_own_account_and_google_identity(stack: Rendered) -> None:
    found = accounts(stack)
    assert set(found) == {(NAMESPACE, STEPS_KSA), (SERVICES_NS, SERVICES_KSA)}
    annotation = "iam.gke.io/gcp-service-account"
    assert found[(NAMESPACE, STEPS_KSA)]["metadata"]["annotations"] == {annotation: STEPS_GSA}
    assert found[(SERVICES_NS, SERVICES_KSA)]["metadata"]["annotations"] == {
        annotation: SERVICES_GSA
    }


def test_accounts_have_no_annotation_without_a_google_account() -> None:
    rendered = render(None)
    for account in rendered.of_kind("ServiceAccount"):
        assert "annotations" not in account["metadata"]
    assert "serviceAccounts.steps.gcpServiceAccount is empty" in rendered.notes
    assert "serviceAccounts.services.gcpServiceAccount is empty" in rendered.notes


def test_every_service_pod_runs_as_the_services_account(stack: Rendered) -> None:
    for workload in stack.of_kind("Deployment"):
        assert pod_spec(workload)["serviceAccountName"] == SERVICES_KSA


def test_renamed_accounts_are_used_everywhere() -> None:
    rendered = render(
        merged(
            STACK_VALUES,
            {"serviceAccounts": {"steps": {"name": "jobs"}, "services": {"name": "svc"}}},
        )
    )
    assert set(accounts(rendered)) == {(NAMESPACE, "jobs"), (SERVICES_NS, "svc")}
    for workload in rendered.of_kind("Deployment"):
        assert pod_spec(workload)["serviceAccountName"] == "svc"
    for binding in rendered.of_kind("RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "jobs", "namespace": NAMESPACE}
        ]
    token = rendered.get("Secret", "jobs.service-account-token")
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "jobs"}


@pytest.mark.parametrize("name", ["", "Metaflow", "mf_dev", "-mf"])
def test_an_account_name_kubernetes_would_refuse_is_refused(name: str) -> None:
    assert "serviceAccounts" in refused(
        merged(STACK_VALUES, {"serviceAccounts": {"steps": {"name": name}}})
    )


# --- UI wiring --------------------------------------------------------------------------------


def test_ui_sends_the_browser_to_the_configured_backend_url(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    ui = container(rendered.get("Deployment", "metaflow-ui"), "ui")
    assert env_of(ui)["METAFLOW_SERVICE"]["value"] == values["ui"]["backendUrl"]
    assert ".svc" not in values["ui"]["backendUrl"]


def test_ui_backend_reads_the_gcs_datastore_and_the_in_cluster_metadata_service(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    env = env_of(container(rendered.get("Deployment", "metaflow-ui-backend"), "ui-backend"))
    expected = {
        "PATH_PREFIX": "/api",
        "UI_ENABLED": "1",
        "METAFLOW_SERVICE_URL": "http://metadata-service.metaflow-services.svc:8080/",
        "METAFLOW_DEFAULT_DATASTORE": "gs",
        "METAFLOW_DATASTORE_SYSROOT_GS": values["datastore"]["sysroot"],
        "METAFLOW_DEFAULT_METADATA": "service",
    }
    assert {k: env[k]["value"] for k in expected} == expected


def test_ui_backend_accepts_cross_origin_calls_from_the_configured_ui_origin(
    scenario: tuple[Values, Rendered],
) -> None:
    """The browser loads the UI from one port and calls the backend on another; without an
    allowed origin the backend answers the CORS preflight with 405."""
    values, rendered = scenario
    env = env_of(container(rendered.get("Deployment", "metaflow-ui-backend"), "ui-backend"))
    assert env["ORIGIN_TO_ALLOW_CORS_FROM"]["value"] == values["ui"]["corsOrigin"]


def test_ui_backend_accepts_only_the_port_forwarded_ui_by_default() -> None:
    """Unset, the backend answers every call with `Access-Control-Allow-Origin: *`; "*" lets
    any page in the browser read run data. The default is the UI's origin as printed by
    `inv port-forward`, which is also where the UI sends the browser for data."""
    values = effective(None)
    env = env_of(container(render(None).get("Deployment", "metaflow-ui-backend"), "ui-backend"))
    assert env["ORIGIN_TO_ALLOW_CORS_FROM"]["value"] == kube_names.local_url("ui")
    assert values["ui"]["backendUrl"] == kube_names.local_url("ui-backend", "/api")


@pytest.mark.parametrize(
    "origin", ["", "localhost:3000", "http://localhost:3000/", "http://localhost:3000/api"]
)
def test_a_cors_origin_that_is_not_an_origin_is_refused(origin: str) -> None:
    """An origin is scheme://host[:port]; the browser never sends a path or trailing slash, so
    such a value would silently match nothing."""
    assert "corsOrigin" in refused(merged(STACK_VALUES, {"ui": {"corsOrigin": origin}}))


def test_notes_print_the_client_settings_for_this_install(stack: Rendered) -> None:
    internal = "http://metadata-service.metaflow-services.svc:8080/"
    assert f"METAFLOW_SERVICE_INTERNAL_URL={internal}" in stack.notes
    assert f"METAFLOW_KUBERNETES_SERVICE_ACCOUNT={STEPS_KSA}" in stack.notes
    assert f"METAFLOW_KUBERNETES_NAMESPACE={NAMESPACE}" in stack.notes
    assert f"-n {SERVICES_NS} port-forward service/metaflow-ui 3000:3000" in stack.notes


# --- Argo Workflows executor RBAC ------------------------------------------------------------


def test_argo_executor_role_exists_only_when_argo_is_enabled(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    expected = {"metaflow-argo-workflows-executor"} if values["argoWorkflows"]["enabled"] else set()
    expected |= {"metaflow-jobsets"} if values["jobsets"]["enabled"] else set()
    assert rendered.names("Role") == expected
    assert rendered.names("RoleBinding") == expected


def test_argo_agent_gets_the_token_secret_kubernetes_no_longer_creates(
    scenario: tuple[Values, Rendered],
) -> None:
    """Argo's agent pod (HTTP templates: Metaflow's notification exit hooks) acts as the
    workflow's service account and mounts its token from `<account>.service-account-token`.
    Kubernetes >= 1.24 only makes that Secret when asked, by one of this type and annotation."""
    values, rendered = scenario
    account = values["serviceAccounts"]["steps"]["name"]
    if not values["argoWorkflows"]["enabled"]:
        assert rendered.of_kind("Secret") == []
        return
    token = rendered.get("Secret", f"{account}.service-account-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": account}
    assert token["metadata"]["namespace"] == NAMESPACE
    assert (NAMESPACE, account) in accounts(rendered)  # the account it names is ours


def test_argo_executor_role_lets_steps_and_the_agent_report_their_results(
    stack: Rendered,
) -> None:
    """Executors write WorkflowTaskResults; the agent watches the WorkflowTaskSet and patches
    its status. Argo's own chart grants only the former (agentPermissions is off)."""
    rules = stack.get("Role", "metaflow-argo-workflows-executor")["rules"]
    granted = {
        (resource, verb)
        for rule in rules
        if rule["apiGroups"] == ["argoproj.io"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {
        ("workflowtaskresults", "create"),
        ("workflowtaskresults", "patch"),
        ("workflowtasksets", "list"),
        ("workflowtasksets", "watch"),
        ("workflowtasksets/status", "patch"),
    } <= granted
    assert not any("*" in (resource + verb) for resource, verb in granted)
    binding = stack.get("RoleBinding", "metaflow-argo-workflows-executor")
    assert binding["roleRef"]["name"] == "metaflow-argo-workflows-executor"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": STEPS_KSA, "namespace": NAMESPACE}
    ]


# --- JobSets (@parallel) ---------------------------------------------------------------------


def test_the_steps_account_may_run_jobsets_in_its_namespace_only(stack: Rendered) -> None:
    """Argo's resource template creates the JobSet as the steps' account and follows it until
    status.terminalState says how it ended; a killed run deletes it."""
    role = stack.get("Role", "metaflow-jobsets")
    assert role["metadata"]["namespace"] == NAMESPACE
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("jobset.x-k8s.io", "jobsets", verb)
        for verb in ("create", "get", "list", "watch", "delete")
    }
    binding = stack.get("RoleBinding", "metaflow-jobsets")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "metaflow-jobsets",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": STEPS_KSA, "namespace": NAMESPACE}
    ]


def test_the_services_account_is_granted_nothing_in_kubernetes(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    services = values["serviceAccounts"]["services"]["name"]
    for binding in rendered.of_kind("RoleBinding"):
        assert all(s["name"] != services for s in binding["subjects"])


# --- NetworkPolicies -----------------------------------------------------------------------------


def policies(rendered: Rendered, namespace: str) -> dict[str, dict[str, Any]]:
    return {
        m["metadata"]["name"]: m["spec"]
        for m in rendered.of_kind("NetworkPolicy")
        if m["metadata"]["namespace"] == namespace
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a label selector (matchLabels + Exists expressions) select these labels?"""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "Exists", "only Exists is modelled here"
        if expression["key"] not in labels:
            return False
    return True


def ingress_allowed(
    rendered: Rendered,
    to: tuple[str, dict[str, str]],
    source: tuple[str, dict[str, str]],
    port: int,
) -> bool:
    """Would a TCP connection from a pod (namespace, labels) reach `to` on `port`?

    Standard NetworkPolicy semantics: a pod selected by any Ingress policy is isolated and
    takes only what some rule of those policies allows; peers in one `from` entry are ORed,
    a namespaceSelector+podSelector pair in one peer is ANDed."""
    namespace, labels = to
    source_ns, source_labels = source
    selecting = [
        spec
        for spec in policies(rendered, namespace).values()
        if "Ingress" in spec["policyTypes"] and selects(spec["podSelector"], labels)
    ]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p["port"] == port and p["protocol"] == "TCP" for p in ports):
                continue
            for peer in rule.get("from", [{}]):
                ns_ok = (
                    selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source_ns})
                    if "namespaceSelector" in peer
                    else source_ns == namespace
                )
                pod_ok = selects(peer.get("podSelector", {}), source_labels)
                if "ipBlock" not in peer and ns_ok and pod_ok:
                    return True
    return False


def service_pod(rendered: Rendered, deployment: str) -> tuple[str, dict[str, str]]:
    return SERVICES_NS, pod_labels(rendered.get("Deployment", deployment))


STEP_POD = (NAMESPACE, {"app.kubernetes.io/name": "metaflow-task"})
AIRFLOW_STEP_POD = ("airflow", {"app.kubernetes.io/name": "metaflow-task"})
OTHER_POD = ("default", {"app": "anything"})
JOBSET_POD = (NAMESPACE, {"jobset.sigs.k8s.io/jobset-name": "js-1", "app": "x"})


def test_policies_are_standard_network_policies_dataplane_v2_enforces(stack: Rendered) -> None:
    found = stack.of_kind("NetworkPolicy")
    assert found
    assert {m["apiVersion"] for m in found} == {"networking.k8s.io/v1"}


@pytest.mark.parametrize("namespace", [NAMESPACE, SERVICES_NS])
def test_each_namespace_denies_all_ingress_by_default(stack: Rendered, namespace: str) -> None:
    deny = [
        spec
        for spec in policies(stack, namespace).values()
        if spec["podSelector"] == {} and "Ingress" in spec["policyTypes"]
    ]
    assert len(deny) == 1 and "ingress" not in deny[0]


def test_the_services_namespace_denies_all_egress_by_default(stack: Rendered) -> None:
    deny = policies(stack, SERVICES_NS)["default-deny"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in deny


def test_step_pods_and_the_ui_backend_reach_the_metadata_service_port_only(
    stack: Rendered,
) -> None:
    metadata = service_pod(stack, "metadata-service")
    backend = service_pod(stack, "metaflow-ui-backend")
    assert ingress_allowed(stack, metadata, STEP_POD, 8080)
    assert ingress_allowed(stack, metadata, backend, 8080)
    assert not ingress_allowed(stack, metadata, STEP_POD, 9801)  # not the proxy's health port
    assert not ingress_allowed(stack, metadata, OTHER_POD, 8080)
    assert not ingress_allowed(stack, metadata, AIRFLOW_STEP_POD, 8080)
    assert not ingress_allowed(stack, metadata, service_pod(stack, "metaflow-ui"), 8080)


def test_airflow_step_pods_reach_the_metadata_service_when_airflow_runs() -> None:
    rendered = render(WITH_AIRFLOW)
    assert ingress_allowed(
        rendered, service_pod(rendered, "metadata-service"), AIRFLOW_STEP_POD, 8080
    )


@pytest.mark.parametrize(
    ("deployment", "port"), [("metaflow-ui-backend", 8083), ("metaflow-ui", 3000)]
)
def test_the_ui_and_its_backend_take_no_call_from_any_pod(
    stack: Rendered, deployment: str, port: int
) -> None:
    """The browser reaches them through `kubectl port-forward`, which the kubelet delivers on
    the pod's loopback: no pod-network peer needs them."""
    target = service_pod(stack, deployment)
    for source in (STEP_POD, OTHER_POD, service_pod(stack, "metadata-service")):
        assert not ingress_allowed(stack, target, source, port)


def egress_rules(rendered: Rendered, deployment: str) -> list[dict[str, Any]]:
    labels = pod_labels(rendered.get("Deployment", deployment))
    return [
        rule
        for spec in policies(rendered, SERVICES_NS).values()
        if "Egress" in spec["policyTypes"] and selects(spec["podSelector"], labels)
        for rule in spec.get("egress", [])
    ]


def egress_ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in rules for p in rule["ports"]}


@pytest.mark.parametrize("deployment", DATABASE_DEPLOYMENTS)
def test_database_pods_reach_dns_the_metadata_server_google_apis_and_cloud_sql_only(
    stack: Rendered, deployment: str
) -> None:
    rules = egress_rules(stack, deployment)
    assert all(rule.get("ports") and rule.get("to") for rule in rules)  # no open-ended rule
    assert egress_ports(rules) - {("TCP", 8080)} == {
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 80),
        ("TCP", 988),
        ("TCP", 443),
        ("TCP", 3307),
    }
    https = next(r for r in rules if r["ports"] == [{"protocol": "TCP", "port": 443}])
    block = https["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(block["except"])
    metadata_server = [r for r in rules if {"protocol": "TCP", "port": 80} in r["ports"]]
    assert metadata_server[0]["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}]


def test_only_the_ui_backend_may_call_the_metadata_service_from_the_services_namespace(
    stack: Rendered,
) -> None:
    backend = egress_rules(stack, "metaflow-ui-backend")
    assert egress_ports(backend) >= {("TCP", 8080)}
    assert ("TCP", 8080) not in egress_ports(egress_rules(stack, "metadata-service"))
    assert egress_rules(stack, "metaflow-ui") == []


def test_jobset_pods_talk_to_each_other_and_nothing_else_reaches_user_code(
    stack: Rendered,
) -> None:
    other_jobset = (NAMESPACE, {"jobset.sigs.k8s.io/jobset-name": "js-1", "x": "y"})
    assert ingress_allowed(stack, JOBSET_POD, other_jobset, 29500)
    assert not ingress_allowed(stack, JOBSET_POD, STEP_POD, 29500)
    assert not ingress_allowed(stack, STEP_POD, STEP_POD, 8080)
    assert not ingress_allowed(stack, STEP_POD, OTHER_POD, 8080)


def test_policies_can_be_switched_off_for_a_cluster_without_enforcement() -> None:
    assert render(BARE).of_kind("NetworkPolicy") == []


# --- UI backend sizing ---------------------------------------------------------------------------


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_ui_backend_cache_pools_and_disk_limits_are_set_explicitly(
    scenario: tuple[Values, Rendered],
) -> None:
    """Unset, the backend runs 16 + 16 + 8 cache workers and sizes its caches from the node's
    whole boot disk (services/ui_backend_service/data/cache/store.py)."""
    values, rendered = scenario
    cache = values["uiBackend"]["cache"]
    env = env_of(container(rendered.get("Deployment", "metaflow-ui-backend"), "ui-backend"))
    assert env["CACHE_ARTIFACT_MAX_ACTIONS"]["value"] == str(cache["artifactWorkers"])
    assert env["CACHE_DAG_MAX_ACTIONS"]["value"] == str(cache["dagWorkers"])
    assert env["CACHE_LOG_MAX_ACTIONS"]["value"] == str(cache["logWorkers"])
    for kind in ("artifact", "dag", "log"):
        limit = env[f"CACHE_{kind.upper()}_STORAGE_LIMIT"]["value"]
        assert limit == str(cache[f"{kind}StorageMiB"] * 1024 * 1024)  # bytes, not MiB
    assert env["CARD_CACHE_STORAGE_PATH"]["value"] == "/tmp"


def test_ui_backend_caches_live_on_size_limited_volumes_that_fit_its_storage_limit(
    scenario: tuple[Values, Rendered],
) -> None:
    values, rendered = scenario
    cache = values["uiBackend"]["cache"]
    workload = rendered.get("Deployment", "metaflow-ui-backend")
    mounts = {m["mountPath"]: m["name"] for m in container(workload, "ui-backend")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    cache_volume = volumes[mounts["/root/cache_data"]]["emptyDir"]["sizeLimit"]
    tmp_volume = volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
    caches = cache["artifactStorageMiB"] + cache["dagStorageMiB"] + cache["logStorageMiB"]
    # The caches collect garbage above their limit, so the volume leaves them headroom.
    assert caches <= 0.9 * mebibytes(cache_volume)
    resources = container(workload, "ui-backend")["resources"]
    limit = mebibytes(resources["limits"]["ephemeral-storage"])
    assert limit >= mebibytes(cache_volume) + mebibytes(tmp_volume) + 256  # + logs, layer
    assert "ephemeral-storage" in resources["requests"]


def test_ui_backend_memory_fits_its_worker_processes(scenario: tuple[Values, Rendered]) -> None:
    """About 150 MiB per Python process: the server, three cache servers, the card cache and
    every cache worker."""
    values, rendered = scenario
    cache = values["uiBackend"]["cache"]
    workers = cache["artifactWorkers"] + cache["dagWorkers"] + cache["logWorkers"]
    workload = rendered.get("Deployment", "metaflow-ui-backend")
    limit = mebibytes(container(workload, "ui-backend")["resources"]["limits"]["memory"])
    assert limit >= 150 * (workers + 5)
    assert workers <= 16  # upstream's 40 under a few GiB is what got the pod OOM-killed


def test_every_namespace_the_stack_owns_has_a_pod_security_level() -> None:
    """services.up labels each of them; `restricted` only where every pod we run passes it."""
    assert set(kube_names.POD_SECURITY) == set(kube_names.NAMESPACES)
    assert set(kube_names.POD_SECURITY.values()) <= {"baseline", "restricted"}
    # The stock metadata service image runs as uid 0, which `restricted` refuses.
    values = effective(None)
    assert values["images"]["metadataService"]["runAsUser"] == 0
    assert kube_names.POD_SECURITY[kube_names.SERVICES_NS] == "baseline"
    labels = kube_names.pod_security_labels(kube_names.JOBSET_NS)
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_services_and_ports_are_the_shared_names(stack: Rendered) -> None:
    """Port-forwards, the Metaflow config and the policies all use kube_names."""
    expected = {
        kube_names.METADATA_SERVICE: kube_names.METADATA_PORT,
        kube_names.UI_BACKEND_SERVICE: kube_names.UI_BACKEND_PORT,
        kube_names.UI_SERVICE: kube_names.UI_PORT,
    }
    found = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in stack.of_kind("Service")}
    assert found == expected
    ingress = policies(stack, SERVICES_NS)["metadata-service"]["ingress"]
    assert ingress[0]["ports"] == [{"protocol": "TCP", "port": kube_names.METADATA_PORT}]
