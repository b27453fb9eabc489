"""gcloud calls with the project pinned and JSON parsed, on top of the one runner."""

from __future__ import annotations

from typing import Any

from metaflow_gcp.errors import NotFound
from metaflow_gcp.shell import Result, Runner


class Gcloud:
    """Every gcloud call names its project explicitly: the user's active config never leaks in."""

    def __init__(self, runner: Runner, project: str) -> None:
        self.runner = runner
        self.project = project

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run

    def _argv(self, args: tuple[str, ...], fmt: str | None) -> list[str]:
        argv = ["gcloud", *args]
        if not any(a.startswith("--project") for a in args):
            argv.append(f"--project={self.project}")
        if fmt:
            argv.append(f"--format={fmt}")
        return argv

    def read(self, *args: str, dry: Any = None, timeout: float | None = None) -> Any:
        """A read whose JSON answer we need. In a dry run nothing runs and `dry` comes back."""
        result = self.runner.run(self._argv(args, "json"), mutating=False, timeout=timeout)
        return dry if result.dry_run else result.json()

    def describe(self, *args: str) -> dict[str, Any] | None:
        """A resource as JSON, or None when it does not exist (or in a dry run)."""
        try:
            found = self.read(*args)
        except NotFound:
            return None
        return found if isinstance(found, dict) else None

    def mutate(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float | None = None,
        fmt: str | None = "json",
        detach_tty: bool = False,
        dry_stdout: str = "",
    ) -> Result:
        return self.runner.run(
            self._argv(args, fmt),
            mutating=True,
            stdin=stdin,
            timeout=timeout,
            detach_tty=detach_tty,
            dry_stdout=dry_stdout,
        )

    def secret_read(self, *args: str) -> str:
        """A read whose output is a secret: registered for redaction, never logged."""
        result = self.runner.run(self._argv(args, None), mutating=False, secret_output=True)
        return result.stdout
