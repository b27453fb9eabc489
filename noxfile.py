"""Test and check sessions. `nox` alone runs the whole test suite (the README's command)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = "3.11"


# Most tests wait on gcloud processes, so one worker per core keeps both cores busy;
# worksteal evens out the few minute-long end-to-end tests.
WORKERS = ("-n", "auto", "--dist", "worksteal")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every test, one worker per core: unit, integration (real gcloud vs local fakes), charts, the
    command line, the real Metaflow client. `nox -s tests -- -p no:xdist ...` runs serially."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q", *WORKERS]))


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """The fast layer only: logic and command construction."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "not integration", "tests/unit", *session.posargs)


@nox.session(python=PYTHON)
def fast(session: nox.Session) -> None:
    """Every layer that starts no gcloud and no `inv` process: unit and charts."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "-q", "-m", "not integration and not cli and not clients", *session.posargs
    )


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """The real gcloud CLI against the local fakes."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *WORKERS, "-m", "integration", *session.posargs)


@nox.session(python=PYTHON)
def cli(session: nox.Session) -> None:
    """`inv` as a user types it: the README's command lines, status, upload-dag."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "cli", "tests/cli", *session.posargs)


@nox.session(python=PYTHON)
def charts(session: nox.Session) -> None:
    """Render, lint and validate our Helm charts with a real Helm engine."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/charts", *session.posargs)


@nox.session(python=PYTHON)
def clients(session: nox.Session) -> None:
    """The real Metaflow client fed the config services.up writes (part of `tests` too)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "clients", "tests/clients", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: style and common bugs."""
    session.install("ruff")
    session.run("ruff", "check", "lib", "tests", "tasks.py", "noxfile.py", "bench")
    session.run("ruff", "format", "--check", "lib", "tasks.py", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


BENCHMARKS = ("infra_up", "teardown")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): infra.up and teardown against the fakes; prints every ratio.

    `nox -s bench` runs both; `nox -s bench -- teardown --gke 30` one, with its options.
    """
    session.install("-e", ".[test]")
    if session.posargs and session.posargs[0] in BENCHMARKS:
        session.run("python", "-m", f"bench.{session.posargs[0]}", *session.posargs[1:])
        return
    for name in BENCHMARKS:
        session.run("python", "-m", f"bench.{name}", *session.posargs)
