"""What a data scientist needs after `services.up`: the Metaflow config and the next steps.

The config is derived from the stack's names alone (no cluster call), so it can be
tested without a cluster and re-written by any later run. It never holds a secret:
Metaflow reaches Google Cloud Storage with Application Default Credentials on a
workstation and with Workload Identity in pods.

Files are written where Metaflow reads them: `$METAFLOW_HOME/config.json` (default
`~/.metaflowconfig`) or `config_<profile>.json` for `METAFLOW_PROFILE=<profile>`.
An existing file that says something else is never overwritten: the new config goes
beside it and the summary says where.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from metaflow_gcp import kube_names as k
from metaflow_gcp.config import Names
from metaflow_gcp.kube_names import Accounts

if TYPE_CHECKING:
    from metaflow_gcp.app import Stack

UI_URL = k.local_url("ui")
METADATA_URL = k.local_url("metadata")
ARGO_UI_URL = k.local_url("argo")
AIRFLOW_UI_URL = k.local_url("airflow")
# What the Argo UI's login box takes: argo-server runs in client mode and hands the bearer token
# to the Kubernetes API, which on GKE accepts the user's own Google access token (the one the
# gke-gcloud-auth-plugin gives kubectl), so the UI sees what the user's RBAC allows.
ARGO_TOKEN_COMMAND = 'echo "Bearer $(gcloud auth print-access-token)"'  # noqa: S105 - a command
# The TYPE of metaflow/plugins/gcp/gcp_secret_manager_secrets_provider.py.
SECRETS_BACKEND = "gcp-secret-manager"

AIRFLOW_PROFILE = "airflow"
CLIENT_PACKAGES = ("metaflow", "kubernetes", "google-cloud-storage", "google-auth")
OPTIONAL_PACKAGES = ("google-cloud-secret-manager",)

Config = dict[str, str]


@dataclass(frozen=True)
class Profile:
    """One Metaflow config file: `name` "" is config.json, otherwise config_<name>.json."""

    name: str
    config: Config
    purpose: str

    @property
    def file_name(self) -> str:
        return config_file_name(self.name)


def config_file_name(profile: str) -> str:
    return f"config_{profile}.json" if profile else "config.json"


# ---------------------------------------------------------------------------------------
# The config


def base_config(names: Names) -> Config:
    """Datastore, metadata service and UI: the same for every profile of the stack."""
    return {
        "METAFLOW_DEFAULT_DATASTORE": "gs",
        "METAFLOW_DATASTORE_SYSROOT_GS": names.datastore_root,
        "METAFLOW_DEFAULT_METADATA": "service",
        # The workstation reaches the service through `inv port-forward`; pods use the
        # in-cluster name (Metaflow hands SERVICE_INTERNAL_URL to every step pod), in the
        # services' namespace.
        "METAFLOW_SERVICE_URL": k.local_url("metadata", "/"),
        "METAFLOW_SERVICE_INTERNAL_URL": k.in_cluster_url(
            k.METADATA_SERVICE, k.SERVICES_NS, k.METADATA_PORT, "/"
        ),
        "METAFLOW_UI_URL": UI_URL,
    }


def secrets_config(names: Names, project_number: str) -> Config:
    """@secrets through Secret Manager. Metaflow joins prefix and name as plain text, so
    `@secrets(sources=["db"])` reads projects/N/secrets/mf-<stack>-user-db/versions/latest:
    the names the steps' account may read (an IAM condition on that prefix)."""
    return {
        "METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE": SECRETS_BACKEND,
        "METAFLOW_GCP_SECRET_MANAGER_PREFIX": (
            f"projects/{project_number}/secrets/{names.user_secret_prefix}"
        ),
    }


def jobs_config(namespace: str, service_account: str) -> Config:
    """Where @kubernetes steps run, and as which (Workload Identity) service account."""
    return {
        "METAFLOW_KUBERNETES_NAMESPACE": namespace,
        "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": service_account,
    }


