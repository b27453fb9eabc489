"""Benchmark (not a test): `inv teardown` against the local fakes with injected latencies.

Compares, from one run, a whole `inv teardown --yes` process with a reference made here:
the same deletes in their blocking gcloud form, each dependency chain in order and
independent chains at the same time (the best a tool that simply waits on gcloud can do).

The reference is not a hand-written list: it is read off the tool itself, so it follows
every change to teardown.py. A first teardown, in-process at zero latency, records which
gcloud commands each of its steps ran (the step graph comes from `Teardown.steps()`); the
reference replays, per step, the changing commands that took effect, `--async` dropped,
without the state writes (the reference keeps no state) and without the reads.

    nox -s bench            # or: python -m bench.teardown [--gke 15 --sql 10 ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from tests.fakes.plugin import FakeCloud

from bench.infra_up import ROOT, gcloud_counter, settings, start_fakes
from metaflow_gcp import infra, teardown
from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.graph import Outcome, Step, StepRun, run_steps
from metaflow_gcp.shell import Result, Runner

STACK = "down"  # the same names in every phase: the fake is reset in between

# -- recording which step ran which command ---------------------------------------------------

_CURRENT = threading.local()


@dataclass(frozen=True)
class Command:
    """One command a step ran, with the content of any file it was given (e.g. a policy)."""

    argv: tuple[str, ...]
    ok: bool
    files: dict[int, str] = field(default_factory=dict)  # argv index -> file content


@dataclass
class RecordingRunner(Runner):
    """The one runner, also noting each command under the step whose thread ran it."""

    by_step: dict[str, list[Command]] = field(default_factory=dict)

    def run(self, argv: Sequence[str], *, mutating: bool, **kwargs: Any) -> Result:
        step = getattr(_CURRENT, "step", None)
        files = {i: Path(a).read_text() for i, a in enumerate(argv) if _is_file(str(a))}
        ok = False
        try:
            result = super().run(argv, mutating=mutating, **kwargs)
            ok = result.returncode == 0
            return result
        finally:
            if step is not None and mutating:
                self.by_step.setdefault(step, []).append(Command(tuple(map(str, argv)), ok, files))


def _is_file(arg: str) -> bool:
    return arg.startswith("/") and Path(arg).is_file()


def attributed(steps: list[Step]) -> list[Step]:
    """The same steps; each notes its name for the commands its thread runs."""

    def wrap(step: Step) -> Step:
        def action(run: StepRun) -> Outcome:
            _CURRENT.step = step.name
            try:
                return step.action(run)
            finally:
                _CURRENT.step = None

        return replace(step, action=action)

    return [wrap(step) for step in steps]


# -- phases -----------------------------------------------------------------------------------


def open_bench_stack(fake: FakeCloud, runner: Runner | None = None) -> Stack:
    stack = open_stack(
        settings(fake, STACK), env=fake.env, yes=True, console=Console(file=io.StringIO())
    )
    if runner is not None:  # the same wiring, on a runner that records
        stack.runner = runner
        stack.gcloud.runner = runner
    return stack


def build(fake: FakeCloud) -> None:
    """A finished stack (zero latency: building is not what is measured here)."""
    fake.reset(enable_apis=True)
    stack = open_bench_stack(fake)
    report = infra.up(stack)
    assert report is not None and report.ok, stack.console.file.getvalue()  # type: ignore[attr-defined]


def record(fake: FakeCloud) -> tuple[list[Step], dict[str, list[Command]]]:
    """Tear a stack down in-process and note each step's commands; the graph comes along."""
    build(fake)
    runner = RecordingRunner(env=fake.env)
    stack = open_bench_stack(fake, runner)
    steps = teardown.Teardown(stack, delete_data=False).steps()
    report = run_steps(attributed(steps), console=stack.console, title="record")
    report.raise_for_failure()
    return steps, runner.by_step


def reference_commands(
    by_step: dict[str, list[Command]], state_bucket: str
) -> tuple[dict[str, list[Command]], list[Command]]:
    """Per step: the gcloud changes that took effect, once each, in blocking form, no state.

    Also returns the changes that were refused in the recording (e.g. a delete the tool
    tries before a fallback): the reference leaves them out, and the report names them.
    """
    chosen: dict[str, list[Command]] = {}
    refused: list[Command] = []
    for step, commands in by_step.items():
        seen: set[tuple[str, ...]] = set()
        for command in commands:
            argv = tuple(a for a in command.argv if a != "--async")
            if Path(argv[0]).name != "gcloud" or any(f"gs://{state_bucket}" in a for a in argv):
                continue
            if not command.ok:
                refused.append(command)
            elif argv not in seen:
                seen.add(argv)
                chosen.setdefault(step, []).append(Command(argv, True, command.files))
    return chosen, refused


