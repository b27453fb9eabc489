"""The stack settings: where they come from, the rules they obey, every name derived from them.

Everything here is pure and fast: it runs before any cloud call, so a typo costs
the user one line of output and no money.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from metaflow_gcp.errors import ConfigError, ConfigErrors
from metaflow_gcp.tfvars import read_tfvars


@dataclass(frozen=True)
class Settings:
    """What an administrator chooses. Field order is the order of the README's table."""

    org_prefix: str
    project: str
    region: str = "us-west2"
    zone: str = ""  # empty: the region's first zone, "<region>-a" in most regions
    stack: str = "default"
    state_bucket: str = ""  # empty: derived from org_prefix and project
    data_bucket: str = ""  # empty: derived from org_prefix, project and stack
    db_generation_number: int = 0  # floor for the generation counter kept in the state file
    deploy_argo: bool = True
    deploy_airflow: bool = False
    deploy_jobset: bool = True  # JobSet controller for Metaflow's @parallel
    db_version: str = "POSTGRES_16"
    db_tier: str = "db-custom-1-3840"
    node_machine_type: str = "e2-standard-4"
    min_nodes: int = 1
    max_nodes: int = 5
    subnet_range: str = "10.2.0.0/16"
    # CIDRs allowed to reach the GKE control plane; empty: any address (with credentials).
    authorized_networks: tuple[str, ...] = ()
    # Optional node pools, both scaling from zero (see gcp/nodepools.py).
    gpu_type: str = ""  # empty: no GPU pool; e.g. "nvidia-l4", "nvidia-tesla-t4"
    gpu_per_node: int = 1
    gpu_max_nodes: int = 2
    gpu_spot: bool = False  # on demand: Metaflow gets no Spot-preemption notice on GCP
    gpu_machine_type: str = ""  # empty: the smallest machine type carrying gpu_per_node GPUs
    spot_max_nodes: int = 0  # 0: no Spot CPU pool

    @property
    def resolved_zone(self) -> str:
        return self.zone or first_zone(self.region)

    def names(self) -> Names:
        return Names.derive(self)


# Regions whose zones do not start at "-a" (us-east1 and europe-west1 have b, c and d).
_FIRST_ZONE = {"us-east1": "b", "europe-west1": "b"}
_PG_PART = re.compile(r"(?:^|(?<=-))pg(?=-|$)")


def first_zone(region: str) -> str:
    """The default zone: the region's first ("-a" in most regions)."""
    return f"{region}-{_FIRST_ZONE.get(region, 'a')}"


def _as_postgres(_: re.Match[str]) -> str:
    return "postgres"


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))
REQUIRED: tuple[str, ...] = ("org_prefix", "project")
_BOOL_SETTINGS = {"deploy_argo", "deploy_airflow", "deploy_jobset"}
_INT_SETTINGS = {"db_generation_number", "min_nodes", "max_nodes"}
_LIST_SETTINGS = {"authorized_networks"}
_AUTHORIZED_MAX = 50  # GKE's limit for a cluster with a public endpoint
# The node-pool settings.
_BOOL_SETTINGS |= {"gpu_spot"}
_INT_SETTINGS |= {"gpu_per_node", "gpu_max_nodes", "spot_max_nodes"}


