"""What the cluster enforces of NetworkPolicies, for charts rendered without a cluster.

Charts are rendered in-process (tests/charts), so no API server or network plugin decides
who may reach whom; these functions do, with standard NetworkPolicy semantics for
connections inside one namespace, so that chart tests can state reachability directly.
"""

from __future__ import annotations

from typing import Any


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpression must hold."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not holds:
            return False
    return True


def admits(
    policies: list[dict[str, Any]],
    source: dict[str, str],
    target: dict[str, str],
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Would a pod labelled `source` reach `target` on `port`, both in the policies' namespace?

    A pod selected by no Ingress policy takes everything; otherwise some rule of a policy
    selecting it must allow the source and the port (NetworkPolicies only add up).
    """
    applying = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], target)
    ]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            peer_ok = not peers or any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and selects(peer["podSelector"], source)
                for peer in peers
            )
            ports = rule.get("ports")
            port_ok = not ports or any(
                p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
            )
            if peer_ok and port_ok:
                return True
    return False
