"""Every command line the README shows runs as written, through `inv`, as a subprocess.

The commands come from README.md itself (fenced code blocks: lines that start with `inv `,
and the set-up one-liners, whose last step is the command that matters), so the README and
these tests cannot drift: a README command without an entry in RUNS fails here, and so does
an entry whose command the README no longer shows.

RUNS says, per command, how it runs without a cluster: `offline` (no gcloud, kubectl or helm
on PATH, no credentials: a dry run needs none), or against the local `fakes` (the real gcloud
pointed at tests/fakes); flags a run adds to the README line; the exit code; fragments the
output must (and must not) contain; and, against the fakes, how many requests they may see.
SPARE holds ready entries for commands the README does not show yet (MF_CLI_ALL=1 runs them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import ROOT, Done, run_command
from tests.fakes.plugin import FakeCloud

pytestmark = pytest.mark.cli

CONTEXT = "gke_fake-project_us-west2-a_mf-it"


@dataclass(frozen=True)
class Run:
    how: str  # "offline" or "fakes"
    why: str  # what this run shows, in a few words (also the test id)
    extra: tuple[str, ...] = ()
    rc: int = 0
    out: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    requests: int | None = None  # fakes: how many requests may reach them (0: none at all)
    needs: tuple[str, ...] = ()  # programs the run needs on PATH (skipped without them)


REFUSES = ("needs a confirmation", "--yes")

RUNS: dict[str, tuple[Run, ...]] = {
    # Try it: the first set-up line's last step, with nothing installed but this package.
    "inv infra.up --dry-run --var-file examples/example.tfvars": (
        Run(
            "offline",
            "plans-without-gcloud",
            out=(
                "Dry run",
                "gcloud services enable",
                "gcloud sql instances create mf-dev-pg-0",
                "gcloud container clusters create mf-dev",
                "--project=acme-metaflow-demo",
                "changing commands and",
            ),
        ),
    ),
    # Try it: the second set-up line runs the whole suite (this test among it): list it.
    "nox": (
        Run(
            "offline",
            "default-session-is-the-suite",
            extra=("--list",),
            out=("* tests", "unit", "integration", "charts", "lint", "typecheck", "bench"),
        ),
    ),
    "inv infra.up": (
        Run("fakes", "refuses-without-terminal-or-yes", rc=1, out=REFUSES, requests=0),
        Run(
            "offline",
            "dry-run",
            extra=("--dry-run",),
            out=("gcloud sql instances create mf-it-pg-0", "would run"),
        ),
    ),
    "inv services.up --argo --no-airflow": (
        Run(
            "offline",
            "dry-run",
            extra=("--dry-run",),
            out=(
                f"helm --kube-context={CONTEXT} upgrade --install metaflow ",
                "upgrade --install argo-workflows ",
                "upgrade --install argo-events ",
            ),
            absent=("upgrade --install airflow ",),
        ),
        Run(
            "fakes",
            "refuses-without-credentials",
            rc=1,
            out=(f"kubectl has no context '{CONTEXT}'", "inv infra.up"),
            requests=0,
            needs=("kubectl", "helm"),
        ),
    ),
    "inv airflow.upload-dag my-dag.py": (
        Run(
            "offline",
            "dry-run",
            extra=("--dry-run",),
            out=(
                f"kubectl --context={CONTEXT} cp my-dag.py 'airflow/<scheduler-pod>:",
                "mv -f /opt/airflow/dags/.my-dag.py.uploading /opt/airflow/dags/my-dag.py",
                "would copy my-dag.py",
            ),
        ),
        Run(
            "fakes",
            "refuses-without-credentials",
            rc=1,
            out=(f"kubectl has no context '{CONTEXT}'",),
            requests=0,
            needs=("kubectl",),
        ),
    ),
    "inv teardown": (
        Run("fakes", "refuses-without-terminal-or-yes", rc=1, out=REFUSES, requests=0),
        Run(
            "offline",
            "dry-run",
            extra=("--dry-run",),
            out=("clusters delete mf-it", "sql instances delete mf-it-pg-0"),
            absent=("buckets delete",),  # the data stays without --delete-data
        ),
    ),
}

# Ready for commands the README may show later (checked only once it does; not "stale").
NO_GCLOUD = ("'gcloud' was not found on PATH",)
SPARE: dict[str, tuple[Run, ...]] = {
    "inv status": (Run("offline", "no-gcloud-is-one-line", rc=1, out=NO_GCLOUD),),
    "inv status --json": (Run("offline", "no-gcloud-is-one-line", rc=1, out=NO_GCLOUD),),
    "inv unlock": (Run("fakes", "nothing-to-unlock", out=("Stack 'it' is not locked.",)),),
    "inv infra.plan": (Run("offline", "no-gcloud-is-one-line", rc=1, out=NO_GCLOUD),),
    "inv port-forward": (
        Run(
            "fakes",
            "refuses-without-credentials",
            rc=1,
            out=(f"kubectl has no context '{CONTEXT}'",),
            requests=0,
            needs=("kubectl",),
        ),
    ),
    "inv services.up": (
        Run("offline", "dry-run", extra=("--dry-run",), out=("upgrade --install metaflow ",)),
    ),
    "inv airflow.upload-dag dags/": (
        Run(
            "offline",
            "dry-run",
            extra=("--dry-run",),
            out=("would copy dags/first.py", "would copy dags/second.py"),
        ),
    ),
    "inv teardown --yes": (
        Run("offline", "dry-run", extra=("--dry-run",), out=("clusters delete mf-it",)),
    ),
    "inv teardown --delete-data": (
        Run("offline", "dry-run", extra=("--dry-run",), out=("buckets delete",)),
    ),
}


def runs_for(command: str) -> tuple[Run, ...]:
    return RUNS.get(command) or SPARE.get(command, ())


# -- reading the README -----------------------------------------------------------------------

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_PROGRAMS = ("inv", "nox")


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's fenced code blocks, comments dropped, in order.

    `inv ...` lines are taken whole; a set-up one-liner (`a && b && .venv/bin/inv ...`)
    contributes its last step, the program named without its folder.
    """
    found: list[str] = []
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            steps = [shlex.split(step, comments=True) for step in line.split("&&")]
            last = steps[-1] if steps else []
            if not last or Path(last[0]).name not in _PROGRAMS:
                continue
            command = shlex.join([Path(last[0]).name, *last[1:]])
            if command not in found:
                found.append(command)
    return found


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_commands_are_found() -> None:
    """The extraction itself: the usage lines and the two set-up lines' last steps."""
    sample = (
        "text\n```\ninv infra.up      # comment\ninv teardown\nerror: x\n```\n"
        "```\npython3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/inv status\n```\n"
        "```bash\npython3 -m venv .venv && .venv/bin/nox -s lint\n```\n`inv inline` is prose\n"
    )
    assert readme_commands(sample) == ["inv infra.up", "inv teardown", "inv status",
                                       "nox -s lint"]
    assert "inv infra.up" in COMMANDS and len(COMMANDS) >= 5


