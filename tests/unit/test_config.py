"""The stack settings: every bad value is one clear line, found before any cloud call."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaflow_gcp.config import Settings, bucket_name_problem, load_settings
from metaflow_gcp.errors import ConfigError, ConfigErrors

GOOD = {"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}


def errors_for(**changes: object) -> list[str]:
    values = {**GOOD, **changes}
    with pytest.raises(ConfigErrors) as caught:
        load_settings({k: v for k, v in values.items() if v is not ...})
    return [str(error) for error in caught.value.errors]


def test_minimal_settings_fill_in_sensible_defaults() -> None:
    s = load_settings(GOOD)
    assert (s.region, s.resolved_zone, s.deploy_argo, s.deploy_airflow) == (
        "us-west2",
        "us-west2-a",
        True,
        False,
    )


def test_the_default_zone_is_one_the_region_has() -> None:
    """us-east1 and europe-west1 have no zone -a."""
    zones = {r: load_settings({**GOOD, "region": r}).resolved_zone
             for r in ("us-west2", "us-east1", "europe-west1", "europe-west4")}
    assert zones == {"us-west2": "us-west2-a", "us-east1": "us-east1-b",
                     "europe-west1": "europe-west1-b", "europe-west4": "europe-west4-a"}


def test_every_resource_name_is_derived_from_prefix_project_and_stack() -> None:
    n = load_settings(GOOD).names()
    assert n.network == "mf-dev-vpc"
    assert n.subnet == "mf-dev-gke"
    assert n.psa_range == "mf-dev-psa"
    assert n.cluster == "mf-dev"
    assert n.sql_instance(3) == "mf-dev-pg-3"
    assert n.sql_connection_name(3) == "acme-ml-prod:us-west2:mf-dev-pg-3"
    assert n.services_sa == "mf-dev-services@acme-ml-prod.iam.gserviceaccount.com"
    assert n.steps_sa == "mf-dev-steps@acme-ml-prod.iam.gserviceaccount.com"
    assert n.legacy_workload_sa == "mf-dev-workload@acme-ml-prod.iam.gserviceaccount.com"
    assert (n.router, n.nat) == ("mf-dev-router", "mf-dev-nat")
    assert n.node_sa == "mf-dev-nodes@acme-ml-prod.iam.gserviceaccount.com"
    assert n.data_bucket == "acme-acme-ml-prod-mf-dev"
    assert n.state_bucket == "acme-acme-ml-prod-mf-state"
    assert n.state_object == "stacks/dev.json"
    assert n.workload_pool == "acme-ml-prod.svc.id.goog"
    assert n.kube_context == "gke_acme-ml-prod_us-west2-a_mf-dev"


def test_two_stacks_in_one_project_share_nothing_but_the_state_bucket() -> None:
    a = load_settings({**GOOD, "stack": "dev"}).names()
    b = load_settings({**GOOD, "stack": "prod"}).names()
    shared = {k for k, v in vars(a).items() if vars(b)[k] == v}
    # Database and user names live inside each stack's own Cloud SQL instance.
    assert shared == {
        "project", "region", "zone", "state_bucket",
        "database", "db_user", "airflow_database", "airflow_db_user",
    }


def test_later_sources_win_invoke_config_then_var_file_then_command_line(tmp_path: Path) -> None:
    var_file = tmp_path / "stack.tfvars"
    var_file.write_text('region = "europe-west1"\nstack = "from-file"\n')
    s = load_settings({**GOOD, "region": "us-east1"}, var_file, {"stack": "from-cli"})
    assert (s.region, s.stack) == ("europe-west1", "from-cli")


def test_environment_strings_are_understood_as_booleans_and_numbers() -> None:
    s = load_settings({**GOOD, "deploy_argo": "false", "deploy_airflow": "YES", "max_nodes": "7"})
    assert (s.deploy_argo, s.deploy_airflow, s.max_nodes) == (False, True, 7)


def test_unset_values_from_invoke_defaults_do_not_override() -> None:
    assert load_settings({**GOOD, "region": None}).region == "us-west2"


BAD_INPUTS = [
    ("org_prefix missing", {"org_prefix": ...}, "org_prefix: is required"),
    ("project missing", {"project": ""}, "project: is required"),
    ("project in capitals", {"project": "Acme-Prod"}, "not a valid project ID"),
    ("project too short", {"project": "acme"}, "not a valid project ID"),
    ("project too long", {"project": "a" * 31}, "not a valid project ID"),
    ("project starts with a digit", {"project": "1acme-prod"}, "not a valid project ID"),
    ("project ends with a hyphen", {"project": "acme-prod-"}, "not a valid project ID"),
    ("org_prefix with underscore", {"org_prefix": "acme_corp"}, "org_prefix: 'acme_corp'"),
    ("org_prefix in capitals", {"org_prefix": "ACME"}, "org_prefix: 'ACME'"),
    ("bucket would begin with goog", {"org_prefix": "googly"}, "may not begin with 'goog'"),
    ("bucket would contain google", {"org_prefix": "my-google"}, "'google' or a look-alike"),
    ("bucket look-alike g00gle", {"org_prefix": "g00gle"}, "'google' or a look-alike"),
    (
        "derived bucket too long",
        {"org_prefix": "a" * 20, "project": "p" * 30, "stack": "production"},
        "Cloud Storage allows 3-63",
    ),
    ("explicit bucket with capitals", {"data_bucket": "My-Bucket"}, "data_bucket: the bucket name"),
    (
        "explicit state bucket like an IP",
        {"state_bucket": "192.168.1.1"},
        "look like an IP address",
    ),
    (
        "data and state bucket the same",
        {"data_bucket": "same-b", "state_bucket": "same-b"},
        "must differ",
    ),
    ("region misspelt", {"region": "uswest2"}, "region: 'uswest2' is not a GCP region"),
    ("zone outside region", {"zone": "us-east1-b"}, "'us-east1-b' is not inside region 'us-west2'"),
    ("zone malformed", {"zone": "us-west2"}, "zone: 'us-west2' is not a GCP zone"),
    ("stack with capitals", {"stack": "Dev"}, "stack: 'Dev' must use lowercase"),
    ("stack with underscore", {"stack": "my_stack"}, "use e.g. 'my-stack'"),
    ("stack starts with digit", {"stack": "1st"}, "stack: '1st'"),
    ("stack too long for SA ids", {"stack": "a-very-long-stack-name"}, "GCP allows 6-30"),
    ("stack overlapping another's SQL names", {"stack": "dev-pg"}, "use e.g. 'dev-postgres'"),
    ("tier of Enterprise Plus only", {"db_tier": "db-perf-optimized-N-2"}, "db_tier: 'db-perf"),
    (
        "negative generation",
        {"db_generation_number": -1},
        "db_generation_number: must be 0 or more",
    ),
    ("generation not a number", {"db_generation_number": "two"}, "must be a whole number"),
    ("generation fractional", {"db_generation_number": 1.5}, "must be a whole number"),
    ("boolean not boolean", {"deploy_argo": "maybe"}, "deploy_argo: must be true or false"),
    ("mysql instead of postgres", {"db_version": "MYSQL_8_0"}, "db_version: 'MYSQL_8_0'"),
    ("old postgres", {"db_version": "POSTGRES_9_6"}, "is not supported"),
    ("tier not a tier", {"db_tier": "small"}, "db_tier: 'small'"),
    ("machine type malformed", {"node_machine_type": "big machine"}, "node_machine_type"),
    (
        "min above max nodes",
        {"min_nodes": 6, "max_nodes": 3},
        "min_nodes: 6 is more than max_nodes",
    ),
    ("max nodes zero", {"max_nodes": 0}, "max_nodes: must be at least 1"),
    ("subnet not a cidr", {"subnet_range": "10.2.0.0"}, "subnet_range: '10.2.0.0'"),
    ("subnet host bits set", {"subnet_range": "10.2.3.4/16"}, "host bits must be zero"),
    ("subnet public", {"subnet_range": "8.8.0.0/16"}, "must be a private IPv4 range"),
    ("subnet string type", {"region": 5}, "region: must be a string"),
]


@pytest.mark.parametrize(
    ("case", "changes", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_a_bad_value_is_one_line_naming_setting_rule_and_fix(
    case: str, changes: dict[str, object], expected: str
) -> None:
    lines = errors_for(**changes)
    assert any(expected in line for line in lines), lines
    for line in lines:
        assert "\n" not in line
        assert "Fix: " in line


def test_there_are_at_least_twenty_distinct_bad_inputs_covered() -> None:
    assert len({c[0] for c in BAD_INPUTS}) >= 20


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("org_prefx", "org_prefix"),
        ("projct", "project"),
        ("deploy_airflw", "deploy_airflow"),
        ("db_generation", "db_generation_number"),
        ("zones", "zone"),
    ],
)
def test_an_unknown_key_is_an_error_that_suggests_the_closest_known_one(
    typo: str, suggestion: str
) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_settings({**GOOD, typo: "x"})
    assert f"did you mean '{suggestion}'?" in str(caught.value)


def test_an_unknown_key_far_from_any_lists_the_known_settings() -> None:
    with pytest.raises(ConfigErrors, match="known settings: org_prefix, project"):
        load_settings({**GOOD, "colour": "blue"})


def test_all_bad_settings_are_reported_together() -> None:
    lines = errors_for(project="X", region="nowhere", max_nodes=0)
    assert len(lines) == 3


def test_the_var_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(GOOD, tmp_path / "missing.tfvars")


def test_unknown_keys_in_the_var_file_name_the_file(tmp_path: Path) -> None:
    var_file = tmp_path / "old.tfvars"
    var_file.write_text('org_prefx = "acme"\n')
    with pytest.raises(
        ConfigErrors, match=r"org_prefx: is not a known setting \(in .*old.tfvars\)"
    ):
        load_settings(GOOD, var_file)


def test_a_terraform_users_file_loads_unchanged(tmp_path: Path) -> None:
    var_file = tmp_path / "terraform.tfvars"
    var_file.write_text(
        "# values from the old template\n"
        'org_prefix = "acme"\nproject = "acme-ml-prod"\ndb_generation_number = 2\n'
        "deploy_argo = true\ndeploy_airflow = false\n"
    )
    s = load_settings(None, var_file)
    assert isinstance(s, Settings)
    assert (s.db_generation_number, s.deploy_argo, s.deploy_airflow) == (2, True, False)


@pytest.mark.parametrize(
    "name", ["ab", "a" * 64, "-abc", "abc-", "ABC", "goog-x", "x-google-y", "10.0.0.1", "a b"]
)
def test_bucket_rules_catch_each_broken_name(name: str) -> None:
    assert bucket_name_problem(name)


@pytest.mark.parametrize("name", ["abc", "a" * 63, "my_bucket.1", "acme-data-0"])
def test_bucket_rules_accept_valid_names(name: str) -> None:
    assert bucket_name_problem(name) == ""


def test_authorized_networks_are_off_by_default_and_take_a_list_or_a_comma_separated_string(
) -> None:
    assert load_settings(GOOD).authorized_networks == ()
    listed = load_settings({**GOOD, "authorized_networks": ["203.0.113.0/24", "2001:db8::/32"]})
    assert listed.authorized_networks == ("203.0.113.0/24", "2001:db8::/32")
    text = load_settings({**GOOD, "authorized_networks": "203.0.113.0/24, 198.51.100.7/32"})
    assert text.authorized_networks == ("203.0.113.0/24", "198.51.100.7/32")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (["203.0.113.5/24"], "is not a CIDR range"),
        (["somewhere"], "is not a CIDR range"),
        (["0.0.0.0/0"], "admits every address"),
        ([f"10.0.{i}.0/24" for i in range(51)], "GKE allows at most 50"),
        ([1], "must be a list of strings"),
    ],
)
def test_bad_authorized_networks_are_refused_before_any_call(value: object, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_settings({**GOOD, "authorized_networks": value})
    assert any(e.setting == "authorized_networks" and says in e.rule
               for e in caught.value.errors), caught.value
