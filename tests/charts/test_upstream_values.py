"""Specification of values/: the pins and settings for the upstream Argo and Airflow charts.

The upstream charts are not vendored, so these tests check our files on their own. To also
check every key against the pinned charts, unpack them (`helm pull REPO/CHART --version V
--untar --untardir DIR` gives DIR/<chart>) into DIR/<chart>-<version>/ and set
UPSTREAM_CHARTS_DIR=DIR (.ci/run points it at ../shared/upstream-charts when CI has them):
the last sections then render each chart with our values and the real Helm engine, and
check what lands on the cluster: valid objects, no cluster-wide grant, the Argo controllers
confined to the Metaflow namespace, argo-server asking for a token, network boundaries and
Pod Security. Without the variable those tests skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from metaflow_gcp import kube_names, releases
from tests.charts.conftest import (
    ARGO_EVENTS_CHART,
    VALUES_DIR,
    Manifest,
    Rendered,
    Values,
    load_yaml,
    merged,
    pod_spec,
    render_chart,
    schema_problem,
)

UPSTREAM = ("argo-workflows", "argo-events", "airflow")
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@pytest.fixture(scope="module")
def argo_workflows() -> Values:
    data: Values = load_yaml(VALUES_DIR / "argo-workflows.yaml")
    return data


@pytest.fixture(scope="module")
def argo_events() -> Values:
    data: Values = load_yaml(VALUES_DIR / "argo-events.yaml")
    return data


@pytest.fixture(scope="module")
def airflow() -> Values:
    data: Values = load_yaml(VALUES_DIR / "airflow.yaml")
    return data


def leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, str(index)))
    else:
        yield path, node


def major(version: str) -> int:
    return int(version.lstrip("v").split(".")[0])


# --- every file -------------------------------------------------------------------------------


def test_values_directory_holds_exactly_the_expected_files() -> None:
    assert [p.name for p in VALUES_FILES] == [
        "airflow.yaml",
        "argo-events.yaml",
        "argo-workflows.yaml",
        "jobset.yaml",
        "versions.yaml",
    ]


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_file_is_a_yaml_mapping(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


SECRET_KEY = re.compile(
    r"(?i)(pass(word)?|passwd|pswd|token|fernetkey|secretkey|apikey|credential)$"
)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_file_holds_no_secret_material(path: Path) -> None:
    for keys, value in leaves(load_yaml(path)):
        if keys and SECRET_KEY.search(keys[-1]) and value not in (None, ""):
            pytest.fail(f"{path.name}: {'.'.join(keys)} carries a secret value")
    text = path.read_text(encoding="utf-8")
    assert "-----BEGIN" not in text
    assert not re.search(r"://[^\s/:@]+:[^\s/@]+@", text), "credentials embedded in a URL"


# --- versions.yaml ----------------------------------------------------------------------------


def test_versions_pin_every_upstream_chart_to_an_exact_version(
    versions: dict[str, dict[str, str]],
) -> None:
    assert set(versions) == {*UPSTREAM, "jobset"}  # jobset: tests/charts/test_jobset_values.py
    for name, pin in ((name, versions[name]) for name in UPSTREAM):
        assert pin["repo"].startswith("https://"), name
        assert pin["chart"] == name
        assert isinstance(pin["version"], str), f"{name}: quote the version"
        assert EXACT_VERSION.match(pin["version"]), f"{name}: {pin['version']}"


def test_argo_workflows_chart_stays_on_argo_3(versions: dict[str, dict[str, str]]) -> None:
    """Chart 1.x ships Argo Workflows 4, which Metaflow is not known to support."""
    pin = versions["argo-workflows"]
    assert major(pin["version"]) == 0
    assert major(pin["appVersion"]) == 3


def test_airflow_is_pinned_to_an_airflow_2_release(
    versions: dict[str, dict[str, str]], airflow: Values
) -> None:
    """Metaflow's generated DAGs are Airflow 2 code."""
    pinned = versions["airflow"]["airflowVersion"]
    assert major(pinned) == 2
    assert EXACT_VERSION.match(pinned)
    assert airflow["airflowVersion"] == pinned
    assert airflow["defaultAirflowTag"] == pinned