@dataclass(frozen=True)
class Names:
    """Every resource name of one stack. The SQL instance name also needs the generation."""

    project: str
    region: str
    zone: str
    stack: str
    network: str
    subnet: str
    psa_range: str
    router: str  # the Cloud Router that carries the NAT
    nat: str  # Cloud NAT: private nodes pull public images through it
    cluster: str
    services_sa_id: str  # the metadata service, UI backend, UI: Cloud SQL, datastore read
    steps_sa_id: str  # user code: datastore read/write, the stack's user secrets
    node_sa_id: str
    legacy_workload_sa_id: str  # the one account of earlier versions; retired on upgrade
    db_secret: str
    airflow_db_secret: str
    user_secret_prefix: str  # Secret Manager names of the secrets user steps may read
    data_bucket: str
    state_bucket: str
    state_object: str
    sql_prefix: str
    database: str = "metaflow"
    db_user: str = "metaflow"
    # Airflow's metadata database: a second database on the stack's Cloud SQL instance.
    airflow_database: str = "airflow"
    airflow_db_user: str = "airflow"

    @classmethod
    def derive(cls, s: Settings) -> Names:
        base = f"mf-{s.stack}"
        return cls(
            project=s.project,
            region=s.region,
            zone=s.resolved_zone,
            stack=s.stack,
            network=f"{base}-vpc",
            subnet=f"{base}-gke",
            psa_range=f"{base}-psa",
            router=f"{base}-router",
            nat=f"{base}-nat",
            cluster=base,
            services_sa_id=f"{base}-services",
            steps_sa_id=f"{base}-steps",
            node_sa_id=f"{base}-nodes",
            legacy_workload_sa_id=f"{base}-workload",
            db_secret=f"{base}-db-password",
            airflow_db_secret=f"{base}-airflow-db-password",
            user_secret_prefix=f"{base}-user-",
            data_bucket=s.data_bucket or f"{s.org_prefix}-{s.project}-mf-{s.stack}",
            state_bucket=s.state_bucket or f"{s.org_prefix}-{s.project}-mf-state",
            state_object=f"stacks/{s.stack}.json",
            sql_prefix=f"{base}-pg-",
        )

    def sql_instance(self, generation: int) -> str:
        return f"{self.sql_prefix}{generation}"

    def sql_connection_name(self, generation: int) -> str:
        return f"{self.project}:{self.region}:{self.sql_instance(generation)}"

    def sa_email(self, account_id: str) -> str:
        return f"{account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def services_sa(self) -> str:
        return self.sa_email(self.services_sa_id)

    @property
    def steps_sa(self) -> str:
        return self.sa_email(self.steps_sa_id)

    @property
    def node_sa(self) -> str:
        return self.sa_email(self.node_sa_id)

    @property
    def legacy_workload_sa(self) -> str:
        return self.sa_email(self.legacy_workload_sa_id)

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"

    @property
    def network_path(self) -> str:
        return f"projects/{self.project}/global/networks/{self.network}"

    @property
    def kube_context(self) -> str:
        """The context `gcloud container clusters get-credentials` writes; we always name it."""
        return f"gke_{self.project}_{self.zone}_{self.cluster}"

    @property
    def datastore_root(self) -> str:
        return f"gs://{self.data_bucket}/metaflow"


# ---------------------------------------------------------------------------------------
# Loading


