"""Read the `key = value` files that users of the Terraform template already have.

Only flat string / number / bool assignments are meaningful for this stack, so
anything else (lists, maps, heredocs) is an error with its line number rather
than a half-understood value.
"""

from __future__ import annotations

import re
from pathlib import Path

from metaflow_gcp.errors import ConfigError

TfValue = str | int | float | bool

_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def parse_tfvars(text: str, source: str = "tfvars") -> dict[str, TfValue]:
    values: dict[str, TfValue] = {}
    in_block_comment = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if in_block_comment:
            if "*/" not in line:
                continue
            line = line.split("*/", 1)[1]
            in_block_comment = False
        if "/*" in line and not _inside_string(line, line.index("/*")):
            before, _, after = line.partition("/*")
            if "*/" in after:
                line = before + after.split("*/", 1)[1]
            else:
                line, in_block_comment = before, True
        line = _strip_line_comment(line).strip()
        if not line:
            continue
        match = _ASSIGNMENT.match(line)
        if not match:
            raise ConfigError(
                f"{source}:{number}",
                f"expected `name = value`, found {raw.strip()!r}",
                'write one setting per line, e.g. project = "my-project"',
            )
        key, raw_value = match.group(1), match.group(2)
        if key in values:
            raise ConfigError(
                f"{source}:{number}",
                f"'{key}' is set twice",
                "keep one assignment per setting",
            )
        values[key] = _parse_value(raw_value, f"{source}:{number}", key)
    if in_block_comment:
        raise ConfigError(source, "a /* comment is never closed", "add the closing */")
    return values


def read_tfvars(path: Path) -> dict[str, TfValue]:
    if not path.is_file():
        raise ConfigError(
            "--var-file", f"{path} does not exist", "pass the path of an existing .tfvars file"
        )
    return parse_tfvars(path.read_text(encoding="utf-8"), source=str(path))


def _parse_value(raw: str, where: str, key: str) -> TfValue:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ConfigError(where, f"the string for '{key}' is not closed", 'end it with "')
        body = raw[1:-1]
        if "${" in body:
            raise ConfigError(
                where,
                f"'{key}' uses interpolation, which a plain settings file cannot evaluate",
                "write the literal value",
            )
        return body.replace('\\"', '"').replace("\\\\", "\\")
    if raw in ("true", "false"):
        return raw == "true"
    if _NUMBER.match(raw):
        return float(raw) if "." in raw else int(raw)
    raise ConfigError(
        where,
        f"'{key}' must be a quoted string, a number or true/false, found {raw!r}",
        f'quote it: {key} = "{raw}"',
    )


def _strip_line_comment(line: str) -> str:
    for marker in ("#", "//"):
        position = line.find(marker)
        while position != -1:
            if not _inside_string(line, position):
                line = line[:position]
                break
            position = line.find(marker, position + 1)
    return line


def _inside_string(line: str, position: int) -> bool:
    quotes = 0
    escaped = False
    for char in line[:position]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quotes += 1
    return quotes % 2 == 1