# --- argo-workflows ---------------------------------------------------------------------------


def test_argo_workflows_is_pinned_to_the_release_with_the_cve_fixes(
    versions: dict[str, dict[str, str]],
) -> None:
    """v3.7.11 fixes CVE-2025-62156 and CVE-2025-62157 (the 3.6 line does not)."""
    pin = versions["argo-workflows"]
    assert (pin["version"], pin["appVersion"]) == ("0.47.5", "v3.7.11")


def test_argo_controller_and_server_are_confined_to_the_metaflow_namespace(
    argo_workflows: Values,
) -> None:
    managed = f"--managed-namespace={kube_names.METAFLOW_NS}"
    assert argo_workflows["singleNamespace"] is True
    assert argo_workflows["controller"]["extraArgs"] == [managed]
    assert argo_workflows["server"]["extraArgs"] == [managed]
    assert argo_workflows["controller"]["workflowNamespaces"] == [kube_names.METAFLOW_NS]
    # Cluster-scoped templates would need a ClusterRole.
    assert argo_workflows["controller"]["clusterWorkflowTemplates"] == {"enabled": False}
    assert argo_workflows["server"]["clusterWorkflowTemplates"] == {"enabled": False}


def test_argo_workflow_account_is_the_stacks_steps_account(argo_workflows: Values) -> None:
    """The name carries the stack, so services.py passes it; the file names no account."""
    from metaflow_gcp.config import Settings

    names = Settings(org_prefix="acme", project="p", stack="blue").names()
    assert releases.argo_workflows_set_string(names) == (
        (("controller", "workflowDefaults", "spec", "serviceAccountName"), "mf-blue-steps"),
    )
    assert "serviceAccountName" not in argo_workflows["controller"]["workflowDefaults"]["spec"]
    workflow = argo_workflows["workflow"]
    assert workflow["serviceAccount"] == {"create": False}
    # Namespaced, the chart would put the workflow Role into "argo"; charts/metaflow grants it.
    assert workflow["rbac"] == {"create": False}


def test_argo_server_asks_every_caller_for_their_own_token(argo_workflows: Values) -> None:
    server = argo_workflows["server"]
    assert server["enabled"] is True
    assert server["authModes"] == ["client"]
    assert "authMode" not in server
    assert "sso" not in server
    assert server["secure"] is False
    assert server["serviceType"] == "ClusterIP"
    assert "ingress" not in server


def test_argo_crds_are_installed_and_survive_uninstall(argo_workflows: Values) -> None:
    assert argo_workflows["crds"] == {"install": True, "keep": True}


def test_argo_cleans_up_finished_workflows(argo_workflows: Values) -> None:
    spec = argo_workflows["controller"]["workflowDefaults"]["spec"]
    assert spec["ttlStrategy"]["secondsAfterCompletion"] > 0
    assert spec["podGC"]["strategy"] in ("OnPodSuccess", "OnWorkflowSuccess", "OnPodCompletion")


# --- argo-events ------------------------------------------------------------------------------


def test_argo_events_controller_manages_the_metaflow_namespace_only(argo_events: Values) -> None:
    assert argo_events["controller"]["rbac"] == {
        "enabled": False,
        "namespaced": True,
        "managedNamespace": kube_names.METAFLOW_NS,
    }
    assert argo_events["controller"]["replicas"] == 1
    assert argo_events["crds"] == {"install": True, "keep": True}


def test_argo_events_offers_only_pinned_jetstream_versions(argo_events: Values) -> None:
    for entry in argo_events["configs"]["jetstream"]["versions"]:
        assert entry["version"] != "latest"
        for key in ("natsImage", "metricsExporterImage", "configReloaderImage"):
            assert not entry[key].endswith(":latest"), entry[key]
            assert ":" in entry[key], entry[key]