def argo_config() -> Config:
    """The Argo Events objects charts/metaflow-argo-events creates, and the Argo UI."""
    path = f"/{k.EVENT_NAME}"
    return {
        "METAFLOW_ARGO_EVENTS_EVENT_BUS": k.EVENT_BUS,
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": k.EVENT_SOURCE,
        "METAFLOW_ARGO_EVENTS_EVENT": k.EVENT_NAME,
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": k.SENSOR_KSA,
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": k.local_url("webhook", path),
        "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": k.in_cluster_url(
            k.EVENT_SOURCE_SERVICE, k.METAFLOW_NS, k.WEBHOOK_PORT, path
        ),
        "METAFLOW_ARGO_EVENTS_WEBHOOK_AUTH": "none",
        "METAFLOW_ARGO_WORKFLOWS_UI_URL": ARGO_UI_URL,
    }


def metaflow_profiles(
    names: Names, *, argo: bool, airflow: bool, project_number: str = ""
) -> list[Profile]:
    """The config files for what the stack runs.

    Metaflow jobs run in `metaflow` as the stack's steps account, except for Airflow: its
    pod-launcher RBAC only covers Airflow's own namespace, so Airflow's steps must run there,
    as the steps account of that namespace (Google access, no Kubernetes permissions; the
    scheduler's own account could exec into the scheduler). With both, the default profile
    is Argo's and Airflow gets its own. Without the project number (a state file from before
    it was recorded) the @secrets keys are left out rather than guessed.
    """
    base = base_config(names)
    if project_number:
        base.update(secrets_config(names, project_number))
    steps = Accounts.of(names).steps
    metaflow_jobs = jobs_config(k.METAFLOW_NS, steps)
    airflow_jobs = jobs_config(k.AIRFLOW_NS, steps)
    if argo and airflow:
        return [
            Profile("", {**base, **metaflow_jobs, **argo_config()}, "Argo Workflows, @kubernetes"),
            Profile(AIRFLOW_PROFILE, {**base, **airflow_jobs}, "Airflow DAGs"),
        ]
    if argo:
        return [
            Profile("", {**base, **metaflow_jobs, **argo_config()}, "Argo Workflows, @kubernetes")
        ]
    if airflow:
        return [Profile("", {**base, **airflow_jobs}, "Airflow DAGs, @kubernetes")]
    return [Profile("", {**base, **metaflow_jobs}, "@kubernetes")]


# ---------------------------------------------------------------------------------------
# Writing


class WriteStatus(StrEnum):
    WRITTEN = "written"
    UNCHANGED = "unchanged"
    UPDATED = "updated"  # this stack's config as an earlier version wrote it, brought up to date
    BESIDE = "written beside"  # the usual file says something else and was kept
    PLANNED = "would write"  # dry run


@dataclass(frozen=True)
class Written:
    """Where one profile went. `profile` is what to set METAFLOW_PROFILE to ("" = none)."""

    wanted: Profile
    path: Path
    status: WriteStatus
    profile: str
    kept: Path | None = None  # the existing, different file that was left alone

    @property
    def usable(self) -> bool:
        """False when only a `.new` file could be written: the user has to move it in place."""
        return self.path.suffix == ".json"


def config_home(env: Mapping[str, str] | None = None) -> Path:
    """Where Metaflow looks: $METAFLOW_HOME, else ~/.metaflowconfig."""
    env = os.environ if env is None else env
    return Path(env.get("METAFLOW_HOME") or "~/.metaflowconfig").expanduser()


def render(config: Mapping[str, str]) -> str:
    return json.dumps(dict(config), indent=2, sort_keys=True) + "\n"


