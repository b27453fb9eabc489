"""`inv services.up`: what it asks of gcloud, kubectl and helm, in which order, and what it never does.

The cluster, Helm and the two gcloud APIs involved are played by `FakeCluster` behind
pytest-subprocess: it keeps releases, namespaces, Secrets and the IAM policy between
calls, so a second run sees what the first one left and re-runs can be judged. The state
file is a small in-memory stand-in with the same lock semantics as the real store.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_subprocess import FakeProcess
from rich.console import Console

from metaflow_gcp import services
from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.errors import LockHeld, StackError
from metaflow_gcp.lifecycle import TaskRun
from metaflow_gcp.state import Snapshot

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}
CONTEXT = "gke_acme-ml-prod_us-west2-a_mf-dev"
STEPS_GSA = "mf-dev-steps@acme-ml-prod.iam.gserviceaccount.com"
SERVICES_GSA = "mf-dev-services@acme-ml-prod.iam.gserviceaccount.com"
LEGACY_GSA = "mf-dev-workload@acme-ml-prod.iam.gserviceaccount.com"
STEPS_KSA = "mf-dev-steps"
SERVICES_KSA = "mf-dev-services"
POOL = "acme-ml-prod.svc.id.goog"
PASSWORD = "Zq7-db-pa55word-nobody-guesses"
SECRET_V3 = "projects/123456/secrets/mf-dev-db-password/versions/3"
PINS = yaml.safe_load((ROOT / "values" / "versions.yaml").read_text())


# ---------------------------------------------------------------------------------------
# Fakes


class FakeState:
    """The state document in memory, with the real store's lock rules."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.generation = 1
        self.lock_id = "this-run"
        self.writes = 0
        self._last: Snapshot | None = None

    @property
    def last(self) -> Snapshot | None:
        return self._last

    def peek(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    def read(self) -> Snapshot:
        self._last = Snapshot(copy.deepcopy(self.doc), self.generation)
        return self._last

    def update(self, change: Callable[[dict[str, Any]], None]) -> Snapshot:
        data = copy.deepcopy(self.doc)
        change(data)
        self.doc, self.generation, self.writes = data, self.generation + 1, self.writes + 1
        return self.read()

    def acquire(self, task: str, *, force: bool = False) -> dict[str, Any] | None:
        held = self.doc.get("lock")
        if held and held.get("id") != self.lock_id and not force:
            raise LockHeld(held["holder"], held["since"], held["task"])
        self.update(lambda d: d.update(lock={"id": self.lock_id, "task": task}))
        return held if held and held.get("id") != self.lock_id else None


@dataclass
class HelmRelease:
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


def flag(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


class FakeCluster:
    """GKE + Helm + the IAM policy and Secret Manager version, as the commands see them."""

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


@dataclass
class Run:
    """One services.up: the stack, what it printed, and every (argv, stdin) it handed the runner."""

    stack: Stack
    out: StringIO
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.out.getvalue()

    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]

    def index(self, *needle: str) -> int:
        """Position of the first command containing every `needle` word, in call order."""
        for i, argv in enumerate(self.argvs()):
            if all(n in argv for n in needle):
                return i
        raise AssertionError(f"no command with {needle}: {self.argvs()}")

    def applied(self, kind: str, name: str) -> int:
        """Position of the `kubectl apply -f -` that handed over this object on stdin."""
        for i, (_, stdin) in enumerate(self.calls):
            if stdin and (m := json.loads(stdin))["kind"] == kind and m["metadata"]["name"] == name:
                return i
        raise AssertionError(f"{kind}/{name} was never applied")

    def mutating(self) -> list[str]:
        return [r.command for r in self.stack.runner.history if r.mutating]


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _private_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes a Metaflow config or a log into the real home."""
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "metaflowconfig"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("METAFLOW_PROFILE", raising=False)


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, str]:
    """PATH with gcloud, kubectl and helm (never run: pytest-subprocess answers) and a kubeconfig."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "kubectl", "helm"):
        path = bin_dir / tool
        path.write_text("#!/bin/sh\nexit 99\n")
        path.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"contexts": [{"name": CONTEXT, "context": {}}]}))
    return {"PATH": str(bin_dir), "KUBECONFIG": str(kubeconfig)}