def test_argo_events_offers_no_nats_release_with_known_cves(argo_events: Values) -> None:
    """CVE-2025-30215 is fixed in NATS 2.10.27; NATS Streaming (STAN) is end of life."""
    for entry in argo_events["configs"]["jetstream"]["versions"]:
        version = tuple(int(p) for p in entry["version"].split("."))
        assert version >= (2, 10, 27)
        assert entry["natsImage"] == f"nats:{entry['version']}"
    assert argo_events["configs"]["nats"] == {"versions": []}


def test_argo_events_offers_the_version_our_event_bus_asks_for(argo_events: Values) -> None:
    bus = render_chart(ARGO_EVENTS_CHART, None, release="metaflow-argo-events", namespace="m")
    wanted = bus.of_kind("EventBus")[0]["spec"]["jetstream"]["version"]
    offered = {v["version"] for v in argo_events["configs"]["jetstream"]["versions"]}
    assert wanted in offered


# --- airflow ----------------------------------------------------------------------------------


def test_airflow_uses_the_local_executor(airflow: Values) -> None:
    assert airflow["executor"] == "LocalExecutor"


def test_airflow_keeps_uploaded_dags_on_a_volume(airflow: Values) -> None:
    assert airflow["dags"]["persistence"] == {
        "enabled": True,
        "size": "1Gi",
        "accessMode": "ReadWriteOnce",
    }
    assert "gitSync" not in airflow["dags"]


def test_airflow_scheduler_is_a_deployment_that_is_replaced_not_rolled(airflow: Values) -> None:
    """Worker persistence would turn the LocalExecutor scheduler into a StatefulSet; the
    single-node DAG disk cannot be attached to two scheduler pods at once."""
    assert airflow["workers"]["persistence"]["enabled"] is False
    assert airflow["scheduler"]["strategy"] == {"type": "Recreate"}


def test_only_the_scheduler_mounts_the_dag_disk(airflow: Values) -> None:
    assert airflow["triggerer"]["enabled"] is False
    assert airflow.get("dagProcessor", {}).get("enabled", False) is False


def test_airflow_scheduler_account_has_a_fixed_name(airflow: Values) -> None:
    account = airflow["scheduler"]["serviceAccount"]
    assert account["create"] is True
    assert account["name"] == "airflow-scheduler"
    # No Google identity: Metaflow's step pods run as their own account (airflow/metaflow).
    assert "annotations" not in account


def test_airflow_webserver_key_comes_from_a_secret(airflow: Values) -> None:
    from metaflow_gcp import services

    assert airflow["webserverSecretKeySecretName"] == services.AIRFLOW_SECRET
    assert "webserverSecretKey" not in airflow
    assert "fernetKey" not in airflow


def test_airflow_creates_no_default_admin_with_a_chart_password(airflow: Values) -> None:
    user = airflow["webserver"]["defaultUser"]
    assert user["enabled"] is False
    assert "password" not in user


def test_airflow_migrations_do_not_deadlock_helm_wait(airflow: Values) -> None:
    assert airflow["migrateDatabaseJob"]["useHelmHooks"] is False
    assert airflow["createUserJob"]["useHelmHooks"] is False


# --- optional: against the real upstream charts -----------------------------------------------

# Subtrees that are free-form maps in the upstream charts (any key is legitimate).
FREE_FORM = {
    ("config",),
    ("controller", "workflowDefaults"),
    ("scheduler", "strategy"),
}
RELEASES = {
    "argo-workflows": ("argo-workflows", "argo"),
    "argo-events": ("argo-events", "argo-events"),
    "airflow": ("airflow", "airflow"),
}


def unknown_keys(ours: Any, theirs: Any, path: tuple[str, ...] = ()) -> Iterator[str]:
    """Keys we set that the upstream defaults do not declare (free-form maps excepted)."""
    if path in FREE_FORM or not isinstance(ours, dict) or not isinstance(theirs, dict):
        return
    if not theirs:  # an empty default map means "anything goes"
        return
    for key, value in ours.items():
        if key not in theirs:
            yield ".".join((*path, key))
        else:
            yield from unknown_keys(value, theirs[key], (*path, key))