def write_profiles(
    profiles: list[Profile], *, stack: str, home: Path | None = None, dry_run: bool = False
) -> list[Written]:
    """Write each profile; an existing different file is kept and the new one goes beside it.

    Beside means the stack-named profile `mf-<stack>` (or `mf-<stack>-<profile>`), so the user
    can switch with METAFLOW_PROFILE at once; if that file is taken too, `<file>.new`.
    """
    home = home or config_home()
    results: list[Written] = []
    for profile in profiles:
        target = home / profile.file_name
        if dry_run:
            results.append(Written(profile, target, WriteStatus.PLANNED, profile.name))
            continue
        _make_home(home)
        current = _read_config(target)
        if current is None:
            _write(target, profile.config)
            results.append(Written(profile, target, WriteStatus.WRITTEN, profile.name))
            continue
        if current == profile.config:
            results.append(Written(profile, target, WriteStatus.UNCHANGED, profile.name))
            continue
        if _earlier_version_of(current, profile.config):
            _write(target, profile.config)
            results.append(Written(profile, target, WriteStatus.UPDATED, profile.name))
            continue
        alt_name = f"mf-{stack}" + (f"-{profile.name}" if profile.name else "")
        alt = home / config_file_name(alt_name)
        alt_current = _read_config(alt)
        if alt_current == profile.config:
            results.append(Written(profile, alt, WriteStatus.UNCHANGED, alt_name, kept=target))
        elif alt_current is None or _earlier_version_of(alt_current, profile.config):
            _write(alt, profile.config)
            results.append(Written(profile, alt, WriteStatus.BESIDE, alt_name, kept=target))
        else:
            new = target.with_name(target.name + ".new")
            _write(new, profile.config)
            results.append(Written(profile, new, WriteStatus.BESIDE, profile.name, kept=target))
    return results


# Every key this tool writes (a test keeps the list complete). A file holding only these, for
# the same datastore, is this stack's config as an earlier version wrote it (before the
# services moved to their own namespace, say): brought up to date, not left stale.
OUR_KEYS = frozenset(
    {
        "METAFLOW_DEFAULT_DATASTORE",
        "METAFLOW_DATASTORE_SYSROOT_GS",
        "METAFLOW_DEFAULT_METADATA",
        "METAFLOW_SERVICE_URL",
        "METAFLOW_SERVICE_INTERNAL_URL",
        "METAFLOW_UI_URL",
        "METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE",
        "METAFLOW_GCP_SECRET_MANAGER_PREFIX",
        "METAFLOW_KUBERNETES_NAMESPACE",
        "METAFLOW_KUBERNETES_SERVICE_ACCOUNT",
        "METAFLOW_ARGO_EVENTS_EVENT_BUS",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE",
        "METAFLOW_ARGO_EVENTS_EVENT",
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT",
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL",
        "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL",
        "METAFLOW_ARGO_EVENTS_WEBHOOK_AUTH",
        "METAFLOW_ARGO_WORKFLOWS_UI_URL",
    }
)


def _earlier_version_of(current: object, wanted: Mapping[str, str]) -> bool:
    if not isinstance(current, dict) or not current:
        return False
    same_stack = current.get("METAFLOW_DATASTORE_SYSROOT_GS") == wanted.get(
        "METAFLOW_DATASTORE_SYSROOT_GS"
    )
    return same_stack and set(current) <= OUR_KEYS


def _make_home(home: Path) -> None:
    """Create the folder private to the user; an existing folder's mode is the user's call."""
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)


_UNREADABLE = object()  # a file that is there but is no JSON object: never equal, never ours


def _read_config(path: Path) -> object | None:
    """The file's JSON object; None when absent. A broken file counts as different."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _UNREADABLE
    return data if isinstance(data, dict) else _UNREADABLE


def _write(path: Path, config: Mapping[str, str]) -> None:
    """Write whole or not at all: a crash never leaves Metaflow a half file to choke on."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render(config))
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# The summary


