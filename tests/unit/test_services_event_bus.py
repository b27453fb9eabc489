"""services.up moves an existing EventBus onto persistent disks.

Stacks made before the EventBus asked for disks have a NATS StatefulSet without
volumeClaimTemplates; Kubernetes refuses that change on a StatefulSet, so the Argo Events
controller's update fails until the StatefulSet is deleted and made again.
"""

from __future__ import annotations

from typing import Any

from metaflow_gcp import services
from tests.support.cluster import FakeCluster
from tests.support.services_up import (  # noqa: F401 - fixtures, found by pytest by name
    ServicesUp,
    cluster_fixture,
    private_homes_fixture,
    state_fixture,
    tools_fixture,
    up_fixture,
)

BUS = ("metaflow", services.EVENT_BUS_STATEFULSET)


def nats(*, disks: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 3, "serviceName": "eventbus-default-js-svc"}
    if disks:
        spec["volumeClaimTemplates"] = [{"metadata": {"name": "eventbus-default-js-vol"}}]
    return {"kind": "StatefulSet", "metadata": {"name": BUS[1]}, "spec": spec}


def test_the_statefulset_is_the_one_the_controller_makes_for_the_default_bus() -> None:
    assert services.EVENT_BUS_STATEFULSET == "eventbus-default-js"


def test_an_event_bus_made_without_disks_is_recreated_after_the_chart_asks_for_them(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    cluster.stateful_sets[BUS] = nats(disks=False)

    run = up(argo=True)

    chart = run.index("upgrade", "--install", "metaflow-argo-events")
    delete = run.index("delete", "statefulset", BUS[1])
    assert chart < delete
    assert "--namespace=metaflow" in run.argvs()[delete]
    assert BUS not in cluster.stateful_sets
    assert "EventBus default on persistent disks" in run.output


def test_an_event_bus_on_disks_and_a_new_stack_are_left_alone(
    cluster: FakeCluster, up: ServicesUp
) -> None:
    up(argo=True)  # a new stack: the controller has made nothing yet
    cluster.stateful_sets[BUS] = nats(disks=True)
    up(argo=True)

    assert not [argv for argv in cluster.mutations if "statefulset" in argv]
    assert BUS in cluster.stateful_sets


def test_without_argo_the_event_bus_is_not_looked_at(cluster: FakeCluster, up: ServicesUp) -> None:
    cluster.stateful_sets[BUS] = nats(disks=False)

    run = up(argo=False)

    assert not any("statefulset" in argv for argv in run.argvs())