def test_every_readme_command_has_a_run_and_every_run_a_readme_command() -> None:
    missing = [c for c in COMMANDS if not runs_for(c)]
    stale = [c for c in RUNS if c not in COMMANDS]
    assert not missing, f"README commands with no entry in RUNS (add how to run them): {missing}"
    assert not stale, f"RUNS entries the README no longer shows (remove them): {stale}"


# Set MF_CLI_ALL=1 to also run the SPARE entries (to check them before the README uses them).
SHOWN = COMMANDS + ([c for c in SPARE if c not in COMMANDS] if os.environ.get("MF_CLI_ALL") else [])
CASES = [
    pytest.param(command, run, id=f"{command} [{run.why}]")
    for command in SHOWN
    for run in runs_for(command)
]


@pytest.mark.parametrize(("command", "run"), CASES)
def test_a_readme_command_runs_as_written(
    command: str, run: Run, workspace: Path, request: pytest.FixtureRequest
) -> None:
    missing = [tool for tool in run.needs if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    fake: FakeCloud | None = None
    if run.how == "fakes":
        fake = request.getfixturevalue("fake_cloud")
        env = request.getfixturevalue("fakes_env")
    else:
        env = request.getfixturevalue("offline_env")
    before = len(fake.requests) if fake else 0
    done: Done = run_command(command, *run.extra, cwd=workspace, env=env)
    assert done.returncode == run.rc, done.explain()
    for fragment in run.out:
        assert fragment in done.output, f"{fragment!r} missing\n{done.explain()}"
    for fragment in run.absent:
        assert fragment not in done.output, f"{fragment!r} present\n{done.explain()}"
    assert "Traceback" not in done.output, done.explain()
    if run.rc != 0:
        assert done.stderr.strip().startswith("error: "), done.explain()
        assert len(done.stderr.strip().splitlines()) <= 2, done.explain()  # one line (+hint)
    if fake is not None and run.requests is not None:
        assert len(fake.requests) - before == run.requests, fake.requests[before:]
