"""Validate objects against the OpenAPI schemas of CustomResourceDefinitions, as the API server does.

The API server drops a null field unless its schema says `nullable` (Metaflow sends many
nulls, e.g. `claims: null`), then validates. Unknown fields are refused here rather than
silently pruned (kubectl's `--validate=strict`): a field the pinned controller does not
know is a field Metaflow relies on that would be lost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Schema = dict[str, Any]
Manifest = dict[str, Any]

_PRESERVE = "x-kubernetes-preserve-unknown-fields"


@dataclass(frozen=True)
class Crd:
    group: str
    kind: str
    plural: str
    scope: str
    versions: dict[str, Schema | None]  # served version -> openAPIV3Schema (None: none given)


def read_yaml_files(paths: Iterable[Path]) -> list[Manifest]:
    """Every document of plain YAML files (libyaml: the full Argo CRDs are megabytes)."""
    documents: list[Manifest] = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            documents += [d for d in yaml.load_all(fh, Loader=yaml.CSafeLoader) if d]
    return documents


def load_crds(documents: Iterable[Manifest]) -> dict[tuple[str, str], Crd]:
    """(group, kind) -> CRD for every CustomResourceDefinition among `documents`."""
    found: dict[tuple[str, str], Crd] = {}
    for doc in documents:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        versions = {
            v["name"]: (v.get("schema") or {}).get("openAPIV3Schema")
            for v in spec["versions"]
            if v.get("served", True)
        }
        names = spec["names"]
        found[(spec["group"], names["kind"])] = Crd(
            spec["group"], names["kind"], names["plural"], spec["scope"], versions
        )
    return found


def strict(schema: Schema) -> Schema:
    """The schema with unknown fields refused wherever the CRD lists the fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get(_PRESERVE)
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def prune_nulls(value: Any, schema: Schema | None) -> Any:
    """Drop null fields whose schema is not nullable, the way the API server does."""
    schema = schema or {}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if item is None and not (sub or {}).get("nullable"):
                continue
            out[key] = prune_nulls(item, sub)
        return out
    if isinstance(value, list):
        return [prune_nulls(item, schema.get("items")) for item in value]
    return value


class Validator:
    """The CRDs of the pinned charts, checking objects of the kinds they define."""

    def __init__(self, crds: dict[tuple[str, str], Crd]) -> None:
        self.crds = crds
        self._validators: dict[tuple[str, str, str], jsonschema.Draft7Validator] = {}

    def crd_for(self, obj: Manifest) -> Crd:
        group, _, _ = str(obj["apiVersion"]).partition("/")
        crd = self.crds.get((group, obj["kind"]))
        assert crd is not None, f"no CRD for {obj['apiVersion']} {obj['kind']} in the pinned charts"
        return crd

    def problems(self, obj: Manifest) -> list[str]:
        """Every schema violation of `obj` (empty: the API server would accept it)."""
        crd = self.crd_for(obj)
        _, _, version = str(obj["apiVersion"]).partition("/")
        if version not in crd.versions:
            return [f"{crd.kind}: version {version} is not served (served: {sorted(crd.versions)})"]
        schema = crd.versions[version]
        if schema is None:
            return []
        key = (crd.group, crd.kind, version)
        if key not in self._validators:
            self._validators[key] = jsonschema.Draft7Validator(strict(schema))
        pruned = prune_nulls(obj, schema)
        return [
            f"{crd.kind} at {'/'.join(str(p) for p in error.absolute_path) or '.'}: "
            f"{error.message[:300]}"
            for error in self._validators[key].iter_errors(pruned)
        ]
