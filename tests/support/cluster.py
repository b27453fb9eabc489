"""The cluster side, as kubectl, helm and gcloud answer it, on top of pytest-subprocess.

Tasks reach the cluster only through the kubectl, helm and gcloud programs. Tests put stubs of
those programs on PATH (so that "is kubectl installed?" has an answer), a kubeconfig naming
the stack's context, and let pytest-subprocess answer every call: `FakeCluster` keeps what the
calls change (namespaces, Secrets, releases, IAM policies) between calls, so a second run sees
what the first one left; the smaller helpers serve tests that script a conversation by hand.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pytest_subprocess import FakeProcess

from tests.support.stack import (
    CONTEXT,
    LEGACY_GSA,
    PASSWORD,
    POOL,
    SECRET_V3,
    SERVICES_GSA,
    STEPS_GSA,
)

# ---------------------------------------------------------------------------------------
# The machine: programs on PATH, a kubeconfig


def tool_stubs(bin_dir: Path, tools: Iterable[str]) -> Path:
    """A PATH folder where `tools` exist; they never run (pytest-subprocess answers), else exit 99."""
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        path = bin_dir / tool
        path.write_text("#!/bin/sh\nexit 99\n")
        path.chmod(0o755)
    return bin_dir


def kubeconfig(path: Path, context: str | None = CONTEXT, *, server: str | None = None) -> Path:
    """A kubeconfig with `context` (None: no context at all); with `server`, its cluster's URL."""
    config: dict[str, Any] = {"contexts": [], "clusters": []}
    if context is not None:
        entry: dict[str, str] = {}
        if server is not None:
            entry = {"cluster": context, "user": context}
            config["clusters"] = [{"name": context, "cluster": {"server": server}}]
        config["contexts"] = [{"name": context, "context": entry}]
    path.write_text(yaml.safe_dump(config))
    return path


def machine(
    tmp_path: Path,
    tools: Iterable[str] = ("gcloud", "kubectl", "helm"),
    *,
    context: str | None = CONTEXT,
    server: str | None = None,
) -> dict[str, str]:
    """The environment of a machine with `tools` installed and a kubeconfig: PATH, KUBECONFIG."""
    return {
        "PATH": str(tool_stubs(tmp_path / "bin", tools)),
        "KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", context, server=server)),
    }


# ---------------------------------------------------------------------------------------
# Reading and scripting a conversation


def commands(fp: FakeProcess, program: str) -> list[list[str]]:
    """Every call pytest-subprocess answered for `program`, in order, as lists of strings."""
    return [[str(a) for a in call] for call in fp.calls if str(call[0]) == program]


def kubectl_call(*words: Any, context: str = CONTEXT, namespace: str | None = None) -> list[Any]:
    """A kubectl argv on the stack's context, as every call of ours names it explicitly.

    For fp.register and for comparing with what was run; `words` may end in fp.any().
    """
    scope = [f"--namespace={namespace}"] if namespace else []
    return ["kubectl", f"--context={context}", *scope, *words]


def helm_call(*words: Any, context: str = CONTEXT) -> list[Any]:
    """A helm argv on the stack's context (helm calls it --kube-context)."""
    return ["helm", f"--kube-context={context}", *words]


