"""@kubernetes(gpu=1) and @parallel, compiled by the real client with the stack's config.

Facts these tests pin (Metaflow 2.19, plugins/argo/argo_workflows.py): a GPU step's container
gets the limit `<vendor>.com/gpu` (vendor METAFLOW_KUBERNETES_GPU_VENDOR, default nvidia) and
no toleration or node selector. On GKE the ExtendedResourceToleration admission controller
gives every pod that requests `nvidia.com/gpu` the toleration for the GPU pool's taint.
A @parallel step compiles to an Argo resource step that creates a JobSet (jobset.x-k8s.io), so
the account that step runs as needs RBAC on jobsets in the Metaflow namespace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metaflow_gcp import kube_names
from tests.clients import argo
from tests.clients.cluster import Installed, workflow_default_account
from tests.clients.conftest import ClientStack, MetaflowCli
from tests.clients.crds import Validator

pytestmark = pytest.mark.clients

Manifest = dict[str, Any]
GPU = "nvidia.com/gpu"
JOBSET_GROUP = "jobset.x-k8s.io"


@pytest.fixture(scope="module")
def compiled(metaflow: MetaflowCli, flow_dir: Path) -> Manifest:
    result = metaflow.run(
        flow_dir / "gpu_parallel_flow.py", "argo-workflows", "create", "--only-json"
    )
    return argo.parse_only_json(result.stdout)


@pytest.fixture(scope="module")
def jobset_step(compiled: Manifest) -> Manifest:
    return argo.template(compiled, "train")


@pytest.fixture(scope="module")
def jobset(jobset_step: Manifest) -> Manifest:
    return argo.resource_manifest(jobset_step)


# -- GPU -------------------------------------------------------------------------------------


def test_a_gpu_step_asks_for_one_nvidia_gpu(compiled: Manifest) -> None:
    """Kubernetes takes an extended resource's request from its limit: the pod requests 1 GPU."""
    resources = argo.template(compiled, "start")["container"]["resources"]
    assert resources["limits"][GPU] == "1"
    assert GPU not in (resources.get("requests") or {})


def test_steps_without_gpu_ask_for_none(compiled: Manifest) -> None:
    for name in ("join", "end"):
        resources = argo.template(compiled, name)["container"]["resources"]
        assert GPU not in (resources.get("limits") or {}), name


def test_metaflow_adds_no_toleration_or_node_selector_for_a_gpu(compiled: Manifest) -> None:
    """Landing on the GPU pool is left to GKE (the toleration) and to the GPU request itself."""
    start = argo.template(compiled, "start")
    assert not start.get("tolerations")
    assert not start.get("nodeSelector")


def test_the_gpu_template_is_valid_for_the_pinned_argo_crds(
    compiled: Manifest, argo_crds: Validator
) -> None:
    assert argo_crds.problems(compiled) == []


# -- @parallel -------------------------------------------------------------------------------


def test_a_parallel_step_compiles_to_a_jobset_that_argo_creates(
    jobset_step: Manifest, jobset: Manifest
) -> None:
    assert jobset_step["resource"]["action"] == "create"
    assert jobset["apiVersion"] == f"{JOBSET_GROUP}/v1alpha2"
    assert jobset["kind"] == "JobSet"
    assert [job["name"] for job in jobset["spec"]["replicatedJobs"]] == ["control", "worker"]


def test_the_jobset_is_valid_for_the_pinned_jobset_crd(
    jobset: Manifest, jobset_crds: Validator
) -> None:
    assert jobset_crds.crd_for(jobset).scope == "Namespaced"
    assert jobset_crds.problems(jobset) == []


def test_the_jobset_crd_check_refuses_what_the_api_server_would(
    jobset: Manifest, jobset_crds: Validator
) -> None:
    broken = {**jobset, "spec": {**jobset["spec"], "replicatedJobs": "two"}}
    assert any("replicatedJobs" in p for p in jobset_crds.problems(broken))


def test_the_jobset_pods_run_in_the_metaflow_namespace_as_the_steps_account(
    jobset: Manifest, client_stack: ClientStack, installed: Installed
) -> None:
    config = client_stack.config()
    namespace, account = (
        config["METAFLOW_KUBERNETES_NAMESPACE"],
        config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"],
    )
    assert namespace == kube_names.METAFLOW_NS
    for pod in argo.pod_specs_of_jobset(jobset):
        assert pod["metadata"]["namespace"] == namespace
        assert pod["spec"]["serviceAccountName"] == account
    assert installed.find("ServiceAccount", account, namespace) is not None


def test_the_jobset_names_only_the_metaflow_namespace_and_never_the_services_account(
    jobset: Manifest, client_stack: ClientStack
) -> None:
    namespaces, accounts = argo.names_used(jobset)
    assert namespaces == {kube_names.METAFLOW_NS}
    assert client_stack.accounts.services not in accounts


@pytest.mark.parametrize(
    "verb",
    [
        # Argo's executor (workflow/executor/resource.go): `kubectl create -f`, then GETs the
        # JobSet until its success or failure condition holds, then `kubectl get -o jsonpath`
        # for the step's output parameters.
        "create",
        "get",
    ],
)
def test_the_account_argo_creates_the_jobset_as_may_do_so_in_the_metaflow_namespace(
    verb: str,
    compiled: Manifest,
    jobset_step: Manifest,
    client_stack: ClientStack,
    installed: Installed,
) -> None:
    account = (
        jobset_step.get("serviceAccountName")
        or compiled["spec"].get("serviceAccountName")
        or workflow_default_account(client_stack.stack)
    )
    assert account, "the JobSet step would run as the namespace's `default` account"
    namespace = compiled["metadata"]["namespace"]
    assert installed.allows((namespace, account), verb, JOBSET_GROUP, "jobsets", namespace)
