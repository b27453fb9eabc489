"""The .tfvars reader: Terraform users' files work; anything we can't honour is refused."""

from __future__ import annotations

import pytest

from metaflow_gcp.errors import ConfigError
from metaflow_gcp.tfvars import parse_tfvars


def test_strings_numbers_and_booleans_with_comments() -> None:
    text = """
    # hash comment
    // slash comment
    /* block
       comment */
    org_prefix = "acme"   # trailing
    db_generation_number = 3
    deploy_argo = true
    ratio = 1.5
    url = "http://x#not-a-comment"
    """
    assert parse_tfvars(text) == {
        "org_prefix": "acme",
        "db_generation_number": 3,
        "deploy_argo": True,
        "ratio": 1.5,
        "url": "http://x#not-a-comment",
    }


def test_escaped_quotes_inside_strings() -> None:
    assert parse_tfvars('a = "say \\"hi\\""') == {"a": 'say "hi"'}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("project", "expected `name = value`"),
        ('project = "open', "is not closed"),
        ("project = acme", "must be a quoted string"),
        ('tags = ["a", "b"]', "must be a quoted string"),
        ('a = "1"\na = "2"', "'a' is set twice"),
        ('a = "${var.x}"', "interpolation"),
        ("/* never closed", "never closed"),
    ],
)
def test_what_a_plain_settings_file_cannot_mean_is_an_error_with_its_line(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_tfvars(text, source="f.tfvars")
    assert caught.value.setting.startswith("f.tfvars")
