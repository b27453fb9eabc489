"""kubectl and helm, always aimed at the stack's own cluster.

Every call names `--context` explicitly, so a task never acts on whatever
context happens to be current in the user's kubeconfig.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from metaflow_gcp.errors import NotFound
from metaflow_gcp.shell import Result, Runner

FIELD_MANAGER = "metaflow-gcp"  # who owns the fields this tool applies


class Kubectl:
    def __init__(self, runner: Runner, context: str) -> None:
        self.runner = runner
        self.context = context

    def argv(self, *args: str, namespace: str | None = None) -> list[str]:
        argv = ["kubectl", f"--context={self.context}"]
        if namespace:
            argv.append(f"--namespace={namespace}")
        return [*argv, *args]

    def read(self, *args: str, namespace: str | None = None, dry: Any = None) -> Any:
        """`kubectl get ... -o json`, parsed; `dry` in a dry run."""
        result = self.runner.run(
            self.argv(*args, "-o", "json", namespace=namespace), mutating=False
        )
        return dry if result.dry_run else result.json()

    def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found = self.read("get", kind, name, namespace=namespace)
        except NotFound:
            return None
        return found if isinstance(found, dict) else None

    def run(
        self,
        *args: str,
        namespace: str | None = None,
        mutating: bool = True,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        dry_stdout: str = "",
    ) -> Result:
        return self.runner.run(
            self.argv(*args, namespace=namespace),
            mutating=mutating,
            stdin=stdin,
            timeout=timeout,
            check=check,
            dry_stdout=dry_stdout,
        )

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run

    def exec(
        self,
        pod: str,
        *command: str,
        container: str,
        namespace: str,
        mutating: bool,
        dry_stdout: str = "",
        check: bool = True,
    ) -> Result:
        """`kubectl exec POD -c CONTAINER -- COMMAND`: one command in a running container."""
        return self.run(
            "exec",
            pod,
            "-c",
            container,
            "--",
            *command,
            namespace=namespace,
            mutating=mutating,
            dry_stdout=dry_stdout,
            check=check,
        )

    def copy_to(
        self, local: str, pod: str, remote: str, *, container: str, namespace: str
    ) -> Result:
        """`kubectl cp` of one local file into a container (tar through exec: needs tar there)."""
        return self.run("cp", local, f"{namespace}/{pod}:{remote}", "-c", container)

    def spawn(self, *args: str, namespace: str | None = None) -> subprocess.Popen[str] | None:
        """A long-running kubectl (port-forward) that the caller supervises; None in a dry run."""
        return self.runner.spawn(self.argv(*args, namespace=namespace))

    def apply_stdin(self, manifest: str, *, namespace: str | None = None) -> Result:
        """Server-side apply of a manifest given on stdin, as this tool's field manager.

        Stdin is how Secrets reach the cluster without touching disk; server-side apply
        keeps no last-applied annotation that would mirror their data.
        """
        return self.run(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "--force-conflicts",
            "-f",
            "-",
            namespace=namespace,
            stdin=manifest,
        )


class Helm:
    def __init__(self, runner: Runner, context: str) -> None:
        self.runner = runner
        self.context = context

    def argv(self, *args: str) -> list[str]:
        return ["helm", f"--kube-context={self.context}", *args]

    def run(
        self,
        *args: str,
        mutating: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
        check: bool = True,
        dry_stdout: str = "",
    ) -> Result:
        return self.runner.run(
            self.argv(*args),
            mutating=mutating,
            timeout=timeout,
            stdin=stdin,
            check=check,
            dry_stdout=dry_stdout,
        )

    def releases(
        self, namespace: str | None = None, *, every_state: bool = False
    ) -> list[dict[str, Any]]:
        """`helm list` as JSON. every_state adds `--all`: pending and failed releases too."""
        scope: Sequence[str] = (f"--namespace={namespace}",) if namespace else ("--all-namespaces",)
        extra: Sequence[str] = ("--all",) if every_state else ()
        result = self.runner.run(
            self.argv("list", *scope, *extra, "--output=json"), mutating=False, dry_stdout="[]"
        )
        found = result.json()
        return found if isinstance(found, list) else []

    def release(self, name: str, namespace: str) -> dict[str, Any] | None:
        """One release in any state (deployed, failed, pending-...), or None when absent."""
        result = self.runner.run(
            self.argv(
                "list", f"--namespace={namespace}", f"--filter=^{name}$", "--all", "--output=json"
            ),
            mutating=False,
            dry_stdout="[]",
        )
        found = result.json()
        for entry in found if isinstance(found, list) else []:
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry
        return None

    def user_values(self, name: str, namespace: str) -> dict[str, Any]:
        """The values a release was installed with (`-f` and `--set*`), not the chart defaults."""
        result = self.runner.run(
            self.argv("get", "values", name, f"--namespace={namespace}", "--output=json"),
            mutating=False,
            dry_stdout="{}",
        )
        found = result.json()
        return found if isinstance(found, dict) else {}


# -- pods ----------------------------------------------------------------------------------


def pod_readiness(pod: dict[str, Any]) -> tuple[bool, str]:
    """(usable, how it is) - the description is what a person needs to see when it is not."""
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False, "Terminating"
    details = [f"init container {text}" for text in not_ready(status.get("initContainerStatuses"))]
    statuses = status.get("containerStatuses") or []
    details += [f"container {text}" for text in not_ready(statuses)]
    expected = len(pod.get("spec", {}).get("containers", []))
    if phase == "Running" and not details and statuses and len(statuses) >= expected:
        return True, "Running and Ready"
    if phase == "Running" and not details:
        details.append("containers not reported ready yet")
    return False, f"{phase} ({', '.join(details)})" if details else phase


def not_ready(statuses: Any) -> Iterator[str]:
    """What each container that is not ready waits for, in words (a finished init is ready)."""
    for item in statuses or []:
        if item.get("ready"):
            continue
        state = item.get("state") or {}
        name = item.get("name", "?")
        if "waiting" in state:
            reason = (state["waiting"] or {}).get("reason") or "waiting"
            yield f"{name} {reason}"
        elif "terminated" in state:
            terminated = state["terminated"] or {}
            if terminated.get("reason") == "Completed" and terminated.get("exitCode") == 0:
                continue  # a finished init container is fine
            reason = terminated.get("reason") or f"exit code {terminated.get('exitCode')}"
            yield f"{name} terminated: {reason}"
        elif "running" in state:
            yield f"{name} running but not ready"
        else:
            yield f"{name} not ready"
