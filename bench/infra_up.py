"""Benchmark (not a test): infra.up against the local fakes with injected latencies.

Prints, from one run, side by side:
- cold infra.up wall time / a reference made here: the same gcloud commands in their
  blocking form, each dependency chain in order and independent chains at the same
  time (the best a tool that simply waits on gcloud can do);
- the sequential sum of the reference's commands and the pure critical-path latency;
- no-op re-run wall time (a real `inv infra.up --yes` process) / one `gcloud describe`,
  and how many gcloud processes the re-run started.

    nox -s bench            # or: python -m bench.infra_up [--sql 20 --gke 15 ...]
    nox -s bench -- --gpu   # only: what a GPU pool adds to a cold infra.up
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from tests.fakes.gcp_api import FakeGcpApi
from tests.fakes.gcs import FakeGcs
from tests.fakes.plugin import FakeCloud
from tests.fakes.tls import make_tls_files

from metaflow_gcp import infra
from metaflow_gcp.app import open_stack
from metaflow_gcp.gcp import apis, gke, iam, network, sql
from metaflow_gcp.graph import Outcome, Step, StepRun, run_steps
from metaflow_gcp.shell import Runner

ROOT = Path(__file__).resolve().parents[1]


def start_fakes(workdir: Path) -> FakeCloud:
    tls = make_tls_files(workdir / "tls")
    gcs = FakeGcs(log_path=workdir / "fake-gcs.log")
    gcs.start()
    api = FakeGcpApi(tls=tls, gcs_port=gcs.port)
    api.start()
    return FakeCloud(api, gcs, tls, workdir / "gcloud")


def settings(fake: FakeCloud, stack: str) -> dict[str, object]:
    return {"org_prefix": "bench", "project": fake.project, "stack": stack}


def reset(fake: FakeCloud, latencies: dict[str, float]) -> None:
    fake.reset(enable_apis=False)
    fake.enable_services(
        "serviceusage.googleapis.com",
        "cloudresourcemanager.googleapis.com",
        "storage.googleapis.com",
    )
    for kind, seconds in latencies.items():
        fake.set_latency(kind, seconds)


# -- the reference: blocking gcloud, chains in order, independent chains concurrently --------


def reference_steps(runner: Runner, fake: FakeCloud, stack_name: str) -> list[Step]:
    stack = open_stack(
        settings(fake, stack_name), env=fake.env, yes=True, console=Console(file=io.StringIO())
    )
    s, n, g = stack.settings, stack.names, stack.gcloud
    password = "reference-password-123"

    def gcloud(*args: str, stdin: str | None = None, **extra: str) -> Callable[[StepRun], Outcome]:
        def action(run: StepRun) -> Outcome:
            runner.run(
                ["gcloud", *args, f"--project={n.project}"],
                mutating=True,
                stdin=stdin,
                timeout=1800,
                extra_env=extra or None,
            )
            return Outcome.CREATED

        return action

    def chain(*actions: Callable[[StepRun], Outcome]) -> Callable[[StepRun], Outcome]:
        def action(run: StepRun) -> Outcome:
            for each in actions:
                each(run)
            return Outcome.CREATED

        return action

    number: dict[str, str] = {}

    def project_number(run: StepRun) -> Outcome:
        number["n"] = iam.project_number(g, n)
        return Outcome.CREATED

    def project_iam(run: StepRun) -> Outcome:
        policy = g.read("projects", "get-iam-policy", n.project)
        wanted = iam.project_bindings(n, number["n"])
        iam.set_policy(g, ["projects", n.project], iam.with_bindings(policy, wanted))
        return Outcome.CREATED

    return [
        Step("apis", "apis", gcloud("services", "enable", *apis.REQUIRED)),
        Step(
            "network",
            "network",
            gcloud("compute", "networks", "create", n.network, "--subnet-mode=custom"),
            ("apis",),
        ),
        Step(
            "subnet",
            "subnet",
            gcloud(
                "compute",
                "networks",
                "subnets",
                "create",
                n.subnet,
                f"--network={n.network}",
                f"--region={n.region}",
                f"--range={s.subnet_range}",
            ),
            ("network",),
        ),
        Step(
            "range",
            "range",
            gcloud(
                "compute",
                "addresses",
                "create",
                n.psa_range,
                "--global",
                "--purpose=VPC_PEERING",
                "--prefix-length=16",
                f"--network={n.network}",
            ),
            ("network",),
        ),
        Step(
            "peering",
            "peering",
            gcloud(
                "services",
                "vpc-peerings",
                "connect",
                "--service=servicenetworking.googleapis.com",
                f"--ranges={n.psa_range}",
                f"--network={n.network}",
            ),
            ("range",),
        ),
        Step(
            "bucket",
            "bucket",
            gcloud(
                "storage",
                "buckets",
                "create",
                f"gs://{n.data_bucket}",
                f"--location={n.region}",
                "--uniform-bucket-level-access",
                "--public-access-prevention",
            ),
            ("apis",),
        ),
        Step(
            "accounts",
            "accounts",
            chain(
                gcloud("iam", "service-accounts", "create", n.services_sa_id),
                gcloud("iam", "service-accounts", "create", n.steps_sa_id),
                gcloud("iam", "service-accounts", "create", n.node_sa_id),
            ),
            ("apis",),
        ),
        Step("project", "project number", project_number, ("apis",)),
        Step("iam", "iam", project_iam, ("accounts", "project")),
        Step(
            "router",
            "router",
            gcloud(*network.router_create_args(n)),
            ("network",),
        ),
        Step(
            "nat",
            "nat",
            gcloud(*network.nat_create_args(n)),
            ("router",),
        ),
        Step(
            "secret",
            "secret",
            gcloud(
                "secrets",
                "create",
                n.db_secret,
                "--replication-policy=automatic",
                "--data-file=-",
                stdin=password,
            ),
            ("apis",),
        ),
        Step(
            "sql",
            "sql",
            chain(
                gcloud("sql", "instances", "create", n.sql_instance(0), *sql.create_flags(s, n)),
                gcloud("sql", "databases", "create", n.database, f"--instance={n.sql_instance(0)}"),
                gcloud(
                    "sql",
                    "users",
                    "create",
                    n.db_user,
                    f"--instance={n.sql_instance(0)}",
                    "--flags-file=-",
                    stdin=json.dumps({"--password": password}),
                    CLOUDSDK_CORE_DISABLE_FILE_LOGGING="1",
                ),
            ),
            ("peering", "secret"),
        ),
        Step(
            "gke",
            "gke",
            chain(
                gcloud("container", "clusters", "create", n.cluster, *gke.create_flags(s, n)),
                gcloud(
                    "container", "clusters", "get-credentials", n.cluster, f"--location={n.zone}"
                ),
            ),
            ("subnet", "iam"),
        ),
    ]


# Injected latency per step of the reference, for the pure critical path.
STEP_LATENCY_KINDS = {
    "apis": ["serviceusage.enable"],
    "network": ["default"],
    "subnet": ["default"],
    "range": ["default"],
    "peering": ["servicenetworking.connect"],
    "router": ["default"],
    "nat": ["default"],
    "sql": ["sql.instances.insert", "default", "default", "default"],
    "gke": ["container.clusters.create"],
}


def critical_path(steps: list[Step], latencies: dict[str, float]) -> float:
    def cost(name: str) -> float:
        return sum(latencies.get(k, latencies["default"]) for k in STEP_LATENCY_KINDS.get(name, []))

    finish: dict[str, float] = {}
    for step in steps:
        finish[step.name] = cost(step.name) + max((finish[d] for d in step.needs), default=0.0)
    return max(finish.values())


# -- measurements -----------------------------------------------------------------------------


def time_reference(fake: FakeCloud, latencies: dict[str, float]) -> tuple[float, float, float, int]:
    reset(fake, latencies)
    runner = Runner(env=fake.env)
    steps = reference_steps(runner, fake, "ref")
    started = time.monotonic()
    report = run_steps(steps, console=Console(file=io.StringIO()), title="reference")
    wall = time.monotonic() - started
    report.raise_for_failure()
    sequential = sum(r.duration for r in runner.history)
    return wall, sequential, critical_path(steps, latencies), runner.count("gcloud")


def time_tool_cold(fake: FakeCloud, latencies: dict[str, float]) -> tuple[float, int]:
    reset(fake, latencies)
    stack = open_stack(
        settings(fake, "tool"), env=fake.env, yes=True, console=Console(file=io.StringIO())
    )
    started = time.monotonic()
    report = infra.up(stack)
    wall = time.monotonic() - started
    assert report is not None and report.ok, stack.console.file.getvalue()  # type: ignore[attr-defined]
    return wall, stack.runner.count("gcloud")


def gcloud_counter(tmp: Path) -> tuple[Path, Path]:
    """A folder to put first on PATH whose `gcloud` counts its calls into a file, then execs."""
    shim = tmp / "bin"
    shim.mkdir()
    counter = tmp / "count"
    counter.write_text("")
    real = shutil.which("gcloud")
    if real is None:
        raise SystemExit("gcloud is not on PATH: the benchmarks drive the real gcloud")
    (shim / "gcloud").write_text(f'#!/bin/sh\necho x >> "{counter}"\nexec "{real}" "$@"\n')
    (shim / "gcloud").chmod(0o755)
    return shim, counter


def time_noop(fake: FakeCloud, runs: int) -> tuple[float, int]:
    """A real `inv infra.up --yes` process on the finished stack: start-up included."""
    with tempfile.TemporaryDirectory() as tmp:
        var_file = Path(tmp) / "bench.tfvars"
        var_file.write_text("".join(f'{k} = "{v}"\n' for k, v in settings(fake, "tool").items()))
        shim, counter = gcloud_counter(Path(tmp))
        env = {**os.environ, **fake.env, "PATH": f"{shim}:{os.environ['PATH']}"}
        times = []
        for _ in range(runs):
            counter.write_text("")
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "invoke", "infra.up", "--yes", f"--var-file={var_file}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            times.append(time.monotonic() - started)
            if done.returncode != 0 or "nothing to do" not in done.stdout:
                raise SystemExit(
                    f"no-op re-run did not finish as a no-op:\n{done.stdout}{done.stderr}"
                )
        return statistics.median(times), len(counter.read_text().split())


def time_describe(fake: FakeCloud, runs: int) -> float:
    env = {**os.environ, **fake.env}
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(
            [
                "gcloud",
                "compute",
                "networks",
                "describe",
                "mf-tool-vpc",
                f"--project={fake.project}",
                "--format=json",
            ],
            env=env,
            capture_output=True,
            check=True,
        )
        times.append(time.monotonic() - started)
    return statistics.median(times)


def time_gpu_pool(
    fake: FakeCloud, latencies: dict[str, float]
) -> tuple[float, float, int, dict[str, float]]:
    """Cold infra.up without and with a GPU pool: the pool should ride alongside Cloud SQL."""
    plain, _ = time_tool_cold(fake, latencies)
    reset(fake, latencies)
    stack = open_stack(
        {**settings(fake, "tool"), "gpu_type": "nvidia-l4"},
        env=fake.env,
        yes=True,
        console=Console(file=io.StringIO()),
    )
    started = time.monotonic()
    report = infra.up(stack)
    wall = time.monotonic() - started
    assert report is not None and report.ok, stack.console.file.getvalue()  # type: ignore[attr-defined]
    first = min(s.started or started for s in report.states.values())
    ends = {
        name: (state.finished or first) - first
        for name, state in report.states.items()
        if name in ("sql_user", "gke", "gpu_pool")
    }
    return plain, wall, stack.runner.count("gcloud"), ends


def gpu_main(latencies: dict[str, float], pool: float) -> None:
    latencies = {**latencies, "container.nodePools.create": pool}
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        fake = start_fakes(Path(tmp))
        try:
            plain, with_gpu, calls, ends = time_gpu_pool(fake, latencies)
        finally:
            fake.api.stop()
            fake.gcs.stop()
    sql_chain = latencies["servicenetworking.connect"] + latencies["sql.instances.insert"]
    gke_chain = latencies["container.clusters.create"] + pool
    print(f"latencies injected: {latencies}")
    print(f"{'cold infra.up, no GPU pool':<52}{plain:>10.1f}")
    print(
        f"{'cold infra.up, GPU pool (nvidia-l4)':<52}{with_gpu:>10.1f}   ({calls} gcloud processes)"
    )
    print(f"{'  added by the pool':<52}{with_gpu - plain:>10.1f}")
    for name, title in (("gke", "cluster"), ("gpu_pool", "GPU pool"), ("sql_user", "SQL user")):
        print(f"{'  ' + title + ' done after':<52}{ends[name]:>10.1f}")
    print(
        f"{'  injected: GKE + pool chain / peering + SQL chain':<52}{gke_chain:>5.0f} / {sql_chain:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sql", type=float, default=20.0, help="SQL create latency (s)")
    parser.add_argument("--gke", type=float, default=15.0, help="GKE create latency (s)")
    parser.add_argument("--peering", type=float, default=5.0, help="peering latency (s)")
    parser.add_argument("--other", type=float, default=1.0, help="every other operation (s)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the quick timings")
    parser.add_argument("--gpu", action="store_true", help="only: what a GPU pool adds")
    parser.add_argument("--pool", type=float, default=4.0, help="node-pool create latency (s)")
    args = parser.parse_args()
    latencies = {
        "sql.instances.insert": args.sql,
        "container.clusters.create": args.gke,
        "servicenetworking.connect": args.peering,
        "default": args.other,
    }
    if args.gpu:
        gpu_main(latencies, args.pool)
        return
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        fake = start_fakes(Path(tmp))
        try:
            ref_wall, ref_sum, path, ref_calls = time_reference(fake, latencies)
            cold_wall, cold_calls = time_tool_cold(fake, latencies)
            noop_wall, noop_calls = time_noop(fake, args.runs)
            describe_wall = time_describe(fake, args.runs)
        finally:
            fake.api.stop()
            fake.gcs.stop()
    print(f"latencies injected: {latencies}")
    print(f"{'measure':<52}{'seconds':>10}")
    print(
        f"{'reference: blocking gcloud, chains concurrent':<52}{ref_wall:>10.1f}"
        f"   ({ref_calls} gcloud processes)"
    )
    print(f"{'  sequential sum of its commands':<52}{ref_sum:>10.1f}")
    print(f"{'  pure critical-path latency':<52}{path:>10.1f}")
    print(
        f"{'infra.up cold (describe, state, lock, create)':<52}{cold_wall:>10.1f}"
        f"   ({cold_calls} gcloud processes)"
    )
    print(
        f"{'infra.up no-op re-run (whole inv process)':<52}{noop_wall:>10.2f}"
        f"   ({noop_calls} gcloud processes)"
    )
    print(f"{'one gcloud describe':<52}{describe_wall:>10.2f}")
    print()
    print(f"cold / reference      = {cold_wall / ref_wall:.2f}   (goal <= 0.85)")
    print(f"no-op / one describe  = {noop_wall / describe_wall:.2f}   (goal <= 2.5)")


if __name__ == "__main__":
    main()
