"""services.up for Airflow and JobSet: Airflow's database on Cloud SQL, its proxy, its accounts.

The fake cluster of tests/support/cluster.py is extended with what these steps ask of gcloud
(Cloud SQL databases and users, Airflow's Secret Manager secret, one IAM policy per Google
account) and of kubectl (the old bundled Postgres' volume claim), so a second run sees what
the first one left. Helm's OCI references (JobSet) are answered as Helm does: no --repo.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp import airflow_db, releases, services
from metaflow_gcp.app import open_stack
from metaflow_gcp.config import validate
from metaflow_gcp.errors import ConfigErrors
from metaflow_gcp.gcp import iam
from tests.support.cluster import FakeCluster, HelmRelease, flag, helm_user_values
from tests.support.console import CapturedConsole
from tests.support.services_up import (  # noqa: F401 - fixtures, found by pytest by name
    ServicesUp,
    helm_upgrade,
    private_homes_fixture,
    state_fixture,
    tools_fixture,
)
from tests.support.stack import (
    POOL,
    PROJECT_NUMBER,
    SERVICES_GSA,
    SETTINGS,
    STEPS_GSA,
    FakeState,
)

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SECRET = "mf-dev-airflow-db-password"
CONCURRENT_POLICY_CHANGE = (
    "ERROR: (gcloud.iam.service-accounts.set-iam-policy) ABORTED: There were concurrent policy "
    "changes. Please retry the whole read-modify-write with exponential backoff.\n"
)
AIRFLOW_SECRET_V1 = f"projects/{PROJECT_NUMBER}/secrets/{AIRFLOW_SECRET}/versions/1"
PROXY_KSA = f"serviceAccount:{POOL}[airflow/mf-dev-airflow-db]"
STEPS_KSA = f"serviceAccount:{POOL}[airflow/mf-dev-steps]"

# The Workload Identity calls are helper gcp's API (gcp/iam.py); until it is on the branch,
# the runs that go through it cannot start.
needs_wi_api = pytest.mark.skipif(
    not hasattr(iam, "prune_workload_identity"),
    reason="needs iam.ensure/prune_workload_identity(gcloud, n, gsa, ksas, run) of helper gcp",
)


class AirflowCluster(FakeCluster):
    """FakeCluster plus Cloud SQL, Airflow's secret, per-account IAM policies and claims."""

    def __init__(self) -> None:
        super().__init__()
        self.databases: dict[str, set[str]] = {}  # instance -> database names
        self.users: dict[str, set[str]] = {}  # instance -> user names
        self.sql_order: list[str] = []  # "create database I" / "create user I"
        self.airflow_secret: str | None = None  # version name, once created
        self.policies: dict[str, dict[str, Any]] = {}
        self.iam_lock = threading.Lock()
        self.claims: set[tuple[str, str]] = set()
        self.stdins: list[str] = []

    def stdin(self, text: str) -> None:
        self.stdins.append(text)
        try:
            manifest = json.loads(text)
        except ValueError:
            return  # a password for `gcloud secrets create --data-file=-`
        if isinstance(manifest, dict) and "kind" in manifest:
            super().stdin(text)

    def gcloud(self, argv: list[str]) -> tuple[int, str, str]:  # noqa: PLR0911 - one per call
        words = [a for a in argv[1:] if not a.startswith("--")]
        instance = flag(argv, "--instance") or ""
        if words[:2] == ["sql", "databases"]:
            found = self.databases.setdefault(instance, set())
            if words[2] == "list":
                return 0, json.dumps([{"name": d} for d in sorted(found)]), ""
            self.mutations.append(argv)
            self.sql_order.append(f"create database {instance}")
            found.add(words[3])
            return 0, "{}", ""
        if words[:2] == ["sql", "users"]:
            found = self.users.setdefault(instance, set())
            if words[2] == "list":
                return 0, json.dumps([{"name": u} for u in sorted(found)]), ""
            if "--flags-file=-" not in argv or any("--password=" in a for a in argv):
                self.problems.append(f"a password not on stdin: {argv}")
            self.mutations.append(argv)
            self.sql_order.append(f"{words[2]} user {instance}")
            found.add(words[3])
            return 0, "", ""
        secret = flag(argv, "--secret") or (words[2] if len(words) > 2 else "")
        if AIRFLOW_SECRET in (secret, *words):
            return self.airflow_secret_call(argv, words)
        if words[:2] == ["iam", "service-accounts"] and len(words) > 3:
            email = words[3]
            with self.iam_lock:  # steps run at once: IAM's etag check is what keeps them apart
                current = self.policies.get(email, {"etag": "BwYA"})
                if words[2] == "get-iam-policy":
                    return 0, json.dumps(current), ""
                if words[2] == "set-iam-policy":
                    policy = json.loads(Path(words[4]).read_text())
                    if policy.get("etag") != current["etag"]:
                        return 1, "", CONCURRENT_POLICY_CHANGE
                    self.mutations.append(argv)
                    self.policies[email] = {**policy, "etag": f"BwY{len(self.mutations)}"}
                    return 0, json.dumps(self.policies[email]), ""
        if words[:3] == ["iam", "service-accounts", "list"]:
            listed = [{"email": e} for e in (SERVICES_GSA, STEPS_GSA)]
            return 0, json.dumps(listed), ""
        return super().gcloud(argv)

    def airflow_secret_call(self, argv: list[str], words: list[str]) -> tuple[int, str, str]:
        missing = 1, "", f"ERROR: (gcloud.secrets) NOT_FOUND: Secret [{AIRFLOW_SECRET}] not found"
        if words[:2] == ["secrets", "describe"]:
            return (0, json.dumps({"name": AIRFLOW_SECRET}), "") if self.airflow_secret else missing
        if words[:2] == ["secrets", "create"]:
            self.mutations.append(argv)
            self.airflow_secret = AIRFLOW_SECRET_V1
            return 0, "", ""
        if words[:3] == ["secrets", "versions", "describe"]:
            if not self.airflow_secret:
                return missing
            return 0, json.dumps({"name": self.airflow_secret, "state": "ENABLED"}), ""
        if words[:3] == ["secrets", "versions", "access"]:
            return 0, created_password(self), ""
        self.problems.append(f"unexpected gcloud call: {argv}")
        return 2, "", "ERROR: not faked"

    def kubectl(self, argv: list[str]) -> tuple[int, str, str]:
        words = [a for a in argv[1:] if not a.startswith("--")]
        if words[:2] == ["get", "persistentvolumeclaim"]:
            key = (flag(argv, "--namespace") or "default", words[2])
            if key not in self.claims:
                missing = f'persistentvolumeclaims "{words[2]}" not found'
                return 1, "", f"Error from server (NotFound): {missing}"
            return 0, json.dumps({"kind": "PersistentVolumeClaim"}), ""
        if words[:1] == ["delete"]:
            self.problems.append(f"services.up deleted something: {argv}")
        return super().kubectl(argv)

    def helm(self, argv: list[str]) -> tuple[int, str, str]:
        words = [a for a in argv[1:] if not a.startswith("--")]
        if words[:1] == ["upgrade"] and words[2].startswith("oci://"):
            if flag(argv, "--repo"):
                self.problems.append(f"an OCI chart with --repo: {argv}")
            ns = flag(argv, "--namespace") or ""
            if ns not in self.namespaces:
                return 1, "", f'Error: create: namespaces "{ns}" not found'
            self.mutations.append(argv)
            name = words[1]
            label = f"{words[2].rsplit('/', 1)[-1]}-{flag(argv, '--version')}"
            self.releases[(ns, name)] = HelmRelease(name, ns, label, helm_user_values(argv))
            return 0, f'Release "{name}" has been upgraded.', ""
        return super().helm(argv)

    def members(self, email: str) -> set[str]:
        return {
            member
            for binding in self.policies.get(email, {}).get("bindings", [])
            if binding["role"] == "roles/iam.workloadIdentityUser"
            for member in binding["members"]
        }