def replay(runner: Runner, command: Command, tmp: Path) -> None:
    argv = list(command.argv)
    for index, content in command.files.items():
        with tempfile.NamedTemporaryFile("w", dir=tmp, suffix=".json", delete=False) as handle:
            handle.write(_without_etag(content))
        argv[index] = handle.name
    runner.run(argv, mutating=True, timeout=1800)


def _without_etag(content: str) -> str:
    """A recorded policy carries the etag of the recording run's project: drop it."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return content
    if isinstance(data, dict):
        data.pop("etag", None)
    return json.dumps(data)


def time_reference(
    fake: FakeCloud,
    steps: list[Step],
    commands: dict[str, list[Command]],
    latencies: dict[str, float],
) -> tuple[float, float, int]:
    build(fake)
    for kind, seconds in latencies.items():
        fake.set_latency(kind, seconds)
    runner = Runner(env=fake.env)
    with tempfile.TemporaryDirectory(prefix="mf-bench-ref-") as tmp:

        def action(name: str) -> Callable[[StepRun], Outcome]:
            def run(_: StepRun) -> Outcome:
                for command in commands.get(name, []):
                    replay(runner, command, Path(tmp))
                return Outcome.DELETED

            return run

        # A change that waits for another step's (changes_after) is a need of the reference.
        reference = [
            Step(s.name, s.title, action(s.name), s.needs + s.changes_after) for s in steps
        ]
        started = time.monotonic()
        report = run_steps(reference, console=Console(file=io.StringIO()), title="reference")
        wall = time.monotonic() - started
    report.raise_for_failure()
    return wall, sum(r.duration for r in runner.history), runner.count("gcloud")


def time_tool(fake: FakeCloud, latencies: dict[str, float]) -> tuple[float, int]:
    """A whole `inv teardown --yes` process: start-up, preview-free run, lock and state."""
    build(fake)
    for kind, seconds in latencies.items():
        fake.set_latency(kind, seconds)
    with tempfile.TemporaryDirectory(prefix="mf-bench-tool-") as tmp:
        var_file = Path(tmp) / "bench.tfvars"
        var_file.write_text("".join(f'{k} = "{v}"\n' for k, v in settings(fake, STACK).items()))
        shim, counter = gcloud_counter(Path(tmp))
        env = {**os.environ, **fake.env, "PATH": f"{shim}:{os.environ['PATH']}"}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "teardown", "--yes", f"--var-file={var_file}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"inv teardown failed:\n{done.stdout}{done.stderr}")
        return wall, len(counter.read_text().split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gke", type=float, default=15.0, help="GKE delete latency (s)")
    parser.add_argument("--sql", type=float, default=10.0, help="Cloud SQL delete latency (s)")
    parser.add_argument("--peering", type=float, default=5.0, help="peering delete latency (s)")
    parser.add_argument("--other", type=float, default=1.0, help="every other operation (s)")
    args = parser.parse_args()
    latencies = {
        "container.clusters.delete": args.gke,
        "sql.instances.delete": args.sql,
        "servicenetworking.delete": args.peering,
        "compute.networks.removePeering": args.peering,
        "default": args.other,
    }
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        fake = start_fakes(Path(tmp))
        try:
            steps, recorded = record(fake)
            state_bucket = open_bench_stack(fake).names.state_bucket
            commands, refused = reference_commands(recorded, state_bucket)
            ref_wall, ref_sum, ref_calls = time_reference(fake, steps, commands, latencies)
            tool_wall, tool_calls = time_tool(fake, latencies)
        finally:
            fake.api.stop()
            fake.gcs.stop()
    print(f"latencies injected: {latencies}")
    print("reference, per step (blocking gcloud, read off the tool's own teardown):")
    for step in steps:
        for command in commands.get(step.name, []):
            print(f"  {step.name:<10} {' '.join(command.argv[1:5])}")
    for command in refused:
        print(f"  (refused in the recording, not in the reference: {' '.join(command.argv[1:5])})")
    print(f"{'measure':<52}{'seconds':>10}")
    print(
        f"{'reference: blocking gcloud, chains concurrent':<52}{ref_wall:>10.1f}"
        f"   ({ref_calls} gcloud processes)"
    )
    print(f"{'  sequential sum of its commands':<52}{ref_sum:>10.1f}")
    print(
        f"{'inv teardown --yes (whole process)':<52}{tool_wall:>10.1f}"
        f"   ({tool_calls} gcloud processes)"
    )
    print()
    print(f"teardown / reference  = {tool_wall / ref_wall:.2f}   (goal <= 0.90)")


if __name__ == "__main__":
    main()
