"""The Metaflow config services.up writes, where it goes, and the next steps it prints.

The decisive test loads the written files with the real `metaflow` package, in a fresh
interpreter, and checks the values Metaflow itself ends up with.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaflow_gcp import nextsteps
from metaflow_gcp.app import Stack, open_stack
from metaflow_gcp.config import Names, validate
from metaflow_gcp.nextsteps import Profile, WriteStatus
from tests.support.console import CapturedConsole

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}
NAMES: Names = validate(SETTINGS).names()
ROOT_GS = "gs://acme-acme-ml-prod-mf-dev/metaflow"

PROJECT_NUMBER = "123456789012"
BASE = {
    "METAFLOW_DEFAULT_DATASTORE": "gs",
    "METAFLOW_DATASTORE_SYSROOT_GS": ROOT_GS,
    "METAFLOW_DEFAULT_METADATA": "service",
    "METAFLOW_SERVICE_URL": "http://localhost:8080/",
    # The metadata service lives apart from user code, in metaflow-services.
    "METAFLOW_SERVICE_INTERNAL_URL": (
        "http://metadata-service.metaflow-services.svc.cluster.local:8080/"
    ),
    "METAFLOW_UI_URL": "http://localhost:3000",
    # @secrets: names under the stack's user prefix, the only ones the steps' account may read.
    "METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE": "gcp-secret-manager",
    "METAFLOW_GCP_SECRET_MANAGER_PREFIX": f"projects/{PROJECT_NUMBER}/secrets/mf-dev-user-",
}
METAFLOW_JOBS = {
    "METAFLOW_KUBERNETES_NAMESPACE": "metaflow",
    "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "mf-dev-steps",
}
# Airflow's step pods run in Airflow's namespace as the stack's steps account (Workload
# Identity, no RBAC), never as the scheduler's account with its pod-launcher Role.
AIRFLOW_JOBS = {
    "METAFLOW_KUBERNETES_NAMESPACE": "airflow",
    "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "mf-dev-steps",
}
ARGO = {
    "METAFLOW_ARGO_EVENTS_EVENT_BUS": "default",
    "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
    "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
    "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
    "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": "http://localhost:12000/metaflow-event",
    "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": (
        "http://argo-events-webhook-eventsource-svc.metaflow.svc.cluster.local:12000/metaflow-event"
    ),
    "METAFLOW_ARGO_EVENTS_WEBHOOK_AUTH": "none",
    "METAFLOW_ARGO_WORKFLOWS_UI_URL": "http://localhost:2746",
}


@pytest.fixture(autouse=True)
def _no_profile_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAFLOW_PROFILE", raising=False)


def configs(argo: bool, airflow: bool) -> dict[str, dict[str, str]]:
    return {
        p.name: p.config
        for p in nextsteps.metaflow_profiles(
            NAMES, argo=argo, airflow=airflow, project_number=PROJECT_NUMBER
        )
    }


# ---------------------------------------------------------------------------------------
# What the config says, per switch


def test_argo_only_is_one_default_profile_with_jobs_in_metaflow_and_the_event_objects() -> None:
    assert configs(argo=True, airflow=False) == {"": {**BASE, **METAFLOW_JOBS, **ARGO}}


def test_airflow_only_runs_jobs_in_airflows_namespace_as_its_own_step_account() -> None:
    assert configs(argo=False, airflow=True) == {"": {**BASE, **AIRFLOW_JOBS}}


def test_airflow_steps_never_run_as_the_schedulers_account() -> None:
    """The scheduler's account holds Airflow's pod-launcher Role, pods/exec included."""
    values = yaml.safe_load((REPO_ROOT / "values" / "airflow.yaml").read_text(encoding="utf-8"))
    scheduler = values["scheduler"]["serviceAccount"]["name"]
    for argo in (False, True):
        for config in configs(argo=argo, airflow=True).values():
            if config["METAFLOW_KUBERNETES_NAMESPACE"] == "airflow":
                assert config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] != scheduler


def test_both_make_argo_the_default_and_airflow_a_profile() -> None:
    assert configs(argo=True, airflow=True) == {
        "": {**BASE, **METAFLOW_JOBS, **ARGO},
        "airflow": {**BASE, **AIRFLOW_JOBS},
    }


def test_neither_still_configures_kubernetes_jobs_in_metaflow() -> None:
    assert configs(argo=False, airflow=False) == {"": {**BASE, **METAFLOW_JOBS}}


def test_without_a_recorded_project_number_the_secrets_keys_are_left_out() -> None:
    """A state file from before infra.up recorded the number: no guessed prefix."""
    (profile,) = nextsteps.metaflow_profiles(NAMES, argo=False, airflow=False)
    assert "METAFLOW_GCP_SECRET_MANAGER_PREFIX" not in profile.config
    assert "METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE" not in profile.config


def test_the_secrets_prefix_joins_a_secret_name_the_way_metaflow_does() -> None:
    """Metaflow builds "%s%s" % (prefix, name) and appends /versions/latest."""
    prefix = BASE["METAFLOW_GCP_SECRET_MANAGER_PREFIX"]
    full = f"{prefix}db-token/versions/latest"
    assert re.fullmatch(r"projects/\d+/secrets/([\w\-]+)(/versions/([\w\-]+))?", full)
    assert full.split("/")[3].startswith(NAMES.user_secret_prefix)


def test_the_internal_urls_name_the_services_the_charts_create() -> None:
    root = Path(__file__).resolve().parents[2]
    service = (root / "charts" / "metaflow" / "templates" / "metadata-service.yaml").read_text()
    assert re.search(r"kind: Service\nmetadata:\n  name: metadata-service\n", service)
    values = (root / "charts" / "metaflow-argo-events" / "values.yaml").read_text()
    for line in (
        "eventSourceName: argo-events-webhook",
        "eventName: metaflow-event",
        "port: 12000",
        "name: default",
        "sensorServiceAccount: operate-workflow-sa",
    ):
        assert line in values


def test_every_key_is_one_the_installed_metaflow_reads() -> None:
    spec = importlib.util.find_spec("metaflow")  # located, not imported: no side effects here
    assert spec is not None and spec.submodule_search_locations
    source = (Path(spec.submodule_search_locations[0]) / "metaflow_config.py").read_text()
    known = set(re.findall(r'from_conf\(\s*"([A-Z0-9_]+)"', source))
    keys = {k for config in configs(argo=True, airflow=True).values() for k in config}
    assert {k.removeprefix("METAFLOW_") for k in keys} <= known


def test_the_config_holds_no_secret_and_only_strings() -> None:
    for argo in (True, False):
        for airflow in (True, False):
            for profile in nextsteps.metaflow_profiles(NAMES, argo=argo, airflow=airflow):
                assert all(isinstance(v, str) for v in profile.config.values())
                assert not any(re.search("PASSWORD|TOKEN|KEY", k) for k in profile.config)


# ---------------------------------------------------------------------------------------
# Metaflow itself reads what we wrote


def metaflow_sees(home: Path, profile: str | None = None) -> dict[str, Any]:
    """Import metaflow in a fresh interpreter with only our config, and report its settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env["METAFLOW_HOME"] = str(home)
    env["HOME"] = str(home.parent)  # no ~/.metaflowconfig of the machine can leak in
    if profile:
        env["METAFLOW_PROFILE"] = profile
    code = """
import json
from metaflow import metaflow_config as c
from metaflow.integrations import ArgoEvent
names = ["DEFAULT_DATASTORE", "DATASTORE_SYSROOT_GS", "DEFAULT_METADATA", "SERVICE_URL",
         "SERVICE_INTERNAL_URL", "KUBERNETES_NAMESPACE", "KUBERNETES_SERVICE_ACCOUNT",
         "ARGO_EVENTS_EVENT_BUS", "ARGO_EVENTS_EVENT_SOURCE", "ARGO_EVENTS_EVENT",
         "ARGO_EVENTS_SERVICE_ACCOUNT", "ARGO_EVENTS_WEBHOOK_URL",
         "ARGO_EVENTS_INTERNAL_WEBHOOK_URL", "ARGO_EVENTS_WEBHOOK_AUTH",
         "ARGO_WORKFLOWS_UI_URL", "UI_URL", "CARD_GSROOT", "DEFAULT_SECRETS_BACKEND_TYPE",
         "GCP_SECRET_MANAGER_PREFIX"]
seen = {n: getattr(c, n) for n in names}
seen["ArgoEvent.url"] = ArgoEvent("my-event")._url
print(json.dumps(seen))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=home.parent,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_metaflow_loads_the_default_profile_with_our_values(tmp_path: Path) -> None:
    home = tmp_path / "metaflowconfig"
    profiles = nextsteps.metaflow_profiles(
        NAMES, argo=True, airflow=True, project_number=PROJECT_NUMBER
    )
    nextsteps.write_profiles(profiles, stack="dev", home=home)

    seen = metaflow_sees(home)

    assert seen == {
        "DEFAULT_DATASTORE": "gs",
        "DATASTORE_SYSROOT_GS": ROOT_GS,
        "DEFAULT_METADATA": "service",
        "SERVICE_URL": "http://localhost:8080/",
        "SERVICE_INTERNAL_URL": BASE["METAFLOW_SERVICE_INTERNAL_URL"],
        "KUBERNETES_NAMESPACE": "metaflow",
        "KUBERNETES_SERVICE_ACCOUNT": "mf-dev-steps",
        "ARGO_EVENTS_EVENT_BUS": "default",
        "ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
        "ARGO_EVENTS_EVENT": "metaflow-event",
        "ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
        "ARGO_EVENTS_WEBHOOK_URL": "http://localhost:12000/metaflow-event",
        "ARGO_EVENTS_INTERNAL_WEBHOOK_URL": ARGO["METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL"],
        "ARGO_EVENTS_WEBHOOK_AUTH": "none",
        "ARGO_WORKFLOWS_UI_URL": "http://localhost:2746",
        "UI_URL": "http://localhost:3000",
        "CARD_GSROOT": f"{ROOT_GS}/mf.cards",  # derived by Metaflow from our sysroot
        "ArgoEvent.url": "http://localhost:12000/metaflow-event",
        "DEFAULT_SECRETS_BACKEND_TYPE": "gcp-secret-manager",
        "GCP_SECRET_MANAGER_PREFIX": f"projects/{PROJECT_NUMBER}/secrets/mf-dev-user-",
    }


def test_metaflow_loads_the_airflow_profile_with_airflows_namespace(tmp_path: Path) -> None:
    home = tmp_path / "metaflowconfig"
    profiles = nextsteps.metaflow_profiles(NAMES, argo=True, airflow=True)
    nextsteps.write_profiles(profiles, stack="dev", home=home)

    seen = metaflow_sees(home, profile="airflow")

    assert seen["KUBERNETES_NAMESPACE"] == "airflow"
    assert seen["KUBERNETES_SERVICE_ACCOUNT"] == "mf-dev-steps"  # not airflow-scheduler
    assert seen["DATASTORE_SYSROOT_GS"] == ROOT_GS and seen["DEFAULT_METADATA"] == "service"
    assert seen["SERVICE_INTERNAL_URL"] == BASE["METAFLOW_SERVICE_INTERNAL_URL"]
    assert seen["ARGO_EVENTS_EVENT_SOURCE"] is None  # no Argo keys in Airflow's profile


def test_metaflow_loads_a_config_written_beside_an_existing_one(tmp_path: Path) -> None:
    home = tmp_path / "metaflowconfig"
    home.mkdir()
    (home / "config.json").write_text('{"METAFLOW_DEFAULT_DATASTORE": "s3"}\n')
    [written] = nextsteps.write_profiles(
        nextsteps.metaflow_profiles(NAMES, argo=True, airflow=False), stack="dev", home=home
    )

    assert metaflow_sees(home)["DEFAULT_DATASTORE"] == "s3"  # the user's file still rules
    assert metaflow_sees(home, profile=written.profile)["DATASTORE_SYSROOT_GS"] == ROOT_GS


# ---------------------------------------------------------------------------------------
# Writing: never silently overwrite


def profile(config: dict[str, str], name: str = "") -> Profile:
    return Profile(name, config, "test")


def test_a_new_home_is_made_private_and_the_file_is_plain_sorted_json(tmp_path: Path) -> None:
    home = tmp_path / "deep" / "metaflowconfig"
    [written] = nextsteps.write_profiles([profile({"B": "2", "A": "1"})], stack="dev", home=home)

    assert written.status is WriteStatus.WRITTEN and written.path == home / "config.json"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "config.json").read_text() == '{\n  "A": "1",\n  "B": "2"\n}\n'
    assert [p.name for p in home.iterdir()] == ["config.json"]  # no temp file left behind


def test_an_identical_file_is_left_unchanged(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"A": "1"}')
    before = (tmp_path / "config.json").stat().st_mtime_ns

    [written] = nextsteps.write_profiles([profile({"A": "1"})], stack="dev", home=tmp_path)

    assert written.status is WriteStatus.UNCHANGED and written.profile == ""
    assert (tmp_path / "config.json").stat().st_mtime_ns == before


def test_a_different_file_is_kept_and_the_new_config_becomes_a_stack_profile(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text('{"A": "mine"}')

    [written] = nextsteps.write_profiles([profile({"A": "1"})], stack="dev", home=tmp_path)

    assert json.loads((tmp_path / "config.json").read_text()) == {"A": "mine"}
    assert written.status is WriteStatus.BESIDE
    assert written.path == tmp_path / "config_mf-dev.json" and written.profile == "mf-dev"
    assert written.kept == tmp_path / "config.json" and written.usable
    assert json.loads(written.path.read_text()) == {"A": "1"}


def test_a_second_run_finds_its_stack_profile_unchanged(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"A": "mine"}')
    nextsteps.write_profiles([profile({"A": "1"})], stack="dev", home=tmp_path)

    [again] = nextsteps.write_profiles([profile({"A": "1"})], stack="dev", home=tmp_path)

    assert again.status is WriteStatus.UNCHANGED and again.profile == "mf-dev"


def test_this_stacks_config_from_an_earlier_version_is_brought_up_to_date(
    tmp_path: Path,
) -> None:
    """Before the split, config.json sent steps to the `metaflow` KSA, which an upgrade
    deletes: left in place it would make every step pod fail to start."""
    home = tmp_path / "mf"
    home.mkdir()
    earlier = {
        **BASE,
        "METAFLOW_SERVICE_URL": "http://127.0.0.1:8080/",
        "METAFLOW_SERVICE_INTERNAL_URL": "http://metadata-service.metaflow.svc.cluster.local:8080/",
        "METAFLOW_KUBERNETES_NAMESPACE": "metaflow",
        "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "metaflow",
    }
    del earlier["METAFLOW_GCP_SECRET_MANAGER_PREFIX"]
    (home / "config.json").write_text(json.dumps(earlier))
    profiles = nextsteps.metaflow_profiles(
        NAMES, argo=False, airflow=False, project_number=PROJECT_NUMBER
    )

    [written] = nextsteps.write_profiles(profiles, stack="dev", home=home)

    assert written.status is WriteStatus.UPDATED and written.path == home / "config.json"
    assert json.loads((home / "config.json").read_text()) == {**BASE, **METAFLOW_JOBS}


@pytest.mark.parametrize(
    "change",
    [
        {"METAFLOW_DATASTORE_SYSROOT_GS": "gs://another-stack/metaflow"},
        {"METAFLOW_S3_ENDPOINT_URL": "http://minio:9000"},  # a key the user added
    ],
)
def test_a_config_of_another_stack_or_with_the_users_own_keys_is_kept(
    tmp_path: Path, change: dict[str, str]
) -> None:
    home = tmp_path / "mf"
    home.mkdir()
    theirs = {**BASE, **METAFLOW_JOBS, "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "x", **change}
    (home / "config.json").write_text(json.dumps(theirs))

    [written] = nextsteps.write_profiles(
        nextsteps.metaflow_profiles(NAMES, argo=False, airflow=False), stack="dev", home=home
    )

    assert written.status is WriteStatus.BESIDE
    assert json.loads((home / "config.json").read_text()) == theirs


def test_every_key_we_write_is_listed_as_ours() -> None:
    written = {k for config in configs(argo=True, airflow=True).values() for k in config}
    assert written == nextsteps.OUR_KEYS


def test_when_both_names_are_taken_the_new_config_is_a_dot_new_file(tmp_path: Path) -> None:
    (tmp_path / "config_airflow.json").write_text('{"A": "mine"}')
    (tmp_path / "config_mf-dev-airflow.json").write_text("not json at all")

    [written] = nextsteps.write_profiles(
        [profile({"A": "1"}, "airflow")], stack="dev", home=tmp_path
    )

    assert written.path == tmp_path / "config_airflow.json.new" and not written.usable
    assert (tmp_path / "config_mf-dev-airflow.json").read_text() == "not json at all"
    assert json.loads((tmp_path / "config_airflow.json").read_text()) == {"A": "mine"}


def test_metaflow_home_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "mf"))
    assert nextsteps.config_home() == tmp_path / "mf"
    monkeypatch.delenv("METAFLOW_HOME")
    assert nextsteps.config_home() == Path.home() / ".metaflowconfig"


def test_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    [written] = nextsteps.write_profiles(
        [profile({"A": "1"})], stack="dev", home=tmp_path / "mf", dry_run=True
    )
    assert written.status is WriteStatus.PLANNED and not (tmp_path / "mf").exists()


# ---------------------------------------------------------------------------------------
# The summary


def summary(tmp_path: Path, *, argo: bool, airflow: bool) -> str:
    console = CapturedConsole(width=300)
    stack: Stack = open_stack(
        {**SETTINGS, "deploy_argo": argo, "deploy_airflow": airflow},
        dry_run=True,
        console=console,
    )
    profiles = nextsteps.metaflow_profiles(stack.names, argo=argo, airflow=airflow)
    written = nextsteps.write_profiles(profiles, stack="dev", home=tmp_path / "mf")
    nextsteps.print_next_steps(stack, written)
    return console.text


def test_the_summary_walks_a_data_scientist_through_setup(tmp_path: Path) -> None:
    text = summary(tmp_path, argo=True, airflow=True)

    for expected in (
        "gcloud container clusters get-credentials mf-dev --location=us-west2-a "
        "--project=acme-ml-prod",
        "python -m pip install metaflow kubernetes google-cloud-storage google-auth",
        "google-cloud-secret-manager",
        "gcloud auth application-default login",
        f"wrote {tmp_path / 'mf' / 'config.json'} (Argo Workflows, @kubernetes)",
        f"wrote {tmp_path / 'mf' / 'config_airflow.json'} (Airflow DAGs) - use it with export "
        "METAFLOW_PROFILE=airflow",
        "inv port-forward",
        "Metaflow UI http://localhost:3000, metadata service http://localhost:8080, "
        "Argo Workflows UI http://localhost:2746, Airflow UI http://localhost:9090",
        "python -c 'from metaflow.integrations import ArgoEvent; "
        'ArgoEvent("my-event").publish()\'',
        "METAFLOW_PROFILE=airflow python flow.py airflow create my-dag.py",
        "inv airflow.upload-dag my-dag.py",
    ):
        assert expected in text, expected
    assert "--password" not in text  # no advice puts a password on a command line


def test_the_summary_says_how_to_log_into_the_argo_ui_without_printing_a_token(
    tmp_path: Path,
) -> None:
    """argo-server asks for a bearer token (client mode); on GKE the user's own Google access
    token is one. The summary shows the command that prints it, never a token."""
    text = summary(tmp_path, argo=True, airflow=False)
    assert 'echo "Bearer $(gcloud auth print-access-token)"' in text
    assert "login box" in text
    assert not re.search(r"ya29\.|Bearer [A-Za-z0-9]", text)
    assert "print-access-token" not in summary(tmp_path / "2", argo=False, airflow=True)


def test_the_summary_leaves_out_what_is_not_installed(tmp_path: Path) -> None:
    text = summary(tmp_path, argo=True, airflow=False)
    assert "Airflow" not in text and "9090" not in text

    text = summary(tmp_path / "2", argo=False, airflow=True)
    assert "Argo" not in text and "2746" not in text
    assert "    python flow.py airflow create my-dag.py" in text  # the default profile is Airflow's


def test_the_summary_says_when_the_users_config_was_kept(tmp_path: Path) -> None:
    (tmp_path / "mf").mkdir()
    (tmp_path / "mf" / "config.json").write_text('{"METAFLOW_DEFAULT_DATASTORE": "s3"}')

    text = summary(tmp_path, argo=True, airflow=False)

    assert (
        f"! {tmp_path / 'mf' / 'config.json'} says something else and was kept; this stack's "
        f"config is {tmp_path / 'mf' / 'config_mf-dev.json'} (Argo Workflows, @kubernetes) - use it "
        "with export METAFLOW_PROFILE=mf-dev"
    ) in text


def test_the_summary_warns_about_a_profile_set_in_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_PROFILE", "old")
    text = summary(tmp_path, argo=True, airflow=False)
    assert "METAFLOW_PROFILE=old is set in this shell" in text