@pytest.fixture
def cluster(fp: FakeProcess) -> Iterator[AirflowCluster]:
    fake = AirflowCluster()
    fake.install(fp)
    yield fake
    assert fake.problems == []


@pytest.fixture
def up(tools: dict[str, str], state: FakeState) -> ServicesUp:
    """services.up, Airflow on, Argo and JobSet off."""
    return ServicesUp(tools, state, width=600, argo=False, airflow=True)


def created_password(cluster: AirflowCluster) -> str:
    """What `gcloud secrets create --data-file=-` got on stdin: the only non-JSON stdin."""
    plain = []
    for text in cluster.stdins:
        try:
            json.loads(text)
        except ValueError:
            plain.append(text)
    assert len(plain) == 1
    return plain[0]


def connection(cluster: AirflowCluster) -> tuple[str, dict[str, str]]:
    secret = cluster.secrets[("airflow", airflow_db.CONNECTION_SECRET)]
    url = base64.b64decode(secret["data"][airflow_db.CONNECTION_KEY]).decode()
    return url, secret["metadata"]["annotations"]


# ---------------------------------------------------------------------------------------
# Airflow's database


@needs_wi_api
def test_airflows_database_and_user_are_made_on_the_stacks_instance_with_a_stdin_password(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    run = up()

    assert cluster.airflow_secret == AIRFLOW_SECRET_V1
    password = created_password(cluster)
    assert cluster.databases["mf-dev-pg-2"] == {"airflow"}
    assert cluster.users["mf-dev-pg-2"] == {"airflow"}
    # Cloud SQL takes one operation per instance at a time: the database, then the user.
    assert cluster.sql_order == ["create database mf-dev-pg-2", "create user mf-dev-pg-2"]
    assert json.dumps({"--password": password}) in cluster.stdins
    user_create = run.argvs()[run.index("users", "create", "airflow")]
    assert "--flags-file=-" in user_create
    for argv in run.argvs():
        assert not any(password in a for a in argv)
    assert password not in run.output
    reads = [argv for argv in run.argvs() if "access" in argv and AIRFLOW_SECRET in " ".join(argv)]
    assert reads == []  # kept in memory, never read back


@needs_wi_api
def test_airflow_gets_its_url_through_the_proxy_in_a_secret_built_in_memory(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    run = up()

    password = created_password(cluster)
    url, annotations = connection(cluster)
    assert url == (
        f"postgresql://airflow:{password}@airflow-db-proxy.airflow:5432/airflow?sslmode=disable"
    )
    assert annotations == {
        "metaflow-gcp/sql-instance": "mf-dev-pg-2",
        "metaflow-gcp/secret-version": AIRFLOW_SECRET_V1,
    }
    applied = run.argvs()[
        next(
            i
            for i, (_, stdin) in enumerate(run.calls)
            if stdin and airflow_db.CONNECTION_SECRET in stdin
        )
    ]
    assert applied[2:5] == ["--namespace=airflow", "apply", "--server-side"]
    assert run.index("users", "create", "airflow") < run.calls.index(
        next(c for c in run.calls if c[1] and airflow_db.CONNECTION_SECRET in c[1])
    )
    assert ("airflow", "airflow-postgres") not in cluster.secrets  # no bundled Postgres


@needs_wi_api
def test_the_proxy_release_comes_before_airflow_with_this_stacks_instance_and_accounts(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    run = up()

    proxy = helm_upgrade(run, "metaflow-airflow")
    assert proxy[5] == str(ROOT / "charts" / "metaflow-airflow")
    assert flag(proxy, "--namespace") == "airflow"
    values = cluster.releases[("airflow", "metaflow-airflow")].values
    assert values == {
        "database": {"instanceConnectionName": "acme-ml-prod:us-west2:mf-dev-pg-2"},
        "serviceAccounts": {
            "dbProxy": {"name": "mf-dev-airflow-db", "gcpServiceAccount": SERVICES_GSA},
            "steps": {"name": "mf-dev-steps", "gcpServiceAccount": STEPS_GSA},
        },
    }
    assert run.index("upgrade", "--install", "metaflow-airflow") < run.index(
        "upgrade", "--install", "airflow", "--version=1.22.0"
    )
    assert "1.22.0" in cluster.releases[("airflow", "airflow")].chart


@needs_wi_api
def test_the_proxy_acts_as_the_services_account_and_step_pods_as_the_steps_account(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    up()

    assert PROXY_KSA in cluster.members(SERVICES_GSA)
    assert STEPS_KSA in cluster.members(STEPS_GSA)
    assert PROXY_KSA not in cluster.members(STEPS_GSA)
    assert STEPS_KSA not in cluster.members(SERVICES_GSA)


@needs_wi_api
def test_a_second_run_changes_nothing_and_reads_no_password(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    up()
    before = len(cluster.mutations)

    again = up()

    assert again.mutating() == []
    assert len(cluster.mutations) == before
    assert not any("access" in argv for argv in again.argvs())


@needs_wi_api
def test_a_new_sql_generation_gets_the_database_the_user_and_a_new_secret(
    cluster: AirflowCluster, up: ServicesUp, state: FakeState
) -> None:
    """After teardown and infra.up again, the instance is mf-dev-pg-3 (same password)."""
    up()
    state.doc["db_generation"] = 3

    run = up()

    assert cluster.databases["mf-dev-pg-3"] == {"airflow"}
    assert cluster.users["mf-dev-pg-3"] == {"airflow"}
    _, annotations = connection(cluster)
    assert annotations["metaflow-gcp/sql-instance"] == "mf-dev-pg-3"
    values = cluster.releases[("airflow", "metaflow-airflow")].values
    assert values["database"]["instanceConnectionName"] == "acme-ml-prod:us-west2:mf-dev-pg-3"
    # The password is Secret Manager's, read once (on stdin to Cloud SQL, in the URL).
    assert run.index("secrets", "versions", "access") < run.index("users", "create")
    url, _ = connection(cluster)
    assert f"airflow:{created_password(cluster)}@" in url


# ---------------------------------------------------------------------------------------
# Upgrading a stack that ran the bundled Postgres


@needs_wi_api
def test_an_upgraded_stack_keeps_the_old_claim_and_is_told_how_to_move_its_history(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    cluster.namespaces.setdefault("airflow", {})
    cluster.claims.add(("airflow", airflow_db.LEGACY_CLAIM))
    cluster.releases[("airflow", "airflow")] = HelmRelease(
        "airflow", "airflow", "airflow-1.15.0", {"postgresql": {"auth": {}}}
    )

    run = up()

    assert ("airflow", airflow_db.LEGACY_CLAIM) in cluster.claims
    assert cluster.releases[("airflow", "airflow")].chart == "airflow-1.22.0"
    text = " ".join(run.output.split())
    assert "was NOT moved: the claim is kept" in text
    for command in airflow_db.migration_commands(open_stack(SETTINGS).names):
        assert " ".join(command.split()) in text
    assert not any("delete" in argv for argv in run.argvs() if argv[0] == "kubectl")


@needs_wi_api
def test_a_stack_without_the_old_claim_hears_nothing_about_it(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    run = up()

    assert "NOT moved" not in run.output
    assert "pg_dump" not in run.output


def test_the_migration_dumps_the_old_volume_and_restores_through_the_proxy() -> None:
    n = validate(SETTINGS).names()
    commands = airflow_db.migration_commands(n)
    assert all(
        c.startswith(f"kubectl --context={n.kube_context} --namespace=airflow ")
        for c in commands[:1] + commands[2:]
    )
    assert commands[0].endswith("scale deployment airflow-scheduler --replicas=0")
    assert commands[-1].endswith("scale deployment airflow-scheduler --replicas=1")
    copy = next(c for c in commands if "pg_dump" in c)
    assert "--host=127.0.0.1" in copy and 'pg_restore --dbname="$TARGET_URL"' in copy
    assert "set -o pipefail" in copy
    assert any(c.endswith("airflow db migrate") for c in commands)
    pod = airflow_db.migration_pod(n)
    spec: Any = pod["spec"]
    assert spec["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": airflow_db.LEGACY_CLAIM}}
    ]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec["containers"][0]["env"]}
    assert env == {
        "POSTGRES_PASSWORD": {"name": "airflow-postgres", "key": "postgres-password"},
        "TARGET_URL": {"name": airflow_db.CONNECTION_SECRET, "key": "connection"},
    }
    # The pod as the user would run it: kubectl gets valid JSON on stdin.
    shell = subprocess.run(
        ["sh", "-c", commands[1].split(" | kubectl")[0]], capture_output=True, text=True, check=True
    )
    assert json.loads(shell.stdout) == pod


# ---------------------------------------------------------------------------------------
# Switching Airflow off


@needs_wi_api
def test_switching_airflow_off_removes_airflow_then_its_proxy_then_the_identities(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    up()

    run = up(airflow=False, yes=True)

    assert run.index("uninstall", "airflow", "--namespace=airflow") < run.index(
        "uninstall", "metaflow-airflow"
    )
    assert run.index("uninstall", "metaflow-airflow") < max(
        i for i, argv in enumerate(run.argvs()) if "set-iam-policy" in argv
    )
    assert PROXY_KSA not in cluster.members(SERVICES_GSA)
    assert STEPS_KSA not in cluster.members(STEPS_GSA)
    # History stays: Cloud SQL database, user and password are not touched.
    assert cluster.databases["mf-dev-pg-2"] == {"airflow"}
    assert not any(
        argv[1:3] in (["sql", "databases"], ["sql", "users"])
        for argv in run.argvs()
        if "delete" in argv
    )


# ---------------------------------------------------------------------------------------
# JobSet


@needs_wi_api
def test_jobset_is_installed_from_its_oci_chart_then_its_network_boundary(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    run = up(airflow=False, jobset=True)

    argv = helm_upgrade(run, "jobset")
    assert argv[5] == "oci://registry.k8s.io/jobset/charts/jobset"
    assert flag(argv, "--version") == "0.12.0"
    assert flag(argv, "--namespace") == "jobset-system"
    assert flag(argv, "--values") == str(ROOT / "values" / "jobset.yaml")
    assert run.applied("Namespace", "jobset-system") < run.index(
        "upgrade", "--install", "jobset"
    )
    boundary = helm_upgrade(run, "metaflow-jobset")
    assert boundary[5] == str(ROOT / "charts" / "metaflow-jobset")
    assert run.argvs().index(argv) < run.argvs().index(boundary)

    again = up(airflow=False, jobset=True)
    assert again.mutating() == []


@needs_wi_api
def test_switching_jobset_off_removes_both_releases_and_says_how_to_keep_them(
    cluster: AirflowCluster, up: ServicesUp
) -> None:
    up(airflow=False, jobset=True)

    with pytest.raises(Exception, match=re.escape("or --jobset to keep them")):
        up(airflow=False, jobset=False, interactive=lambda: False)
    run = up(airflow=False, jobset=False, yes=True)

    assert {name for _, name in cluster.releases} & {"jobset", "metaflow-jobset"} == set()
    assert "- jobset (namespace jobset-system, deployed)" in run.output


# ---------------------------------------------------------------------------------------
# The switch


def test_jobset_is_on_unless_switched_off() -> None:
    assert validate(SETTINGS).deploy_jobset is True
    assert validate({**SETTINGS, "deploy_jobset": "false"}).deploy_jobset is False
    with pytest.raises(ConfigErrors, match="deploy_jobset"):
        validate({**SETTINGS, "deploy_jobset": "sometimes"})


def test_services_up_takes_jobset_and_no_jobset() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "services.up", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--jobset" in done.stdout and "--no-jobset" in done.stdout
    clash = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "services.up",
            "--jobset",
            "--no-jobset",
            "--dry-run",
            "--var-file",
            "examples/example.tfvars",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert clash.returncode == 2
    assert "--jobset and --no-jobset contradict each other" in clash.stderr


# ---------------------------------------------------------------------------------------
# Dry run and pins


@needs_wi_api
def test_a_dry_run_prints_airflows_database_before_its_secret_its_proxy_and_airflow(
    fp: FakeProcess, tmp_path: Path
) -> None:
    console = CapturedConsole(width=600)
    stack = open_stack(
        {**SETTINGS, "deploy_argo": False, "deploy_airflow": True, "deploy_jobset": True},
        dry_run=True,
        env={"PATH": str(tmp_path / "nothing-here")},
        console=console,
    )

    services.up(stack)

    assert len(fp.calls) == 0
    lines = [line.strip() for line in console.text.splitlines() if line.strip().startswith("$")]
    order = [
        f"gcloud secrets create {AIRFLOW_SECRET}",
        "gcloud sql databases create airflow --instance=mf-dev-pg-0",
        "gcloud sql users create airflow --instance=mf-dev-pg-0 --flags-file=-",
        "--namespace=airflow apply --server-side",
        "upgrade --install metaflow-airflow ",
        "upgrade --install airflow airflow --repo=https://airflow.apache.org --version=1.22.0",
    ]
    positions = [next(i for i, line in enumerate(lines) if part in line) for part in order]
    assert positions == sorted(positions)
    assert any(
        "upgrade --install jobset oci://registry.k8s.io/jobset/charts/jobset" in line
        for line in lines
    )
    assert not any("--password" in line for line in lines)


def test_airflow_comes_from_the_pinned_repo_version_and_values_file() -> None:
    stack = open_stack(SETTINGS)
    pins = releases.load_versions(ROOT)
    release = releases.releases_for(stack, ROOT, pins, 2)["airflow"]
    argv = release.argv()
    assert argv[2:4] == ["airflow", "airflow"]
    assert flag(argv, "--repo") == "https://airflow.apache.org"
    assert flag(argv, "--version") == "1.22.0"
    assert flag(argv, "--values") == str(ROOT / "values" / "airflow.yaml")
    assert flag(argv, "--timeout") == "15m"
    assert "--set-string" not in argv  # nothing stack-specific: the URL comes from a Secret
