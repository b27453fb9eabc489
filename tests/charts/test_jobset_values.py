"""Specification of JobSet (Metaflow's @parallel): the pin, values/jobset.yaml, charts/metaflow-jobset.

The upstream chart is rendered from its unpacked copy when UPSTREAM_CHARTS_DIR points at it
(`<dir>/jobset-<version>/`); without it those tests skip and the rest still hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import helm_python
import pytest

from metaflow_gcp import releases, services
from metaflow_gcp.kube_names import JOBSET_NS, RELEASES
from tests.charts.conftest import (
    CHARTS_DIR,
    REPO_ROOT,
    VALUES_DIR,
    Manifest,
    Rendered,
    Values,
    container,
    lint_chart,
    load_yaml,
    merged,
    pod_labels,
    pod_spec,
    render_chart,
    schema_problem,
)
from tests.support.network_policy import admits

OUR_CHART = CHARTS_DIR / "metaflow-jobset"


@pytest.fixture(scope="module")
def ours() -> Values:
    data: Values = load_yaml(VALUES_DIR / "jobset.yaml")
    return data


@pytest.fixture(scope="module")
def boundary() -> Rendered:
    return render_chart(OUR_CHART, None, release="metaflow-jobset", namespace=JOBSET_NS)


@pytest.fixture(scope="module")
def upstream_dir(versions: dict[str, dict[str, str]]) -> Path:
    root = os.environ.get("UPSTREAM_CHARTS_DIR")
    if not root:
        pytest.skip("UPSTREAM_CHARTS_DIR not set")
    chart_dir = Path(root) / f"jobset-{versions['jobset']['version']}"
    if not chart_dir.is_dir():
        pytest.skip(f"{chart_dir} not unpacked")
    return chart_dir


@pytest.fixture(scope="module")
def upstream(upstream_dir: Path, ours: Values) -> Rendered:
    return render_chart(upstream_dir, ours, release="jobset", namespace=JOBSET_NS)


def controller(rendered: Rendered) -> Manifest:
    [deployment] = rendered.of_kind("Deployment")
    return deployment


# --- the pin ---------------------------------------------------------------------------------


def test_jobset_is_pinned_to_the_published_oci_chart(versions: dict[str, dict[str, str]]) -> None:
    pin = versions["jobset"]
    assert pin == {
        "repo": "oci://registry.k8s.io/jobset/charts",
        "chart": "jobset",
        "version": "0.12.0",
        "appVersion": "v0.12.0",
    }
    assert releases.load_versions(REPO_ROOT)["jobset"] == releases.Upstream(
        pin["repo"], pin["chart"], pin["version"]
    )


def test_an_oci_chart_is_installed_by_reference_and_version_without_repo() -> None:
    """helm takes an OCI chart as one reference; --repo is only for index.yaml repositories."""
    pin = releases.load_versions(REPO_ROOT)["jobset"]
    release = releases.Release(
        "jobset",
        JOBSET_NS,
        pin.chart,
        pin.chart,
        pin.version,
        repo=pin.repo,
        values_file=VALUES_DIR / "jobset.yaml",
    )
    argv = release.argv()
    assert argv[:4] == [
        "upgrade",
        "--install",
        "jobset",
        "oci://registry.k8s.io/jobset/charts/jobset",
    ]
    assert "--version=0.12.0" in argv
    assert not any(a.startswith("--repo") for a in argv)
    assert f"--namespace={JOBSET_NS}" in argv and "--create-namespace" in argv
    assert release.chart_label == "jobset-0.12.0"  # what `helm list` shows


def test_jobset_and_its_boundary_are_removed_before_metaflow_and_after_argo() -> None:
    order = [name for name, _ in RELEASES]
    assert ("jobset", JOBSET_NS) in RELEASES
    assert order.index("jobset") < order.index("metaflow")
    assert services.JOBSET_RELEASES == (("metaflow-jobset", JOBSET_NS), ("jobset", JOBSET_NS))


# --- values/jobset.yaml on their own -------------------------------------------------------


def test_the_controller_image_is_the_released_one_not_the_charts_staging_default(
    ours: Values,
) -> None:
    assert ours["image"] == {
        "repository": "registry.k8s.io/jobset/jobset",
        "tag": "v0.12.0",
        "pullPolicy": "IfNotPresent",
    }


def test_the_controller_is_sized_for_a_handful_of_jobsets(ours: Values) -> None:
    resources = ours["controller"]["resources"]
    assert resources["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert resources["limits"] == {"cpu": "1", "memory": "512Mi"}


def test_nothing_needs_cert_manager_or_prometheus(ours: Values) -> None:
    assert ours["certManager"] == {"enable": False}
    assert ours["prometheus"] == {"enable": False}


# --- charts/metaflow-jobset --------------------------------------------------------------------


def test_the_boundary_chart_is_valid_and_lints_clean(boundary: Rendered) -> None:
    assert [p for m in boundary.manifests if (p := schema_problem(m))] == []
    assert lint_chart(OUR_CHART, None, namespace=JOBSET_NS) == []
    assert {m["kind"] for m in boundary.manifests} == {"NetworkPolicy"}


def test_only_the_webhook_port_of_the_controller_is_open(boundary: Rendered) -> None:
    policies = boundary.of_kind("NetworkPolicy")
    controller_pod = {
        "app.kubernetes.io/name": "jobset",
        "app.kubernetes.io/instance": "jobset",
        "app.kubernetes.io/component": "controller",
    }
    anyone: dict[str, str] = {}
    assert admits(policies, anyone, controller_pod, 9443)
    for port in (8443, 8081, 443):  # metrics, health (kubelet probes need no rule)
        assert not admits(policies, anyone, controller_pod, port), port
    assert not admits(policies, anyone, {"app": "something-else"}, 9443)


def test_the_webhook_rule_names_no_source_because_the_api_server_is_off_the_pod_network(
    boundary: Rendered,
) -> None:
    rule = boundary.get("NetworkPolicy", "jobset-webhook-from-api-server")["spec"]["ingress"]
    assert rule == [{"ports": [{"protocol": "TCP", "port": 9443}]}]


# --- against the unpacked upstream chart -----------------------------------------------------


# Handed to the pod spec as they are (toYaml): any field of the Kubernetes type is fine, and
# the rendered Deployment is schema-validated below.
FREE_FORM = {("controller", "securityContext"), ("controller", "podSecurityContext")}


def unknown_keys(ours: Any, theirs: Any, path: tuple[str, ...] = ()) -> list[str]:
    if path in FREE_FORM:
        return []
    if not isinstance(ours, dict) or not isinstance(theirs, dict) or not theirs:
        return []
    found: list[str] = []
    for key, value in ours.items():
        if key not in theirs:
            found.append(".".join((*path, key)))
        else:
            found += unknown_keys(value, theirs[key], (*path, key))
    return found


def test_every_key_we_set_exists_in_the_pinned_chart(
    upstream_dir: Path, ours: Values, versions: dict[str, dict[str, str]]
) -> None:
    with helm_python.Chart.load(upstream_dir) as chart:
        assert chart.version == versions["jobset"]["version"]
        defaults = merged(chart.merge_values({}), chart.values)
    assert unknown_keys(ours, defaults) == []


def test_the_rendered_chart_is_valid_kubernetes(upstream: Rendered) -> None:
    built_in = [m for m in upstream.manifests if "x-k8s.io" not in m["apiVersion"]]
    assert [p for m in built_in if (p := schema_problem(m))] == []


def test_the_controller_runs_the_pinned_image_under_pod_security_restricted(
    upstream: Rendered,
) -> None:
    deployment = controller(upstream)
    spec = pod_spec(deployment)
    manager = spec["containers"][0]
    assert manager["image"] == "registry.k8s.io/jobset/jobset:v0.12.0"
    assert manager["imagePullPolicy"] == "IfNotPresent"
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    context = manager["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert manager["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert not spec.get("hostNetwork")


def test_our_policy_selects_the_controller_and_opens_its_webhook_port(
    upstream: Rendered, boundary: Rendered
) -> None:
    deployment = controller(upstream)
    policies = boundary.of_kind("NetworkPolicy")
    labels = pod_labels(deployment)
    webhook = next(
        p for p in container(deployment, "controller")["ports"] if p["name"] == "webhook"
    )
    assert admits(policies, {}, labels, webhook["containerPort"])
    metrics = next(
        p for p in container(deployment, "controller")["ports"] if p["name"] == "metrics"
    )
    assert not admits(policies, {}, labels, metrics["containerPort"])
    # The API server calls the webhook Service, which forwards to that named port.
    [service] = [s for s in upstream.of_kind("Service") if s["spec"]["ports"][0]["port"] == 443]
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_the_pod_webhooks_only_see_jobset_pods(upstream: Rendered) -> None:
    """A webhook on every pod creation would make the controller a cluster-wide dependency."""
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in upstream.of_kind(kind)[0]["webhooks"]:
            if "pods" in hook["rules"][0]["resources"]:
                assert hook["objectSelector"] == {
                    "matchExpressions": [
                        {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}
                    ]
                }
