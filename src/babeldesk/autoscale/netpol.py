"""Kubernetes NetworkPolicies of the rendered fleet (``manifests.render`` adds them)."""

from __future__ import annotations

from typing import Any

from babeldesk.autoscale.cluster import KubernetesConfig
from babeldesk.autoscale.manifests import Manifest, _meta, _selector


def network_policies(cfg: KubernetesConfig) -> list[Manifest]:
    """Workers reachable from the gateways (and Prometheus) only, Redis from the gateways
    only; the gateways take traffic from anywhere (their Service is the way in)."""
    prometheus = {"namespaceSelector": {},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}

    def only(component: str, port: int, sources: list[dict[str, Any]]) -> Manifest:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": _meta(cfg, f"babeldesk-{component}", component),
                "spec": {"podSelector": {"matchLabels": _selector(component)},
                         "policyTypes": ["Ingress"],
                         "ingress": [{"from": sources, "ports": [{"port": port}]}]}}

    gateways = {"podSelector": {"matchLabels": _selector("gateway")}}
    return [only("worker", 8000, [gateways, prometheus]), only("redis", 6379, [gateways])]
