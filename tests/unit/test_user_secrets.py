"""User secrets: names Metaflow's @secrets can use, values that never touch a command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from metaflow_gcp import user_secrets
from metaflow_gcp.config import load_settings
from metaflow_gcp.errors import StackError

NAMES = load_settings({"org_prefix": "acme", "project": "acme-ml-prod", "stack": "dev"}).names()


def problem(name: str) -> str:
    with pytest.raises(StackError) as caught:
        user_secrets.check_name(NAMES, name)
    return caught.value.one_line()


def test_a_name_lands_under_the_prefix_the_steps_may_read() -> None:
    user_secrets.check_name(NAMES, "HF_TOKEN")
    user_secrets.check_name(NAMES, "db-password")
    assert user_secrets.secret_id(NAMES, "HF_TOKEN") == "mf-dev-user-HF_TOKEN"


def test_names_metaflow_cannot_turn_into_an_environment_variable_are_refused() -> None:
    assert problem("hf token") == (
        "secret name 'hf token' must start with a letter or '_' and use only letters, digits, "
        "'_' and '-' (Metaflow turns it into an environment variable). "
        "Fix: inv secrets.set hf_token"
    )
    assert problem("1password").endswith("Fix: inv secrets.set _1password")
    assert problem("a/b").endswith("Fix: inv secrets.set a_b")


def test_metaflow_refuses_to_set_variables_starting_with_metaflow() -> None:
    assert problem("METAFLOW_TOKEN") == (
        "secret name 'METAFLOW_TOKEN' starts with METAFLOW_, which @secrets refuses to set. "
        "Fix: inv secrets.set TOKEN"
    )
    assert "METAFLOW_" in problem("metaflow-token")


def test_a_name_too_long_for_secret_manager_says_how_long_it_may_be() -> None:
    assert problem("x" * 250).endswith("Fix: use a name of at most 243 characters")


def test_a_piped_value_loses_only_its_final_newline() -> None:
    assert user_secrets.read_value(None, io.StringIO("s3cr3t value\n")) == "s3cr3t value"
    assert user_secrets.read_value(None, io.StringIO("two\nlines\n\n")) == "two\nlines\n"
    assert user_secrets.read_value(None, io.StringIO("crlf\r\n")) == "crlf"


def test_a_file_value_is_kept_exactly(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN KEY-----\nabc\n-----END KEY-----\n")
    assert user_secrets.read_value(str(key)) == key.read_text()


def test_on_a_terminal_the_value_is_asked_for_without_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked: list[str] = []

    def getpass(prompt: str, stream: object = None) -> str:
        asked.append(prompt)
        return "typed"

    monkeypatch.setattr(user_secrets.getpass, "getpass", getpass)
    assert user_secrets.read_value(None, Tty()) == "typed"
    assert asked == ["Secret value (not shown): "]


def test_empty_missing_binary_or_huge_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="the secret value is empty"):
        user_secrets.read_value(None, io.StringIO("\n"))
    with pytest.raises(StackError, match="no such file"):
        user_secrets.read_value(str(tmp_path / "missing"))
    blob = tmp_path / "blob"
    blob.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StackError, match="is not UTF-8 text"):
        user_secrets.read_value(str(blob))
    with pytest.raises(StackError, match="Secret Manager keeps at most 65536"):
        user_secrets.read_value(None, io.StringIO("x" * 70000))
