"""Which machine types carry which GPUs: a small offline table, so a typo costs no cloud call.

Source: Google's "GPU machine types" page (https://cloud.google.com/compute/docs/gpus/).
L4 and A100 come built into accelerator-optimized machine types (G2, A2, A3) with a fixed
count per machine type; T4, V100, P100 and P4 are attached to N1 machine types, where the
GPU count caps the vCPUs. Which zone offers which GPU is not in this table: the Compute
API answers that (`gcloud compute accelerator-types describe TYPE --zone=ZONE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    """An accelerator that comes with its machine type: machine type -> GPUs per node."""

    machines: dict[str, int]

    def counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.machines.values())))

    def default_machine(self, count: int) -> str | None:
        """The smallest machine type with exactly `count` GPUs (the table is smallest first)."""
        return next((m for m, c in self.machines.items() if c == count), None)


@dataclass(frozen=True)
class Attached:
    """An accelerator attached to N1 machine types: GPUs per node -> most vCPUs allowed."""

    max_vcpus: dict[int, int]

    def counts(self) -> tuple[int, ...]:
        return tuple(sorted(self.max_vcpus))

    def default_machine(self, count: int) -> str | None:
        # 4 vCPUs per GPU: the smallest N1 size that is useful for a data-science step.
        return f"n1-standard-{4 * count}" if count in self.max_vcpus else None


def _g2() -> dict[str, int]:
    ones = {f"g2-standard-{v}": 1 for v in (4, 8, 12, 16, 32)}
    return {**ones, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}


def _a2(kind: str, counts: tuple[int, ...]) -> dict[str, int]:
    return {f"a2-{kind}-{c}g": c for c in counts}


ACCELERATORS: dict[str, Builtin | Attached] = {
    "nvidia-l4": Builtin(_g2()),
    "nvidia-tesla-a100": Builtin({**_a2("highgpu", (1, 2, 4, 8)), "a2-megagpu-16g": 16}),
    "nvidia-a100-80gb": Builtin(_a2("ultragpu", (1, 2, 4, 8))),
    "nvidia-h100-80gb": Builtin({"a3-highgpu-8g": 8}),
    "nvidia-tesla-t4": Attached({1: 48, 2: 48, 4: 96}),
    "nvidia-tesla-v100": Attached({1: 12, 2: 24, 4: 48, 8: 96}),
    "nvidia-tesla-p100": Attached({1: 16, 2: 32, 4: 64}),
    "nvidia-tesla-p4": Attached({1: 24, 2: 48, 4: 96}),
}

_N1 = re.compile(r"^n1-(?:standard|highmem|highcpu)-(\d+)$|^n1-custom-(\d+)-\d+$")


def default_machine(gpu_type: str, count: int) -> str:
    """The machine type a pool of `count` `gpu_type` GPUs per node uses unless told otherwise."""
    machine = ACCELERATORS[gpu_type].default_machine(count)
    if machine is None:
        raise ValueError(f"{gpu_type} has no machine type with {count} GPUs")
    return machine


def fit_problem(gpu_type: str, count: int, machine: str) -> tuple[str, str] | None:
    """Why `machine` cannot carry `count` GPUs of `gpu_type`, with a fix; None when it can."""
    spec = ACCELERATORS[gpu_type]
    if isinstance(spec, Builtin):
        carried = spec.machines.get(machine)
        if carried is None:
            family = sorted(spec.machines)
            return (
                f"'{machine}' does not carry {gpu_type} GPUs (they come built into "
                f"{family[0].split('-')[0].upper()} machine types: {', '.join(family)})",
                f'gpu_machine_type = "{spec.default_machine(count) or family[0]}", or leave it '
                "empty for the smallest that fits",
            )
        if carried != count:
            wanted = spec.default_machine(count)
            other = f', or gpu_machine_type = "{wanted}"' if wanted else ""
            return (
                f"'{machine}' carries {carried} {gpu_type} GPU(s), not gpu_per_node = {count}",
                f"gpu_per_node = {carried}{other}",
            )
        return None
    found = _N1.match(machine)
    if found is None:
        return (
            f"'{machine}' cannot take {gpu_type} GPUs (they attach to N1 machine types only)",
            f'gpu_machine_type = "{spec.default_machine(count)}", or leave it empty',
        )
    vcpus = int(found.group(1) or found.group(2))
    limit = spec.max_vcpus[count]
    if vcpus > limit:
        return (
            f"'{machine}' has {vcpus} vCPUs; with {count} {gpu_type} GPU(s) a node may have at "
            f"most {limit}",
            f"pick an N1 machine type of at most {limit} vCPUs, or more GPUs per node",
        )
    return None