def long_running(fp: FakeProcess, argv: list[Any]) -> None:
    """Register a child that runs until it receives a signal (as `kubectl port-forward` does)."""
    stopped = threading.Event()
    fp.register(
        argv,
        callback=lambda process: stopped.wait(5),
        signal_callback=lambda process, sig: stopped.set(),
    )


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` in argv, None when it is not there."""
    for arg in argv:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------
# Helm's side


@dataclass
class HelmRelease:
    """One release as `helm list` and `helm get values` report it."""

    name: str
    namespace: str
    chart: str
    values: dict[str, Any]
    status: str = "deployed"
    revision: int = 1


def helm_user_values(argv: list[str]) -> dict[str, Any]:
    """How Helm merges -f files and --set/--set-string pairs (a separate, small re-implementation)."""
    values: dict[str, Any] = {}

    def merge(base: dict[str, Any], over: dict[str, Any]) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    for i, arg in enumerate(argv):
        if arg.startswith("--values="):
            merge(values, yaml.safe_load(Path(arg.split("=", 1)[1]).read_text()) or {})
        elif arg in ("--set", "--set-string"):
            key, raw = re.split(r"(?<!\\)=", argv[i + 1], maxsplit=1)
            path = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", key)]
            raw = raw.replace("\\,", ",")
            value: Any = raw
            if arg == "--set":
                value = {"true": True, "false": False}.get(raw, int(raw) if raw.isdigit() else raw)
            node = values
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return values


# ---------------------------------------------------------------------------------------
# The stateful cluster


class FakeCluster:
    """GKE + Helm + the IAM policy and Secret Manager version, as services.up's commands see them.

    Installed on pytest-subprocess, it answers every call. A call it was not taught, or one
    that breaks a rule the real cluster or the stack relies on (no explicit context, a Secret
    read beyond its metadata, a namespace Helm had to create), lands in `problems`, which every
    test wants empty. Subclass it to teach it more commands.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # namespace -> its labels
        self.namespaces: dict[str, dict[str, str]] = {"default": {}, "kube-system": {}}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.service_accounts: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.stateful_sets: dict[tuple[str, str], dict[str, Any]] = {}  # what controllers made
        self.releases: dict[tuple[str, str], HelmRelease] = {}
        # Google service accounts -> their IAM policy; the project's own policy.
        self.google_accounts: dict[str, dict[str, Any]] = {
            email: {"etag": "BwYA", "bindings": []} for email in (STEPS_GSA, SERVICES_GSA)
        }
        self.project_policy: dict[str, Any] = {"etag": "BwYA", "bindings": []}
        self.secret_version = SECRET_V3
        self.fail: set[str] = set()  # releases whose install fails
        self.mutations: list[list[str]] = []
        self.problems: list[str] = []  # rule breaks seen by the fake; every test wants none

    # -- pytest-subprocess hooks ---------------------------------------------------------

    def install(self, fp: FakeProcess) -> None:
        fp.keep_last_process(True)
        fp.register([fp.any()], callback=self.handle, stdin_callable=self.stdin)

    def handle(self, process: Any) -> None:
        argv = [str(a) for a in process.args]
        with self.lock:
            rc, out, err = self.answer(argv)
        process.stdout.write(out)
        process.stderr.write(err)
        process.returncode = rc

    def stdin(self, text: str) -> None:
        manifest = json.loads(text)
        with self.lock:
            metadata = manifest["metadata"]
            if manifest["kind"] == "Namespace":  # server-side apply: our labels merge in
                self.namespaces.setdefault(metadata["name"], {}).update(metadata["labels"])
                return
            stores = {"Secret": self.secrets, "ServiceAccount": self.service_accounts}
            assert manifest["kind"] in stores, f"unexpected manifest on stdin: {manifest['kind']}"
            if metadata["namespace"] not in self.namespaces:
                self.problems.append(f"{manifest['kind']} applied before its namespace: {metadata}")
            stores[manifest["kind"]][(metadata["namespace"], metadata["name"])] = manifest

    # -- the commands --------------------------------------------------------------------

    def answer(self, argv: list[str]) -> tuple[int, str, str]:
        program = argv[0]
        if program == "gcloud":
            return self.gcloud(argv)
        if argv[1] != (
            f"--context={CONTEXT}" if program == "kubectl" else f"--kube-context={CONTEXT}"
        ):
            self.problems.append(f"no stack context: {argv}")
        return self.kubectl(argv) if program == "kubectl" else self.helm(argv)

    def gcloud(self, argv: list[str]) -> tuple[int, str, str]:  # noqa: PLR0911 - a branch per command
        words = [a for a in argv[1:] if not a.startswith("--")]
        if "--project=acme-ml-prod" not in argv:
            self.problems.append(f"gcloud without the project: {argv}")
        if words[:3] == ["iam", "service-accounts", "list"]:
            return 0, json.dumps([{"email": e} for e in self.google_accounts]), ""
        missing = f"ERROR: (gcloud.iam) NOT_FOUND: Unknown service account {words[3:4]}"
        if words[:2] == ["iam", "service-accounts"] and words[2] in (
            "get-iam-policy",
            "set-iam-policy",
            "describe",
            "delete",
        ):
            if words[3] not in self.google_accounts:
                return 1, "", missing
            if words[2] == "describe":
                return 0, json.dumps({"email": words[3]}), ""
            if words[2] == "delete":
                self.mutations.append(argv)
                del self.google_accounts[words[3]]
                return 0, "", f"deleted service account [{words[3]}]"
            if words[2] == "set-iam-policy":
                self.mutations.append(argv)
                policy = {**json.loads(Path(words[4]).read_text()), "etag": "BwYB"}
                self.google_accounts[words[3]] = policy
            return 0, json.dumps(self.google_accounts[words[3]]), ""
        if words[:2] == ["projects", "get-iam-policy"]:
            return 0, json.dumps(self.project_policy), ""
        if words[:2] == ["projects", "set-iam-policy"]:
            self.mutations.append(argv)
            self.project_policy = {**json.loads(Path(words[3]).read_text()), "etag": "BwYB"}
            return 0, json.dumps(self.project_policy), ""
        if words[:3] == ["secrets", "versions", "describe"]:
            return 0, json.dumps({"name": self.secret_version, "state": "ENABLED"}), ""
        if words[:3] == ["secrets", "versions", "access"]:
            return 0, PASSWORD, ""
        self.problems.append(f"unexpected gcloud call: {argv}")
        return 2, "", "ERROR: not faked"

    def kubectl(self, argv: list[str]) -> tuple[int, str, str]:  # noqa: PLR0911, PLR0912 - a branch per command
        ns = flag(argv, "--namespace")
        words = [a for a in argv[1:] if not a.startswith("--")]
        if words[:2] == ["get", "namespace"]:
            if words[2] not in self.namespaces:
                return 1, "", f'Error from server (NotFound): namespaces "{words[2]}" not found'
            metadata = {"name": words[2], "labels": self.namespaces[words[2]]}
            return 0, json.dumps({"kind": "Namespace", "metadata": metadata}), ""
        if words[:2] == ["get", "pods"]:
            found = [p for p in self.pods if p["metadata"]["namespace"] == ns]
            return 0, json.dumps({"kind": "List", "items": found}), ""
        if words[:1] == ["delete"] and words[1] in ("secret", "serviceaccount"):
            self.mutations.append(argv)
            if "--ignore-not-found" not in argv:
                self.problems.append(f"a delete that fails when already gone: {argv}")
            store = self.secrets if words[1] == "secret" else self.service_accounts
            store.pop((ns or "default", words[2]), None)
            return 0, f"{words[1]} {words[2]} deleted", ""
        if words[:2] == ["get", "secret"]:
            wanted = argv[argv.index("-o") + 1] if "-o" in argv else "yaml"
            if not wanted.startswith("jsonpath={.metadata."):
                self.problems.append(f"a Secret was read beyond its metadata: {argv}")
            secret = self.secrets.get((ns or "default", words[2]))
            if secret is None:
                return 1, "", f'Error from server (NotFound): secrets "{words[2]}" not found'
            if wanted == "jsonpath={.metadata.name}":
                return 0, secret["metadata"]["name"], ""
            key = wanted.removeprefix("jsonpath={.metadata.annotations.").removesuffix("}")
            return 0, secret["metadata"].get("annotations", {}).get(key, ""), ""
        if words[:2] == ["get", "serviceaccount"]:
            account = self.service_accounts.get((ns or "default", words[2]))
            if account is None:
                missing = f'serviceaccounts "{words[2]}" not found'
                return 1, "", f"Error from server (NotFound): {missing}"
            return 0, json.dumps(account), ""
        if words[:2] == ["get", "statefulset"]:
            stateful_set = self.stateful_sets.get((ns or "default", words[2]))
            if stateful_set is None:
                missing = f'statefulsets.apps "{words[2]}" not found'
                return 1, "", f"Error from server (NotFound): {missing}"
            return 0, json.dumps(stateful_set), ""
        if words[:2] == ["delete", "statefulset"]:
            self.mutations.append(argv)
            self.stateful_sets.pop((ns or "default", words[2]), None)
            return 0, f'statefulset.apps "{words[2]}" deleted', ""
        if words[:1] in (["apply"], ["create"]) and argv[-2:] == ["-f", "-"]:
            self.mutations.append(argv)
            return 0, "configured", ""
        self.problems.append(f"unexpected kubectl call: {argv}")
        return 1, "", "error: not faked"

    def helm(self, argv: list[str]) -> tuple[int, str, str]:  # noqa: PLR0911 - a branch per command
        words = [a for a in argv[1:] if not a.startswith("--")]
        ns = flag(argv, "--namespace")
        if words[0] == "list":
            pattern = flag(argv, "--filter")
            found = [
                {
                    "name": r.name,
                    "namespace": r.namespace,
                    "revision": str(r.revision),
                    "status": r.status,
                    "chart": r.chart,
                }
                for r in self.releases.values()
                if ("--all-namespaces" in argv or r.namespace == ns)
                and (pattern is None or re.search(pattern, r.name))
            ]
            return 0, json.dumps(found), ""
        if words[:2] == ["get", "values"]:
            release = self.releases.get((ns or "", words[2]))
            if release is None:
                return 1, "", "Error: release: not found"
            return 0, json.dumps(release.values or None), ""
        if words[:1] == ["upgrade"] and argv[3] == "--install":
            self.mutations.append(argv)
            name, chart = words[1], words[2]
            repo = flag(argv, "--repo")
            if repo:
                label = f"{chart}-{flag(argv, '--version')}"
            else:
                meta = yaml.safe_load((Path(chart) / "Chart.yaml").read_text())
                label = f"{meta['name']}-{meta['version']}"
            assert ns is not None
            if ns not in self.namespaces:
                if "--create-namespace" not in argv:
                    return 1, "", f'Error: create: namespaces "{ns}" not found'
                self.problems.append(f"helm had to create namespace {ns} (no Pod Security labels)")
                self.namespaces[ns] = {}
            old = self.releases.get((ns, name))
            if name in self.fail:
                self.releases[(ns, name)] = HelmRelease(name, ns, label, {}, status="failed")
                return 1, "", "Error: INSTALLATION FAILED: context deadline exceeded"
            self.releases[(ns, name)] = HelmRelease(
                name, ns, label, helm_user_values(argv), revision=old.revision + 1 if old else 1
            )
            return 0, f'Release "{name}" has been upgraded. Happy Helming!', ""
        if words[:1] == ["uninstall"]:
            self.mutations.append(argv)
            if self.releases.pop((ns or "", words[1]), None) is None:
                return (
                    1,
                    "",
                    f"Error: uninstall: Release not loaded: {words[1]}: release: not found",
                )
            return 0, f'release "{words[1]}" uninstalled', ""
        self.problems.append(f"unexpected helm call: {argv}")
        return 1, "", "Error: not faked"

    # -- views for the tests -------------------------------------------------------------

    def release_names(self) -> set[str]:
        return {name for _, name in self.releases}

    def wi_members(self, email: str) -> set[str]:
        return {
            member
            for binding in self.google_accounts[email]["bindings"]
            if binding["role"] == "roles/iam.workloadIdentityUser"
            for member in binding["members"]
        }

    def upgraded_from_the_single_account_shape(self) -> None:
        """What today's version leaves: one Google account and KSA, the DB Secret by the steps."""
        self.google_accounts[LEGACY_GSA] = {
            "etag": "BwYA",
            "bindings": [
                {
                    "role": "roles/iam.workloadIdentityUser",
                    "members": [f"serviceAccount:{POOL}[metaflow/metaflow]"],
                }
            ],
        }
        self.project_policy["bindings"] = [
            {"role": "roles/cloudsql.client", "members": [f"serviceAccount:{LEGACY_GSA}"]},
            {"role": "roles/logging.logWriter", "members": ["serviceAccount:nodes@x"]},
        ]
        self.namespaces["metaflow"] = {"kubernetes.io/metadata.name": "metaflow"}
        self.secrets[("metaflow", "metaflow-db")] = {
            "metadata": {"name": "metaflow-db", "namespace": "metaflow", "annotations": {}}
        }
        self.service_accounts[("metaflow", "metaflow")] = {
            "metadata": {"name": "metaflow", "namespace": "metaflow"}
        }
