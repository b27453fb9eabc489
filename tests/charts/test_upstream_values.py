"""Specification of values/: the pins and settings for the upstream Argo and Airflow charts.

The upstream charts are not vendored, so these tests check our files on their own. To also
check every key against the pinned charts, unpack them (`helm pull REPO/CHART --version V
--untar --untardir DIR` gives DIR/<chart>) into DIR/<chart>-<version>/ and set
UPSTREAM_CHARTS_DIR=DIR; the last test then renders each chart with our values.
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

from tests.charts.conftest import (
    ARGO_EVENTS_CHART,
    METAFLOW_CHART,
    VALUES_DIR,
    Values,
    load_yaml,
    merged,
    render_chart,
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


def test_argo_controller_is_cluster_wide_and_runs_workflows_in_metaflow(
    argo_workflows: Values,
) -> None:
    assert argo_workflows["singleNamespace"] is False
    assert argo_workflows["controller"]["workflowNamespaces"] == ["metaflow"]


def test_argo_workflows_use_the_metaflow_service_account_without_creating_it(
    argo_workflows: Values,
) -> None:
    workflow = argo_workflows["workflow"]
    assert workflow["serviceAccount"] == {"create": False, "name": "metaflow"}
    assert workflow["rbac"]["create"] is True


def test_argo_workflows_run_as_the_metaflow_account_where_metaflow_sets_none(
    argo_workflows: Values,
) -> None:
    """Metaflow names a service account on each step template, not on the Workflow; Argo's
    agent pod (HTTP templates, i.e. Metaflow's notification exit hooks) runs as the
    workflow-level account, which would otherwise be `default`. charts/metaflow gives that
    account the agent's RBAC and its token Secret."""
    from metaflow_gcp import nextsteps

    metaflow_chart = load_yaml(METAFLOW_CHART / "values.yaml")
    account = argo_workflows["controller"]["workflowDefaults"]["spec"]["serviceAccountName"]
    assert account == argo_workflows["workflow"]["serviceAccount"]["name"]
    assert account == metaflow_chart["serviceAccount"]["name"] == nextsteps.METAFLOW_KSA
    assert metaflow_chart["argoWorkflows"]["enabled"] is True
    rendered = render_chart(METAFLOW_CHART, None, release="metaflow", namespace="metaflow")
    assert f"{account}.service-account-token" in rendered.names("Secret")


def test_argo_server_is_a_port_forward_only_ui(argo_workflows: Values) -> None:
    server = argo_workflows["server"]
    assert server["enabled"] is True
    assert server["authModes"] == ["server"]
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


def test_argo_events_controller_watches_the_whole_cluster(argo_events: Values) -> None:
    assert argo_events["controller"]["rbac"] == {"enabled": True, "namespaced": False}
    assert argo_events["crds"] == {"install": True, "keep": True}


def test_argo_events_offers_only_pinned_jetstream_versions(argo_events: Values) -> None:
    for entry in argo_events["configs"]["jetstream"]["versions"]:
        assert entry["version"] != "latest"
        for key in ("natsImage", "metricsExporterImage", "configReloaderImage"):
            assert not entry[key].endswith(":latest"), entry[key]
            assert ":" in entry[key], entry[key]


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


@pytest.mark.skipif(not os.environ.get("UPSTREAM_CHARTS_DIR"), reason="UPSTREAM_CHARTS_DIR not set")
def test_the_pinned_argo_chart_hands_the_workflow_account_to_the_controller(
    versions: dict[str, dict[str, str]],
) -> None:
    """controller.workflowDefaults is a free-form map, so the key check above cannot catch a
    misplaced key: look at what the controller actually reads."""
    name = "argo-workflows"
    chart_dir = Path(os.environ["UPSTREAM_CHARTS_DIR"]) / f"{name}-{versions[name]['version']}"
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked")
    release, namespace = RELEASES[name]
    ours: Values = load_yaml(VALUES_DIR / f"{name}.yaml")
    rendered = render_chart(chart_dir, ours, release=release, namespace=namespace)
    [config_map] = [
        m for m in rendered.of_kind("ConfigMap") if m["metadata"]["name"].endswith("-configmap")
    ]
    config = yaml.safe_load(config_map["data"]["config"])
    assert config["workflowDefaults"]["spec"]["serviceAccountName"] == "metaflow"