def print_next_steps(stack: Stack, written: list[Written]) -> None:
    """What to do next, in order, for whoever uses the stack. Holds no secret."""
    from rich.markup import escape

    console = stack.console
    n, s = stack.names, stack.settings
    argo, airflow = s.deploy_argo, s.deploy_airflow

    def step(title: str, *lines: str) -> None:
        console.print(f"[bold]{title}[/]")
        for line in lines:
            console.print(f"    {line}", soft_wrap=True)

    def cmd(text: str) -> str:
        return f"[cyan]{escape(text)}[/]"

    console.print()
    console.print(f"[bold green]Next steps[/] for stack '{escape(n.stack)}':")
    step(
        "1. Cluster credentials (kubectl, port-forwards, deploying flows):",
        cmd(
            f"gcloud container clusters get-credentials {n.cluster} --location={n.zone} "
            f"--project={n.project}"
        ),
    )
    step(
        "2. Python packages on the workstation:",
        cmd(f"python -m pip install {' '.join(CLIENT_PACKAGES)}"),
        f"optional, for @secrets: {cmd(' '.join(OPTIONAL_PACKAGES))}",
    )
    step(
        f"3. Google credentials for the datastore {escape(n.datastore_root)}:",
        cmd("gcloud auth application-default login"),
    )
    step("4. Metaflow config:", *_config_lines(written))
    urls = [f"Metaflow UI {UI_URL}", f"metadata service {METADATA_URL}"]
    if argo:
        urls.append(f"Argo Workflows UI {ARGO_UI_URL}")
    if airflow:
        urls.append(f"Airflow UI {AIRFLOW_UI_URL}")
    step(
        "5. Reach the services (keep it running in another terminal):",
        cmd("inv port-forward"),
        ", ".join(urls),
        *(argo_login_lines(cmd) if argo else ()),
    )
    runs = [cmd("python flow.py run --with kubernetes")]
    if argo:
        runs.append(
            f"{cmd('python flow.py argo-workflows create')} then "
            f"{cmd('python flow.py argo-workflows trigger')}"
        )
    step("6. Run a flow on the cluster:", *runs)
    number = 7
    if argo:
        step(
            f"{number}. Publish an event for @trigger flows (with the port-forward up):",
            cmd(
                "python -c 'from metaflow.integrations import ArgoEvent; "
                'ArgoEvent("my-event").publish()\''
            ),
        )
        number += 1
    if airflow:
        profile = next((w.profile for w in written if w.wanted.name == AIRFLOW_PROFILE), None)
        if profile is None:  # Airflow alone: the default profile is Airflow's
            profile = next((w.profile for w in written), "")
        prefix = f"METAFLOW_PROFILE={profile} " if profile else ""
        step(
            f"{number}. Airflow: compile a flow to a DAG and ship it:",
            cmd(f"{prefix}python flow.py airflow create my-dag.py"),
            cmd("inv airflow.upload-dag my-dag.py"),
            "the chart creates no login; create an admin once (it asks for the password):",
            cmd(
                f"kubectl --context={n.kube_context} -n {k.AIRFLOW_NS} exec -it "
                "deploy/airflow-webserver -c webserver -- airflow users create --role Admin "
                "--username admin --email admin@example.com --firstname Admin --lastname User"
            ),
        )


def argo_login_lines(cmd: Callable[[str], str]) -> list[str]:
    """How to log into the Argo UI: it asks for a token and takes the user's own."""
    return [
        f"the Argo UI asks for a token: paste what {cmd(ARGO_TOKEN_COMMAND)} prints into "
        "its login box (your own Google access token, valid for about an hour; the UI can "
        "do what your Kubernetes RBAC allows)",
    ]


def _config_lines(written: list[Written]) -> list[str]:
    from rich.markup import escape

    lines: list[str] = []
    for item in written:
        where = escape(_home_relative(item.path))
        use = (
            f" - use it with [cyan]export METAFLOW_PROFILE={escape(item.profile)}[/]"
            if item.profile and item.usable
            else ""
        )
        what = f"({item.wanted.purpose})"
        if item.status is WriteStatus.PLANNED:
            lines.append(f"would write {where} {what}{use}")
        elif item.status is WriteStatus.UNCHANGED and item.kept is None:
            lines.append(f"{where} is up to date {what}{use}")
        elif item.status is WriteStatus.WRITTEN:
            lines.append(f"wrote {where} {what}{use}")
        elif item.status is WriteStatus.UPDATED:
            lines.append(
                f"updated {where} {what}{use}: it was this stack's config from an earlier version"
            )
        else:
            kept = escape(_home_relative(item.kept)) if item.kept else ""
            lines.append(
                f"[yellow]![/] {kept} says something else and was kept; "
                f"this stack's config is {where} {what}{use}"
            )
            if not item.usable:
                lines.append(f"  compare the two and move {where} into place to use it")
    active = os.environ.get("METAFLOW_PROFILE")
    if active:
        lines.append(
            f"[yellow]![/] METAFLOW_PROFILE={escape(active)} is set in this shell, so Metaflow "
            f"reads {escape(config_file_name(active))} rather than config.json"
        )
    return lines


def _home_relative(path: Path) -> str:
    try:
        return f"~/{path.relative_to(Path.home())}"
    except ValueError:
        return str(path)