@pytest.fixture
def cluster(fp: FakeProcess) -> Iterator[FakeCluster]:
    fake = FakeCluster()
    fake.install(fp)
    yield fake
    assert fake.problems == []


@pytest.fixture
def state() -> FakeState:
    return FakeState(
        {
            "db_generation": 2,
            "infra": {
                "converged": "f00d",
                "sql_user_ready": "mf-dev-pg-2",
                "project_number": "123456",
            },
            "lock": None,
        }
    )


class Up:
    """Calls services.up with the given switches against the fake cluster and state.

    `last` keeps the latest run, also when services.up raised, so its output can be read.
    """

    def __init__(self, tools: dict[str, str], state: FakeState) -> None:
        self.tools, self.state = tools, state
        self.last: Run | None = None

    def __call__(
        self,
        *,
        argo: bool = True,
        airflow: bool = False,
        jobset: bool = False,
        yes: bool = False,
        **kw: Any,
    ) -> Run:
        """Airflow and JobSet: tests/unit/test_airflow_services.py."""
        out = StringIO()
        stack = open_stack(
            {**SETTINGS, "deploy_argo": argo, "deploy_airflow": airflow, "deploy_jobset": jobset},
            yes=yes,
            env=self.tools,
            console=Console(file=out, width=400, color_system=None),
        )
        stack.state = self.state  # type: ignore[assignment]
        result = self.last = Run(stack, out)
        real = stack.runner.run

        def spy(argv: Any, **kwargs: Any) -> Any:
            result.calls.append(([str(a) for a in argv], kwargs.get("stdin")))
            return real(argv, **kwargs)

        stack.runner.run = spy  # type: ignore[method-assign]
        for name, value in kw.items():
            setattr(stack, name, value)
        services.up(stack)
        return result


@pytest.fixture
def up(tools: dict[str, str], state: FakeState) -> Up:
    return Up(tools, state)


def helm_upgrade(run: Run, release: str) -> list[str]:
    return run.argvs()[run.index("upgrade", "--install", release)]


# ---------------------------------------------------------------------------------------
# The conversation