@pytest.mark.skipif(not os.environ.get("UPSTREAM_CHARTS_DIR"), reason="UPSTREAM_CHARTS_DIR not set")
@pytest.mark.parametrize("name", UPSTREAM)
def test_values_fit_the_pinned_upstream_chart(
    name: str, versions: dict[str, dict[str, str]]
) -> None:
    chart_dir = Path(os.environ["UPSTREAM_CHARTS_DIR"]) / f"{name}-{versions[name]['version']}"
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked")
    ours: Values = load_yaml(VALUES_DIR / f"{name}.yaml")
    with helm_python.Chart.load(chart_dir) as chart:
        assert chart.version == versions[name]["version"]
        # Raw defaults keep keys whose default is null; coalesced ones add the bundled
        # subcharts' values (e.g. airflow's postgresql). Together they are every known key.
        defaults = merged(chart.merge_values({}), chart.values)
    assert list(unknown_keys(ours, defaults)) == []
    release, namespace = RELEASES[name]
    rendered = render_chart(chart_dir, ours, release=release, namespace=namespace)
    assert rendered.manifests


# --- the pinned Argo charts rendered with our values (UPSTREAM_CHARTS_DIR) --------------------

# One stack's argo-workflows release, with the values services.py passes on the command line.
STACK_STEPS_KSA = "mf-blue-steps"
Grant = tuple[str, str, str, str]  # (namespace, api group/resource, verb, resource name or "*")


def pinned_chart(name: str, versions: dict[str, dict[str, str]]) -> Path:
    root = os.environ.get("UPSTREAM_CHARTS_DIR")
    if not root:
        pytest.skip("UPSTREAM_CHARTS_DIR not set")
    chart_dir = Path(root) / f"{name}-{versions[name]['version']}"
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked")
    return chart_dir


@pytest.fixture(scope="module")
def argo_wf(versions: dict[str, dict[str, str]]) -> Rendered:
    from metaflow_gcp.config import Settings

    names = Settings(org_prefix="acme", project="p", stack="blue").names()
    values: Values = load_yaml(VALUES_DIR / "argo-workflows.yaml")
    for path, text in releases.argo_workflows_set_string(names):
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = text
    release, namespace = RELEASES["argo-workflows"]
    chart = pinned_chart("argo-workflows", versions)
    return render_chart(chart, values, release=release, namespace=namespace)


@pytest.fixture(scope="module")
def argo_ev(versions: dict[str, dict[str, str]]) -> Rendered:
    release, namespace = RELEASES["argo-events"]
    chart = pinned_chart("argo-events", versions)
    return render_chart(
        chart, load_yaml(VALUES_DIR / "argo-events.yaml"), release=release, namespace=namespace
    )


def deployment(rendered: Rendered, suffix: str) -> Manifest:
    [found] = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith(suffix)]
    return found


def args_of(workload: Manifest) -> list[str]:
    args: list[str] = pod_spec(workload)["containers"][0]["args"]
    return args


def account_grants(rendered: Rendered, account: str, account_ns: str) -> set[Grant]:
    """Everything the Roles bound to one service account allow, namespace by namespace."""
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"]): r for r in rendered.of_kind("Role")
    }
    found: set[Grant] = set()
    for binding in rendered.of_kind("RoleBinding"):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": account_ns}
        if subject not in binding["subjects"]:
            continue
        assert binding["roleRef"]["kind"] == "Role"
        ns = binding["metadata"]["namespace"]
        for rule in roles[(ns, binding["roleRef"]["name"])]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames", ["*"]):
                            found.add((ns, f"{group}/{resource}", verb, name))
    return found


def test_rendered_argo_objects_are_valid_kubernetes(argo_wf: Rendered, argo_ev: Rendered) -> None:
    for rendered in (argo_wf, argo_ev):
        problems = [p for m in rendered.manifests if (p := schema_problem(m))]
        assert problems == []


