"""The GPU and Spot pool settings: what can be known offline is checked before any cloud call."""

from __future__ import annotations

import pytest

from metaflow_gcp.config import load_settings
from metaflow_gcp.errors import ConfigErrors
from metaflow_gcp.gcp import nodepools
from metaflow_gcp.gcp.accelerators import ACCELERATORS, default_machine

GOOD = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}


def errors_for(**changes: object) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_settings({**GOOD, **changes})
    return [str(error) for error in caught.value.errors]


def test_no_pool_unless_asked() -> None:
    s = load_settings(GOOD)
    assert (s.gpu_type, s.gpu_per_node, s.gpu_max_nodes, s.gpu_spot, s.spot_max_nodes) == (
        "",
        1,
        2,
        False,
        0,
    )
    assert nodepools.gpu_pool(s) is None and nodepools.spot_pool(s) is None


@pytest.mark.parametrize(
    ("gpu_type", "count", "machine"),
    [
        ("nvidia-l4", 1, "g2-standard-4"),
        ("nvidia-l4", 2, "g2-standard-24"),
        ("nvidia-l4", 8, "g2-standard-96"),
        ("nvidia-tesla-a100", 1, "a2-highgpu-1g"),
        ("nvidia-tesla-a100", 16, "a2-megagpu-16g"),
        ("nvidia-a100-80gb", 1, "a2-ultragpu-1g"),
        ("nvidia-a100-80gb", 4, "a2-ultragpu-4g"),
        ("nvidia-h100-80gb", 8, "a3-highgpu-8g"),
        ("nvidia-tesla-t4", 1, "n1-standard-4"),
        ("nvidia-tesla-t4", 4, "n1-standard-16"),
        ("nvidia-tesla-v100", 8, "n1-standard-32"),
    ],
)
def test_the_default_machine_type_is_the_smallest_that_carries_the_gpus(
    gpu_type: str, count: int, machine: str
) -> None:
    s = load_settings({**GOOD, "gpu_type": gpu_type, "gpu_per_node": count})
    pool = nodepools.gpu_pool(s)
    assert pool is not None and pool.machine_type == machine
    assert (pool.gpu_type, pool.gpu_count, pool.max_nodes, pool.spot) == (gpu_type, count, 2, False)


def test_every_default_machine_type_passes_its_own_rules() -> None:
    for gpu_type, spec in ACCELERATORS.items():
        for count in spec.counts():
            load_settings(
                {
                    **GOOD,
                    "gpu_type": gpu_type,
                    "gpu_per_node": count,
                    "gpu_machine_type": default_machine(gpu_type, count),
                }
            )


def test_an_unknown_gpu_name_suggests_the_close_one() -> None:
    assert errors_for(gpu_type="nvidia-tesla-l4") == [
        "gpu_type: 'nvidia-tesla-l4' is not a GPU type this tool knows (nvidia-l4, "
        "nvidia-tesla-a100, nvidia-a100-80gb, nvidia-h100-80gb, nvidia-tesla-t4, "
        'nvidia-tesla-v100, nvidia-tesla-p100, nvidia-tesla-p4). Fix: gpu_type = "nvidia-l4"'
    ]
    assert errors_for(gpu_type="t4")[0].endswith('Fix: gpu_type = "nvidia-tesla-t4"')


def test_a_count_the_gpu_is_not_sold_in_is_refused() -> None:
    assert errors_for(gpu_type="nvidia-l4", gpu_per_node=3) == [
        "gpu_per_node: 3 nvidia-l4 GPUs per node is not offered (Compute Engine offers 1, 2, 4, "
        "8). Fix: gpu_per_node = 1"
    ]
    assert errors_for(gpu_type="nvidia-tesla-t4", gpu_per_node=8)[0].startswith("gpu_per_node: 8")


def test_a_machine_type_must_carry_the_gpu_and_the_count() -> None:
    assert errors_for(gpu_type="nvidia-l4", gpu_machine_type="n1-standard-8") == [
        "gpu_machine_type: 'n1-standard-8' does not carry nvidia-l4 GPUs (they come built into "
        "G2 machine types: g2-standard-12, g2-standard-16, g2-standard-24, g2-standard-32, "
        "g2-standard-4, g2-standard-48, g2-standard-8, g2-standard-96). Fix: gpu_machine_type = "
        '"g2-standard-4", or leave it empty for the smallest that fits'
    ]
    assert errors_for(gpu_type="nvidia-l4", gpu_per_node=2, gpu_machine_type="g2-standard-8") == [
        "gpu_machine_type: 'g2-standard-8' carries 1 nvidia-l4 GPU(s), not gpu_per_node = 2. "
        'Fix: gpu_per_node = 1, or gpu_machine_type = "g2-standard-24"'
    ]
    assert errors_for(gpu_type="nvidia-tesla-t4", gpu_machine_type="e2-standard-8") == [
        "gpu_machine_type: 'e2-standard-8' cannot take nvidia-tesla-t4 GPUs (they attach to N1 "
        'machine types only). Fix: gpu_machine_type = "n1-standard-4", or leave it empty'
    ]
    assert errors_for(gpu_type="nvidia-tesla-v100", gpu_machine_type="n1-highmem-16") == [
        "gpu_machine_type: 'n1-highmem-16' has 16 vCPUs; with 1 nvidia-tesla-v100 GPU(s) a node "
        "may have at most 12. Fix: pick an N1 machine type of at most 12 vCPUs, or more GPUs "
        "per node"
    ]


def test_an_n1_machine_type_of_any_shape_within_the_limit_is_fine() -> None:
    for machine in ("n1-highmem-8", "n1-highcpu-32", "n1-custom-8-30720"):
        s = load_settings({**GOOD, "gpu_type": "nvidia-tesla-t4", "gpu_machine_type": machine})
        pool = nodepools.gpu_pool(s)
        assert pool is not None and pool.machine_type == machine


def test_pool_sizes_and_switches_are_checked() -> None:
    assert errors_for(gpu_type="nvidia-l4", gpu_max_nodes=0) == [
        "gpu_max_nodes: must be at least 1 (the pool scales from zero up to it). "
        "Fix: gpu_max_nodes = 2"
    ]
    assert errors_for(spot_max_nodes=-1) == [
        "spot_max_nodes: must be 0 (no Spot pool) or more. Fix: spot_max_nodes = 0"
    ]
    assert errors_for(gpu_machine_type="g2-standard-4") == [
        "gpu_machine_type: has no effect without gpu_type. Fix: set gpu_type (e.g. "
        '"nvidia-l4") or remove gpu_machine_type'
    ]
    assert errors_for(gpu_spot="maybe") == [
        "gpu_spot: must be true or false, got 'maybe'. Fix: gpu_spot = true"
    ]


def test_settings_from_the_environment_arrive_as_strings_and_are_coerced() -> None:
    s = load_settings(
        {
            **GOOD,
            "gpu_type": "nvidia-l4",
            "gpu_per_node": "2",
            "gpu_spot": "yes",
            "spot_max_nodes": "4",
        }
    )
    gpu, spot = nodepools.gpu_pool(s), nodepools.spot_pool(s)
    assert gpu is not None and (gpu.gpu_count, gpu.spot, gpu.machine_type) == (
        2,
        True,
        "g2-standard-24",
    )
    assert spot is not None and (spot.max_nodes, spot.spot, spot.machine_type) == (
        4,
        True,
        "e2-standard-4",
    )