def test_a_first_run_binds_identity_then_secret_then_metaflow_then_argo_then_events(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    run = up(argo=True, airflow=False)

    wi = max(run.index("set-iam-policy", SERVICES_GSA), run.index("set-iam-policy", STEPS_GSA))
    steps_ns = run.applied("Namespace", "metaflow")
    services_ns = run.applied("Namespace", "metaflow-services")
    secret = run.applied("Secret", "metaflow-db")
    metaflow = run.index("upgrade", "--install", "metaflow")
    workflows = run.index("upgrade", "--install", "argo-workflows")
    events = run.index("upgrade", "--install", "argo-events")
    objects = run.index("upgrade", "--install", "metaflow-argo-events")
    assert wi < metaflow and services_ns < secret < metaflow and steps_ns < metaflow
    assert steps_ns < workflows and run.applied("Namespace", "argo") < workflows
    assert events < objects and steps_ns < objects  # the CRDs come with argo-events
    assert run.applied("Namespace", "argo-events") < events
    assert cluster.release_names() == {
        "metaflow",
        "argo-workflows",
        "argo-events",
        "metaflow-argo-events",
    }
    assert cluster.wi_members(STEPS_GSA) == {f"serviceAccount:{POOL}[metaflow/{STEPS_KSA}]"}
    assert cluster.wi_members(SERVICES_GSA) == {
        f"serviceAccount:{POOL}[metaflow-services/{SERVICES_KSA}]"
    }
    assert state.doc["lock"] is None
    assert state.doc["services"]["argo"] is True and state.doc["services"]["airflow"] is False
    assert state.doc["services"]["ok"] is True
    assert "services.up finished" in run.output


def test_every_kubectl_and_helm_call_names_the_stack_context(cluster: FakeCluster, up: Up) -> None:
    run = up(argo=True)

    for argv in run.argvs():
        if argv[0] == "kubectl":
            assert argv[1] == f"--context={CONTEXT}", argv
        if argv[0] == "helm":
            assert argv[1] == f"--kube-context={CONTEXT}", argv


def test_upstream_charts_come_from_the_pinned_repo_and_version_with_their_values_file(
    cluster: FakeCluster, up: Up
) -> None:
    run = up(argo=True)

    for name in ("argo-workflows", "argo-events"):
        argv = helm_upgrade(run, name)
        assert argv[5] == PINS[name]["chart"]
        assert flag(argv, "--repo") == PINS[name]["repo"]
        assert flag(argv, "--version") == PINS[name]["version"]
        assert flag(argv, "--values") == str(ROOT / "values" / f"{name}.yaml")
        assert "--wait" in argv
    for name in ("metaflow", "metaflow-argo-events"):
        argv = helm_upgrade(run, name)
        assert argv[5] == str(ROOT / "charts" / name)
        assert flag(argv, "--repo") is None


def test_the_metaflow_release_gets_the_stack_values_and_the_sql_generation_from_state(
    cluster: FakeCluster, up: Up
) -> None:
    run = up(argo=True)

    argv = helm_upgrade(run, "metaflow")
    assert argv[argv.index("--set-string") :][:12] == [
        "--set-string",
        f"serviceAccounts.steps.name={STEPS_KSA}",
        "--set-string",
        f"serviceAccounts.steps.gcpServiceAccount={STEPS_GSA}",
        "--set-string",
        f"serviceAccounts.services.name={SERVICES_KSA}",
        "--set-string",
        f"serviceAccounts.services.gcpServiceAccount={SERVICES_GSA}",
        "--set-string",
        "database.instanceConnectionName=acme-ml-prod:us-west2:mf-dev-pg-2",
        "--set-string",
        "datastore.sysroot=gs://acme-acme-ml-prod-mf-dev/metaflow",
    ]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ["argoWorkflows.enabled=true", "networkPolicy.allowAirflow=false"]
    assert flag(argv, "--namespace") == "metaflow" and "--create-namespace" in argv
    assert flag(argv, "--timeout") == "10m"


def test_the_db_password_travels_only_on_stdin_of_kubectl_apply(
    cluster: FakeCluster, up: Up, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="metaflow_gcp")
    run = up(argo=True)

    encoded = base64.b64encode(PASSWORD.encode()).decode()
    carriers = [argv for argv, stdin in run.calls if stdin and encoded in stdin]
    assert carriers == [
        [
            "kubectl",
            f"--context={CONTEXT}",
            "--namespace=metaflow-services",
            "apply",
            "--server-side",
            "--field-manager=metaflow-gcp",
            "--force-conflicts",
            "-f",
            "-",
        ]
    ]
    for argv, stdin in run.calls:
        assert not any(PASSWORD in a or encoded in a for a in argv)
        assert stdin is None or PASSWORD not in stdin  # base64 in a Secret, never raw
    assert PASSWORD not in run.output and encoded not in run.output
    assert PASSWORD not in caplog.text and encoded not in caplog.text
    assert ("metaflow", "metaflow-db") not in cluster.secrets  # never where user steps run
    secret = cluster.secrets[("metaflow-services", "metaflow-db")]
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
    assert secret["metadata"]["annotations"] == {"metaflow-gcp/secret-version": SECRET_V3}


def test_a_second_run_against_the_same_cluster_changes_nothing(
    cluster: FakeCluster, up: Up
) -> None:
    up(argo=True)
    before = len(cluster.mutations)
    revisions = {k: r.revision for k, r in cluster.releases.items()}

    again = up(argo=True)

    assert again.mutating() == []
    assert len(cluster.mutations) == before
    assert {k: r.revision for k, r in cluster.releases.items()} == revisions
    assert not any(argv[-2:] == ["-f", "-"] for argv in again.argvs())
    assert not any("access" in argv for argv in again.argvs())  # password not even read
    assert "everything was already in place" in again.output


def test_a_new_password_version_rewrites_only_the_secret(cluster: FakeCluster, up: Up) -> None:
    up(argo=True)
    cluster.secret_version = SECRET_V3.replace("versions/3", "versions/4")

    again = up(argo=True)

    assert [m.split(" ")[3] for m in again.mutating()] == ["apply"]
    annotations = cluster.secrets[("metaflow-services", "metaflow-db")]["metadata"]["annotations"]
    assert annotations == {"metaflow-gcp/secret-version": cluster.secret_version}


def test_an_edited_local_chart_is_upgraded_even_with_the_same_version(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    up(argo=True)
    state.doc["services"]["charts"]["metaflow"] = "0ld-checksum"  # recorded before an edit

    again = up(argo=True)

    assert len(again.mutating()) == 1
    assert " upgrade --install metaflow " in again.mutating()[0]
    assert state.doc["services"]["charts"]["metaflow"] == services.chart_checksum(
        ROOT / "charts" / "metaflow"
    )


def test_changed_values_upgrade_that_release_only(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    up(argo=True)
    state.doc["db_generation"] = 3  # infra.up moved to a new SQL instance

    again = up(argo=True)

    assert len(again.mutating()) == 1
    assert cluster.releases[("metaflow", "metaflow")].values["database"] == {
        "instanceConnectionName": "acme-ml-prod:us-west2:mf-dev-pg-3"
    }


# ---------------------------------------------------------------------------------------
# Namespaces, identities, and the upgrade from the single-account shape

PSA = "pod-security.kubernetes.io"


def test_every_namespace_is_labelled_for_pod_security_before_anything_lands_in_it(
    cluster: FakeCluster, up: Up
) -> None:
    run = up(argo=True)  # airflow's namespace: tests/unit/test_airflow_services.py

    expected = {
        "metaflow": "baseline",
        "metaflow-services": "baseline",
        "argo": "baseline",
        "argo-events": "baseline",
    }
    for namespace, enforce in expected.items():
        labels = cluster.namespaces[namespace]
        assert labels[f"{PSA}/enforce"] == enforce, namespace
        assert labels[f"{PSA}/warn"] == labels[f"{PSA}/audit"] == "restricted", namespace
        assert labels[f"{PSA}/enforce-version"] == "v1.33"
        assert labels["app.kubernetes.io/managed-by"] == "metaflow-gcp"
    assert not any(a.startswith("create") and "namespace" in a for a in run.mutating())


def test_an_existing_namespace_gets_its_labels_and_keeps_its_own(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.namespaces["metaflow"] = {"team": "ml", f"{PSA}/enforce": "privileged"}

    run = up(argo=False)

    assert cluster.namespaces["metaflow"]["team"] == "ml"
    assert cluster.namespaces["metaflow"][f"{PSA}/enforce"] == "baseline"
    manifest = json.loads(run.calls[run.applied("Namespace", "metaflow")][1] or "{}")
    assert set(manifest["metadata"]) == {"name", "labels"}  # nothing but our labels applied


def test_each_google_account_is_bound_to_its_own_kubernetes_account_only(
    cluster: FakeCluster, up: Up
) -> None:
    up(argo=True)  # Airflow's accounts: tests/unit/test_airflow_services.py

    assert cluster.wi_members(SERVICES_GSA) == {
        f"serviceAccount:{POOL}[metaflow-services/{SERVICES_KSA}]"
    }
    assert cluster.wi_members(STEPS_GSA) == {f"serviceAccount:{POOL}[metaflow/{STEPS_KSA}]"}


def test_two_stacks_in_one_project_share_no_workload_identity_member(
    cluster: FakeCluster, tools: dict[str, str], state: FakeState
) -> None:
    def members(stack_name: str) -> set[str]:
        stack = open_stack({**SETTINGS, "stack": stack_name}, env=tools)
        run = services.ServicesRun(stack, None, None, ROOT)  # type: ignore[arg-type]
        return {f"{ns}/{ksa}" for pairs in run.wanted_ksas().values() for ns, ksa in pairs}

    assert members("dev").isdisjoint(members("prod"))


def test_an_upgrade_moves_the_services_then_removes_the_old_secret_account_and_google_account(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.upgraded_from_the_single_account_shape()

    run = up(argo=True)

    release = run.index("upgrade", "--install", "metaflow")
    assert run.applied("Secret", "metaflow-db") < release
    old_secret = run.index("delete", "secret", "metaflow-db")
    old_account = run.index("delete", "serviceaccount", "metaflow")
    assert release < old_secret and release < old_account
    assert flag(run.argvs()[old_secret], "--namespace") == "metaflow"
    assert ("metaflow", "metaflow-db") not in cluster.secrets
    assert ("metaflow", "metaflow") not in cluster.service_accounts
    assert ("metaflow-services", "metaflow-db") in cluster.secrets
    # The legacy Google account goes last, after every release moved off it.
    retired = run.index("iam", "service-accounts", "delete", LEGACY_GSA)
    assert all(
        i < retired for i, argv in enumerate(run.argvs()) if "upgrade" in argv and "helm" in argv
    )
    assert LEGACY_GSA not in cluster.google_accounts
    assert "services.up finished" in run.output


def test_an_upgraded_stack_converges_and_a_re_run_changes_nothing(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.upgraded_from_the_single_account_shape()
    up(argo=True)

    again = up(argo=True)

    assert again.mutating() == []


def test_the_old_account_stays_while_a_pod_still_runs_as_it_and_goes_on_the_next_run(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.upgraded_from_the_single_account_shape()
    cluster.pods = [
        {
            "metadata": {"name": "old-workflow-step-1", "namespace": "metaflow"},
            "spec": {"serviceAccountName": "metaflow"},
            "status": {"phase": "Running"},
        }
    ]

    up(argo=True)
    assert ("metaflow", "metaflow") in cluster.service_accounts
    assert ("metaflow", "metaflow-db") not in cluster.secrets  # the password goes at once

    cluster.pods[0]["status"]["phase"] = "Succeeded"
    up(argo=True)
    assert ("metaflow", "metaflow") not in cluster.service_accounts


def test_argo_workflows_defaults_to_this_stacks_steps_account(cluster: FakeCluster, up: Up) -> None:
    run = up(argo=True)

    argv = helm_upgrade(run, "argo-workflows")
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set-string"]
    # The only account Argo needs named: charts/metaflow binds the executor and agent Roles
    # to it, since the chart's own workflow RBAC would land in "argo" (singleNamespace).
    assert sets == [f"controller.workflowDefaults.spec.serviceAccountName={STEPS_KSA}"]
    values = cluster.releases[("argo", "argo-workflows")].values
    assert values["workflow"]["rbac"] == {"create": False}


def test_the_config_carries_the_secrets_prefix_from_the_recorded_project_number(
    cluster: FakeCluster, up: Up
) -> None:
    up(argo=True)

    config = json.loads((services.nextsteps.config_home() / "config.json").read_text())
    assert config["METAFLOW_GCP_SECRET_MANAGER_PREFIX"] == "projects/123456/secrets/mf-dev-user-"
    assert config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] == STEPS_KSA


# ---------------------------------------------------------------------------------------
# Failures


def test_a_failed_release_is_named_on_one_line_and_the_independent_ones_finish(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    cluster.fail = {"argo-events"}

    with pytest.raises(StackError, match=r"release argo-events \(argo-events\).* failed"):
        up(argo=True)

    assert {"metaflow", "argo-workflows"} <= cluster.release_names()
    assert ("metaflow", "metaflow-argo-events") not in cluster.releases  # needs argo-events
    assert state.doc["lock"] is None and state.doc["services"]["ok"] is False


def test_the_failure_summary_is_one_line_per_failed_release(
    cluster: FakeCluster, tools: dict[str, str], state: FakeState
) -> None:
    cluster.fail = {"argo-events"}
    out = StringIO()
    stack = open_stack(
        {**SETTINGS, "deploy_argo": True, "deploy_jobset": False},
        env=tools,
        console=Console(file=out, width=400, color_system=None),
    )
    stack.state = state  # type: ignore[assignment]

    with pytest.raises(StackError):
        services.up(stack)

    crosses = [line for line in out.getvalue().splitlines() if line.startswith("✘")]
    assert crosses == [
        "✘ release argo-events (argo-events) 2.4.22 failed: helm failed: Error: INSTALLATION "
        "FAILED: context deadline exceeded"
    ]
    assert "not started (they need what failed): release metaflow-argo-events" in out.getvalue()


def test_a_release_stuck_in_pending_upgrade_says_how_to_unstick_it(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.releases[("argo", "argo-workflows")] = HelmRelease(
        "argo-workflows", "argo", "argo-workflows-0.45.20", {}, status="pending-upgrade"
    )

    with pytest.raises(StackError, match="argo-workflows"):
        up(argo=True)

    assert up.last is not None
    assert (
        "release argo-workflows in argo is 'pending-upgrade' (an earlier helm run was "
        f"interrupted). Fix: `helm --kube-context={CONTEXT} rollback argo-workflows "
        "--namespace=argo`, then run `inv services.up` again"
    ) in up.last.output
    assert not any(m[2:5] == ["upgrade", "--install", "argo-workflows"] for m in cluster.mutations)
    assert "metaflow" in cluster.release_names()  # the independent releases went on


def test_a_lock_held_by_someone_else_stops_before_any_change(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    state.doc["lock"] = {"id": "x", "holder": "ana@laptop", "since": "09:00", "task": "infra.up"}

    with pytest.raises(LockHeld, match="ana@laptop"):
        up(argo=True)

    assert cluster.mutations == []


def test_a_missing_kube_context_is_one_line_with_the_fix(
    fp: FakeProcess, tools: dict[str, str], state: FakeState, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-kubeconfig"
    empty.write_text("contexts: []\n")
    stack = open_stack(
        SETTINGS, env={**tools, "KUBECONFIG": str(empty)}, console=Console(file=StringIO())
    )
    stack.state = state  # type: ignore[assignment]

    with pytest.raises(StackError, match="gcloud container clusters get-credentials mf-dev"):
        services.up(stack)

    assert len(fp.calls) == 0


def test_a_stack_without_infra_is_refused_and_the_lock_released(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    del state.doc["infra"]

    with pytest.raises(StackError, match=re.escape("run `inv infra.up` first")):
        up(argo=True)

    assert cluster.mutations == [] and state.doc["lock"] is None


# ---------------------------------------------------------------------------------------
# Switching components on and off


def test_argo_without_airflow_never_touches_airflow(cluster: FakeCluster, up: Up) -> None:
    run = up(argo=True, airflow=False)

    assert "airflow" not in cluster.release_names()
    assert "airflow" not in cluster.namespaces
    assert not any("airflow" in m for m in cluster.wi_members(STEPS_GSA))
    assert not any(a.startswith("--namespace=airflow") for argv in run.argvs() for a in argv)


def test_switching_argo_off_removes_the_event_objects_before_argo_events(
    cluster: FakeCluster, up: Up
) -> None:
    up(argo=True)

    run = up(argo=False, yes=True)

    assert cluster.release_names() == {"metaflow"}
    assert run.index("uninstall", "metaflow-argo-events") < run.index("uninstall", "argo-events")
    assert cluster.releases[("metaflow", "metaflow")].values["argoWorkflows"] == {"enabled": False}


def test_a_release_uninstalled_with_kept_history_counts_as_absent(
    cluster: FakeCluster, up: Up
) -> None:
    cluster.releases[("airflow", "airflow")] = HelmRelease(
        "airflow", "airflow", "airflow-1.15.0", {}, status="uninstalled"
    )

    up(argo=True, airflow=False, interactive=lambda: False)  # nothing to confirm, no refusal

    assert not any("uninstall" in m for m in cluster.mutations)


def test_switching_off_without_a_terminal_or_yes_refuses_in_one_line(
    cluster: FakeCluster, up: Up, state: FakeState
) -> None:
    up(argo=True)
    cluster.mutations.clear()
    writes = state.writes

    with pytest.raises(StackError) as refused:
        up(argo=False, interactive=lambda: False)

    assert str(refused.value) == (
        "services.up would uninstall metaflow-argo-events, argo-events, argo-workflows; nothing "
        "was changed. Fix: pass --yes to confirm, or --argo to keep them"
    )
    assert cluster.mutations == [] and state.writes == writes
    assert "argo-workflows" in cluster.release_names()


def test_declining_the_removal_changes_nothing(
    cluster: FakeCluster, up: Up, monkeypatch: pytest.MonkeyPatch
) -> None:
    up(argo=True)
    cluster.mutations.clear()
    monkeypatch.setattr(TaskRun, "confirm", lambda self, question: False)

    with pytest.raises(StackError, match="not confirmed"):
        up(argo=False, interactive=lambda: True)

    assert cluster.mutations == []


# ---------------------------------------------------------------------------------------
# Dry run


def test_dry_run_prints_every_command_in_order_and_calls_nothing(
    fp: FakeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class NoStdin:
        def read(self, *args: Any) -> str:
            raise AssertionError("a dry run read stdin")

        readline = read

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NoStdin())
    out = StringIO()
    stack = open_stack(
        {**SETTINGS, "deploy_argo": True, "deploy_airflow": False, "deploy_jobset": False},
        dry_run=True,
        env={"PATH": str(tmp_path / "nothing-here")},
        console=Console(file=out, width=500, color_system=None),
    )

    services.up(stack)

    assert len(fp.calls) == 0
    lines = [line.strip() for line in out.getvalue().splitlines() if line.strip().startswith("$")]
    order = [
        f"gcloud iam service-accounts set-iam-policy {SERVICES_GSA}",
        f"gcloud iam service-accounts set-iam-policy {STEPS_GSA}",
        "kubectl --context=gke_acme-ml-prod_us-west2-a_mf-dev apply --server-side",
        "gcloud secrets versions access latest",
        "--namespace=metaflow-services apply --server-side",
        "upgrade --install metaflow ",
        "--namespace=metaflow get secret metaflow-db",
        "--namespace=metaflow get serviceaccount metaflow",
        "upgrade --install argo-workflows ",
        "upgrade --install argo-events ",
        "upgrade --install metaflow-argo-events ",
        f"gcloud iam service-accounts delete {LEGACY_GSA}",
    ]
    positions = [next(i for i, line in enumerate(lines) if part in line) for part in order]
    assert positions == sorted(positions)
    assert not any("airflow" in line for line in lines)
    assert "would write" in out.getvalue()
    assert not (tmp_path / "metaflowconfig").exists()


# ---------------------------------------------------------------------------------------
# Pieces


def test_the_repository_root_is_found_from_the_package() -> None:
    assert services.repo_root() == ROOT
    assert services.repo_root(ROOT / "lib" / "metaflow_gcp" / "services.py") == ROOT


def test_the_repository_root_is_a_clear_error_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="cannot find the charts/ and values/ folders"):
        services.repo_root(tmp_path / "x.py")


def test_versions_without_an_exact_pin_are_refused(tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "versions.yaml").write_text(
        "argo-workflows: {repo: r, chart: c}\nargo-events: {repo: r, chart: c, version: '1'}\n"
        "airflow: {repo: r, chart: c, version: '1'}\n"
    )
    with pytest.raises(StackError, match="'argo-workflows' lacks version"):
        services.load_versions(tmp_path)


def test_chart_checksum_changes_with_any_template_edit(tmp_path: Path) -> None:
    chart = tmp_path / "metaflow"
    shutil.copytree(ROOT / "charts" / "metaflow", chart)
    before = services.chart_checksum(chart)
    assert services.chart_checksum(chart) == before
    (chart / "templates" / "ui.yaml").write_text("# edited\n", encoding="utf-8")
    assert services.chart_checksum(chart) != before


def test_set_keys_and_values_are_escaped_the_way_helm_parses_them() -> None:
    release = services.Release(
        "r",
        "ns",
        "chart",
        "chart",
        "1",
        set_string=((("a", "iam.gke.io/x"), "v,w"),),
    )
    argv = release.argv()
    assert argv[argv.index("--set-string") + 1] == "a.iam\\.gke\\.io/x=v\\,w"
    assert helm_user_values(argv) == release.desired_values() == {"a": {"iam.gke.io/x": "v,w"}}