def test_argo_workflows_grants_nothing_cluster_wide(argo_wf: Rendered) -> None:
    """The only ClusterRoles are the chart's aggregation roles: they extend Kubernetes' own
    view/edit/admin with the Argo resources and are bound to nobody."""
    assert argo_wf.of_kind("ClusterRoleBinding") == []
    for role in argo_wf.of_kind("ClusterRole"):
        labels = role["metadata"]["labels"]
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)
    for binding in argo_wf.of_kind("RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["metadata"]["namespace"] in (kube_names.ARGO_NS, kube_names.METAFLOW_NS)


def test_argo_workflows_controller_and_server_watch_metaflow_only(argo_wf: Rendered) -> None:
    for suffix in ("-workflow-controller", "-server"):
        args = args_of(deployment(argo_wf, suffix))
        assert args.count("--namespaced") == 1
        managed = [a for a in args if a.startswith("--managed-namespace")]
        assert managed == [f"--managed-namespace={kube_names.METAFLOW_NS}"]


def test_argo_server_takes_only_client_tokens(argo_wf: Rendered) -> None:
    args = args_of(deployment(argo_wf, "-server"))
    assert [a for a in args if a.startswith("--auth-mode")] == ["--auth-mode=client"]
    assert "--secure=false" in args
    [service] = argo_wf.of_kind("Service")
    assert service["metadata"]["name"] == kube_names.ARGO_SERVER_SERVICE
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [kube_names.ARGO_SERVER_PORT]
    assert not {"Ingress", "HTTPRoute"} & {m["kind"] for m in argo_wf.manifests}


def test_argo_workflow_defaults_reach_the_controller_with_the_steps_account(
    argo_wf: Rendered,
) -> None:
    [config_map] = [
        m for m in argo_wf.of_kind("ConfigMap") if m["metadata"]["name"].endswith("-configmap")
    ]
    defaults = yaml.safe_load(config_map["data"]["config"])["workflowDefaults"]["spec"]
    assert defaults["serviceAccountName"] == STACK_STEPS_KSA
    assert defaults["podGC"] == {"strategy": "OnWorkflowSuccess"}


def test_argo_controller_may_run_workflows_in_metaflow(argo_wf: Rendered) -> None:
    controller = deployment(argo_wf, "-workflow-controller")
    grants = account_grants(argo_wf, pod_spec(controller)["serviceAccountName"], "argo")
    here = {(g, v, n) for ns, g, v, n in grants if ns == kube_names.METAFLOW_NS}
    for resource in ("pods", "argoproj.io/workflows", "argoproj.io/workflowtasksets"):
        group_resource = resource if "/" in resource else f"/{resource}"
        assert {(group_resource, v, "*") for v in ("create", "watch", "patch", "delete")} <= here
    assert ("/pods/exec", "create", "*") in here  # signals to the emissary executor
    assert ("argoproj.io/workflowtaskresults", "watch", "*") in here
    assert ("argoproj.io/cronworkflows", "update", "*") in here
    assert ("/serviceaccounts", "get", "*") in here  # finds the agent's token Secret name
    # Secrets: only the agent's optional CA bundle, by name.
    secrets = {(v, n) for g, v, n in here if g == "/secrets"}
    assert secrets == {("get", "argo-workflows-agent-ca-certificates")}
    # Its configuration and leader lease stay at home.
    home = {(g, v, n) for ns, g, v, n in grants if ns == kube_names.ARGO_NS}
    assert ("/configmaps", "get", "*") in home
    assert ("coordination.k8s.io/leases", "update", "workflow-controller") in home


def test_argo_server_own_account_reads_its_config_and_the_metaflow_caches(
    argo_wf: Rendered,
) -> None:
    """Client mode: every request runs with the caller's token. The server's own account only
    loads its ConfigMap and keeps the read caches it answers listings from."""
    server = deployment(argo_wf, "-server")
    account = pod_spec(server)["serviceAccountName"]
    config_map = next(m for m in argo_wf.of_kind("ConfigMap"))["metadata"]["name"]
    assert account_grants(argo_wf, account, "argo") == {
        ("argo", "/configmaps", "get", config_map),
        *(
            (kube_names.METAFLOW_NS, f"argoproj.io/{r}", v, "*")
            for r in ("workflows", "workflowtemplates")
            for v in ("get", "list", "watch")
        ),
    }


def test_nothing_in_argo_takes_connections(argo_wf: Rendered) -> None:
    """The UI is reached by port-forward, which NetworkPolicy does not see."""
    [policy] = argo_wf.of_kind("NetworkPolicy")
    assert policy["metadata"]["namespace"] == kube_names.ARGO_NS
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_argo_events_grants_nothing_cluster_wide(argo_ev: Rendered) -> None:
    assert argo_ev.of_kind("ClusterRole") == []
    assert argo_ev.of_kind("ClusterRoleBinding") == []
    # The cluster-wide validating webhook is not installed in namespaced mode.
    assert [d["metadata"]["name"] for d in argo_ev.of_kind("Deployment")] == [
        "argo-events-controller-manager"
    ]


def test_argo_events_controller_manages_metaflow_only(argo_ev: Rendered) -> None:
    controller = deployment(argo_ev, "-controller-manager")
    args = args_of(controller)
    assert args == [
        "controller",
        "--leader-election=false",
        "--namespaced",
        "--managed-namespace",
        kube_names.METAFLOW_NS,
    ]
    grants = account_grants(argo_ev, pod_spec(controller)["serviceAccountName"], "argo-events")
    assert {ns for ns, *_ in grants} == {kube_names.METAFLOW_NS}
    resources = {g for _, g, _, _ in grants}
    assert "/pods" not in resources
    assert "/pods/exec" not in resources
    assert {"apps/statefulsets", "/persistentvolumeclaims", "/secrets"} <= resources


def test_argo_events_controller_role_names_the_plurals_the_crds_register(
    argo_ev: Rendered,
) -> None:
    """A rule naming "eventbuses" grants nothing: the EventBus CRD's plural is "eventbus"."""
    registered = {
        crd["spec"]["names"]["plural"] for crd in argo_ev.of_kind("CustomResourceDefinition")
    }
    [role] = argo_ev.of_kind("Role")
    named = {
        r
        for rule in role["rules"]
        if rule["apiGroups"] == ["argoproj.io"]
        for r in rule["resources"]
    }
    assert {r.split("/")[0] for r in named} == registered


def test_argo_events_controller_offers_exactly_our_jetstream_images(
    argo_ev: Rendered, argo_events: Values
) -> None:
    [config_map] = argo_ev.of_kind("ConfigMap")
    config = yaml.safe_load(config_map["data"]["controller-config.yaml"])["eventBus"]
    assert config["jetstream"]["versions"] == argo_events["configs"]["jetstream"]["versions"]
    # No "nats" section at all: the controller then refuses every NATS Streaming bus.
    assert "nats" not in config


def test_nothing_in_argo_events_takes_connections(argo_ev: Rendered) -> None:
    [policy] = argo_ev.of_kind("NetworkPolicy")
    assert policy["metadata"]["namespace"] == kube_names.ARGO_EVENTS_NS
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def restricted_problems(workload: Manifest) -> list[str]:
    """What keeps a pod from Pod Security "restricted" (the checks that apply to these pods)."""
    pod = pod_spec(workload)
    pod_ctx = pod.get("securityContext", {})
    problems = []
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        ctx = {**pod_ctx, **c.get("securityContext", {})}
        where = f"{workload['metadata']['name']}/{c['name']}"
        if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser") == 0:
            problems.append(f"{where}: may run as root")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: may escalate")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: keeps capabilities")
        if ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: no seccomp profile")
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append(f"{workload['metadata']['name']}: shares a host namespace")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        problems.append(f"{workload['metadata']['name']}: mounts a host path")
    return problems


def test_argo_pods_meet_pod_security_restricted(argo_wf: Rendered, argo_ev: Rendered) -> None:
    workloads = [*argo_wf.of_kind("Deployment"), *argo_ev.of_kind("Deployment")]
    assert len(workloads) == 3
    assert [p for w in workloads for p in restricted_problems(w)] == []
