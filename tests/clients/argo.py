"""Reading what Metaflow compiles for Argo: templates, pods, the env handed to steps."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

Manifest = dict[str, Any]

# Argo substitutes these in a resource template's manifest before it creates the object:
# `{{=expr}}` expressions and `{{inputs.parameters.x}}`-style parameters.
_EXPRESSION = re.compile(r"\{\{=asInt\([^}]*\)\}\}")
_PARAMETER = re.compile(r"\{\{[^}]*\}\}")


def parse_only_json(stdout: str) -> Manifest:
    """`argo-workflows create --only-json` prints the WorkflowTemplate alone on stdout."""
    template: Manifest = json.loads(stdout)
    return template


def templates(workflow_template: Manifest) -> list[Manifest]:
    found: list[Manifest] = workflow_template["spec"]["templates"]
    return found


def pod_templates(workflow_template: Manifest) -> list[Manifest]:
    """The templates Argo runs as a pod of their own (container, script or resource)."""
    return [
        t
        for t in templates(workflow_template)
        if any(key in t for key in ("container", "script", "resource"))
    ]


def container_templates(workflow_template: Manifest) -> list[Manifest]:
    return [t for t in templates(workflow_template) if "container" in t]


def template(workflow_template: Manifest, name: str) -> Manifest:
    matches = [t for t in templates(workflow_template) if t["name"] == name]
    assert len(matches) == 1, f"no single template {name}"
    return matches[0]


def env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def resource_manifest(resource_template: Manifest) -> Manifest:
    """The object a resource template creates, with Argo's placeholders filled in.

    Argo fills them per run; a number for `asInt(...)`, a DNS-safe word for the rest stands
    in for what Argo would put there, so the object can be checked against its schema.
    """
    text = resource_template["resource"]["manifest"]
    text = _EXPRESSION.sub("1", text)
    text = _PARAMETER.sub("argo-value", text)
    manifest: Manifest = yaml.safe_load(text)
    return manifest


def pod_specs_of_jobset(jobset: Manifest) -> Iterator[Manifest]:
    for job in jobset["spec"]["replicatedJobs"]:
        yield job["template"]["spec"]["template"]


def names_used(obj: Any) -> tuple[set[str], set[str]]:
    """Every namespace and every service account an object names, at any depth."""
    namespaces: set[str] = set()
    accounts: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "namespace" and isinstance(value, str):
                    namespaces.add(value)
                elif key in {"serviceAccountName", "service_account_name"} and value:
                    accounts.add(str(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return namespaces, accounts