def load_settings(
    config_section: Mapping[str, Any] | None,
    var_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge Invoke config < var-file < explicit overrides, then validate.

    Invoke's config gives us `invoke.yaml`, `-f FILE`, and INVOKE_STACK_* variables for free;
    the var-file keeps Terraform users' files working.
    """
    merged: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for source, values in (
        ("invoke config 'stack'", config_section or {}),
        (str(var_file), read_tfvars(Path(var_file)) if var_file else {}),
        ("command line", overrides or {}),
    ):
        for key, value in values.items():
            if key not in SETTING_NAMES:
                errors.append(_unknown_key(key, source))
            elif value is not None:
                merged[key] = value
    if errors:
        raise ConfigErrors(errors)
    return validate(merged)


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, SETTING_NAMES, n=1, cutoff=0.6)
    fix = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(SETTING_NAMES)}"
    return ConfigError(key, f"is not a known setting (in {source})", fix)


# ---------------------------------------------------------------------------------------
# Validation: each rule names the setting, the rule and a fix.

_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_LABELISH_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE_RE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*[a-z0-9]$")
_MACHINE_RE = re.compile(r"^[a-z0-9]+-[a-z0-9-]+$")
# Enterprise edition tiers (the instance is created with --edition=enterprise; the
# db-perf-optimized-* tiers belong to Enterprise Plus).
_TIER_RE = re.compile(r"^db-(custom-\d+-\d+|f1-micro|g1-small|n1-[a-z]+-\d+)$")
_DB_VERSIONS = ("POSTGRES_15", "POSTGRES_16", "POSTGRES_17")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_BUCKET_MAX = 63
_SA_ID_MIN, _SA_ID_MAX = 6, 30
_CLUSTER_MAX = 40
_COMPUTE_NAME_MAX = 63


def validate(raw: Mapping[str, Any]) -> Settings:
    errors: list[ConfigError] = []
    values: dict[str, Any] = {}
    for key in REQUIRED:
        if not str(raw.get(key, "") or "").strip():
            errors.append(
                ConfigError(key, "is required", f"set {key} in invoke.yaml or --var-file")
            )
    for key, value in raw.items():
        try:
            values[key] = _coerce(key, value)
        except ConfigError as error:
            errors.append(error)
    if errors:
        raise ConfigErrors(errors)
    settings = Settings(**values)
    errors.extend(_check_rules(settings))
    if errors:
        raise ConfigErrors(errors)
    return settings


def _coerce(key: str, value: Any) -> Any:
    if key in _LIST_SETTINGS:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(
                key, f"must be a list of strings, got {value!r}", f'{key} = ["203.0.113.0/24"]'
            )
        return tuple(i.strip() for i in items if i.strip())
    if key in _BOOL_SETTINGS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(key, f"must be true or false, got {value!r}", f"{key} = true")
    if key in _INT_SETTINGS:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(key, f"must be a whole number, got {value!r}", f"{key} = 1")
        try:
            return int(str(value).strip()) if not isinstance(value, float) else int(value)
        except ValueError:
            raise ConfigError(key, f"must be a whole number, got {value!r}", f"{key} = 1") from None
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}", f'{key} = "{value}"')
    return value.strip()


def _check_rules(s: Settings) -> list[ConfigError]:  # noqa: PLR0912 - one flat list of rules reads best
    errors: list[ConfigError] = []

    def bad(setting: str, rule: str, fix: str) -> None:
        errors.append(ConfigError(setting, rule, fix))

    if not _PROJECT_RE.match(s.project):
        bad(
            "project",
            f"'{s.project}' is not a valid project ID (6-30 characters: lowercase letters, "
            "digits and hyphens, starting with a letter, not ending with a hyphen)",
            "use the project ID shown by `gcloud projects list`, not its display name",
        )
    if not _LABELISH_RE.match(s.org_prefix) or len(s.org_prefix) > 20:
        bad(
            "org_prefix",
            f"'{s.org_prefix}' must be 1-20 lowercase letters, digits or hyphens, starting with "
            "a letter and not ending with a hyphen",
            "use a short lowercase tag for your organisation, e.g. 'acme'",
        )
    if not _LABELISH_RE.match(s.stack):
        bad(
            "stack",
            f"'{s.stack}' must use lowercase letters, digits and hyphens, start with a letter and "
            "not end with a hyphen (it becomes part of GCP resource names)",
            f"use e.g. '{_suggest_label(s.stack)}'",
        )
    elif _PG_PART.search(s.stack):
        bad(
            "stack",
            f"'{s.stack}' has a 'pg' part, so its Cloud SQL names (mf-{s.stack}-pg-N) could "
            "overlap those of another stack (teardown and IAM select a stack's instances by "
            "their 'mf-<stack>-pg-' prefix)",
            f"use e.g. '{_PG_PART.sub(_as_postgres, s.stack)}'",
        )
    if not _REGION_RE.match(s.region):
        bad("region", f"'{s.region}' is not a GCP region name", "use a region such as 'us-west2'")
    zone_match = _ZONE_RE.match(s.resolved_zone)
    if s.zone and not zone_match:
        bad(
            "zone",
            f"'{s.zone}' is not a GCP zone name",
            f"use a zone such as '{first_zone(s.region)}'",
        )
    elif zone_match and zone_match.group(1) != s.region:
        bad(
            "zone",
            f"'{s.zone}' is not inside region '{s.region}'",
            f"use a zone of {s.region} (e.g. '{first_zone(s.region)}') or change region to "
            f"'{zone_match.group(1)}'",
        )
    if s.db_generation_number < 0:
        bad("db_generation_number", "must be 0 or more", "db_generation_number = 0")
    if s.db_version not in _DB_VERSIONS:
        bad(
            "db_version",
            f"'{s.db_version}' is not supported (Metaflow's metadata service needs PostgreSQL; "
            f"this tool supports {', '.join(_DB_VERSIONS)})",
            'db_version = "POSTGRES_16"',
        )
    if not _TIER_RE.match(s.db_tier):
        bad(
            "db_tier",
            f"'{s.db_tier}' is not a Cloud SQL for PostgreSQL tier",
            'use e.g. "db-custom-1-3840" (1 vCPU, 3.75 GB) or "db-f1-micro"',
        )
    if not _MACHINE_RE.match(s.node_machine_type):
        bad(
            "node_machine_type",
            f"'{s.node_machine_type}' is not a Compute Engine machine type",
            'use e.g. "e2-standard-4"',
        )
    if s.min_nodes < 0:
        bad("min_nodes", "must be 0 or more", "min_nodes = 1")
    if s.max_nodes < 1:
        bad("max_nodes", "must be at least 1", "max_nodes = 5")
    elif s.min_nodes > s.max_nodes:
        bad(
            "min_nodes",
            f"{s.min_nodes} is more than max_nodes ({s.max_nodes})",
            "make min_nodes <= max_nodes",
        )
    errors.extend(_check_subnet(s.subnet_range))
    errors.extend(_check_authorized_networks(s.authorized_networks))
    errors.extend(_check_node_pools(s))
    if not errors:
        errors.extend(_check_derived_names(s))
    return errors


def _check_subnet(cidr: str) -> list[ConfigError]:
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        return [
            ConfigError(
                "subnet_range",
                f"'{cidr}' is not a CIDR range (host bits must be zero)",
                'use e.g. "10.2.0.0/16"',
            )
        ]
    if network.version != 4 or not network.is_private or not 8 <= network.prefixlen <= 29:
        return [
            ConfigError(
                "subnet_range",
                f"'{cidr}' must be a private IPv4 range with a prefix between /8 and /29",
                'use e.g. "10.2.0.0/16"',
            )
        ]
    return []


def _check_authorized_networks(cidrs: tuple[str, ...]) -> list[ConfigError]:
    """The CIDRs GKE accepts: network addresses (host bits zero), at most 50, not 'anyone'."""
    fix = 'list the ranges your administrators connect from, e.g. ["203.0.113.0/24"]'
    errors = []
    if len(cidrs) > _AUTHORIZED_MAX:
        errors.append(
            ConfigError(
                "authorized_networks",
                f"has {len(cidrs)} ranges; GKE allows at most {_AUTHORIZED_MAX}",
                "merge ranges into wider ones",
            )
        )
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            errors.append(
                ConfigError(
                    "authorized_networks",
                    f"'{cidr}' is not a CIDR range (e.g. 203.0.113.0/24, host bits zero)",
                    fix,
                )
            )
            continue
        if network.prefixlen == 0:
            errors.append(
                ConfigError(
                    "authorized_networks",
                    f"'{cidr}' admits every address, which is what leaving it empty does",
                    "leave authorized_networks empty, or " + fix,
                )
            )
    return errors


def _gpu_model(name: str) -> str:
    """ "nvidia-tesla-t4", "Tesla T4" and "t4" all name the model "t4"."""
    parts = re.split(r"[-_ ]+", name.lower())
    return "-".join(p for p in parts if p not in ("nvidia", "tesla"))


def _check_node_pools(s: Settings) -> list[ConfigError]:
    """The GPU and Spot pool settings: names, counts and machine fit known offline."""
    from metaflow_gcp.gcp.accelerators import ACCELERATORS, fit_problem

    errors: list[ConfigError] = []
    if s.spot_max_nodes < 0:
        errors.append(
            ConfigError("spot_max_nodes", "must be 0 (no Spot pool) or more", "spot_max_nodes = 0")
        )
    if s.gpu_max_nodes < 1:
        errors.append(
            ConfigError(
                "gpu_max_nodes",
                "must be at least 1 (the pool scales from zero up to it)",
                "gpu_max_nodes = 2",
            )
        )
    if not s.gpu_type:
        if s.gpu_machine_type:
            errors.append(
                ConfigError(
                    "gpu_machine_type",
                    "has no effect without gpu_type",
                    'set gpu_type (e.g. "nvidia-l4") or remove gpu_machine_type',
                )
            )
        return errors
    spec = ACCELERATORS.get(s.gpu_type)
    if spec is None:
        model = _gpu_model(s.gpu_type)
        close = [a for a in ACCELERATORS if _gpu_model(a) == model][:1]
        close = close or difflib.get_close_matches(s.gpu_type.lower(), ACCELERATORS, n=1)
        fix = f'gpu_type = "{close[0]}"' if close else f"use one of {', '.join(ACCELERATORS)}"
        errors.append(
            ConfigError(
                "gpu_type",
                f"'{s.gpu_type}' is not a GPU type this tool knows ({', '.join(ACCELERATORS)})",
                fix,
            )
        )
        return errors
    counts = spec.counts()
    if s.gpu_per_node not in counts:
        errors.append(
            ConfigError(
                "gpu_per_node",
                f"{s.gpu_per_node} {s.gpu_type} GPUs per node is not offered (Compute Engine "
                f"offers {', '.join(map(str, counts))})",
                f"gpu_per_node = {counts[0]}",
            )
        )
        return errors
    if s.gpu_machine_type:
        if not _MACHINE_RE.match(s.gpu_machine_type):
            errors.append(
                ConfigError(
                    "gpu_machine_type",
                    f"'{s.gpu_machine_type}' is not a Compute Engine machine type",
                    "leave it empty for the smallest that fits",
                )
            )
            return errors
        problem = fit_problem(s.gpu_type, s.gpu_per_node, s.gpu_machine_type)
        if problem:
            errors.append(ConfigError("gpu_machine_type", *problem))
    return errors


def _check_derived_names(s: Settings) -> list[ConfigError]:
    """Rules that bind a derived name, reported against the setting the user can change."""
    n = Names.derive(s)
    errors: list[ConfigError] = []
    for sa_id in (n.services_sa_id, n.steps_sa_id, n.node_sa_id):
        if not _SA_ID_MIN <= len(sa_id) <= _SA_ID_MAX:
            room = _SA_ID_MAX - (len(sa_id) - len(s.stack))
            errors.append(
                ConfigError(
                    "stack",
                    f"'{s.stack}' makes the service-account id '{sa_id}' {len(sa_id)} characters "
                    f"long; GCP allows {_SA_ID_MIN}-{_SA_ID_MAX}",
                    f"use a stack name of at most {room} characters",
                )
            )
            break
    if len(n.cluster) > _CLUSTER_MAX:
        errors.append(
            ConfigError(
                "stack",
                f"the GKE cluster name '{n.cluster}' would exceed {_CLUSTER_MAX} characters",
                "use a shorter stack name",
            )
        )
    longest_sql = n.sql_instance(99999)
    if len(longest_sql) > _COMPUTE_NAME_MAX:
        errors.append(
            ConfigError(
                "stack",
                f"the Cloud SQL instance name '{longest_sql}' would exceed {_COMPUTE_NAME_MAX} "
                "characters",
                "use a shorter stack name",
            )
        )
    for setting, bucket, explicit in (
        ("data_bucket", n.data_bucket, bool(s.data_bucket)),
        ("state_bucket", n.state_bucket, bool(s.state_bucket)),
    ):
        problem = bucket_name_problem(bucket)
        if problem:
            blame = setting if explicit else "org_prefix"
            fix = (
                f"choose another {setting}"
                if explicit
                else f"shorten or change org_prefix/stack, or set {setting} explicitly"
            )
            errors.append(ConfigError(blame, f"the bucket name '{bucket}' {problem}", fix))
    if n.data_bucket == n.state_bucket:
        errors.append(
            ConfigError(
                "data_bucket",
                "must differ from state_bucket (teardown keeps the state bucket)",
                "choose two different bucket names",
            )
        )
    return errors


def bucket_name_problem(name: str) -> str:
    """The first Cloud Storage naming rule `name` breaks, or ''."""
    if not 3 <= len(name) <= _BUCKET_MAX:
        return f"is {len(name)} characters long; Cloud Storage allows 3-{_BUCKET_MAX}"
    if not _BUCKET_RE.match(name):
        return (
            "may only contain lowercase letters, digits, '-', '_' and '.', "
            "and must start and end with a letter or digit"
        )
    if name.startswith("goog"):
        return "may not begin with 'goog' (Cloud Storage reserves it)"
    if re.search(r"g[o0]{2}g[l1]e", name):
        return "may not contain 'google' or a look-alike (Cloud Storage reserves it)"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "may not look like an IP address"
    return ""


def _suggest_label(text: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"s-{cleaned}".rstrip("-")
    return cleaned or "dev"
