"""Load the shipped bootstraps from envoy-configs/ and point them at test processes.

Tests start from the very files users copy, and only change addresses, ports
and the filter list, so a broken shipped bootstrap fails the suite.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ecds_bootstrap", "load_bootstrap"]

CONFIGS = Path(__file__).resolve().parents[2] / "envoy-configs"


def load_bootstrap(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIGS / name).read_text())
    return loaded


def _set_endpoint(cluster: dict[str, Any], host: str, port: int) -> None:
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    address["socket_address"] = {"address": host, "port_value": port}


def ecds_bootstrap(
    *,
    xds_port: int,
    upstream_port: int,
    filters: Sequence[str] = ("default.header-filter",),
    node_id: str = "envoy-test",
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    initial_fetch_timeout: str = "10s",
    default_config: bool = True,
    name: str = "ecds-sotw.yaml",
) -> dict[str, Any]:
    """The ECDS-only bootstrap with one config_discovery filter per name in ``filters``."""
    config = load_bootstrap(name)
    config["node"]["id"] = node_id
    config["node"]["metadata"] = {"NAMESPACE": namespace, "LABELS": dict(labels or {})}
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    template, router = hcm["http_filters"][0], hcm["http_filters"][-1]
    chain = []
    for filter_name in filters:
        entry = copy.deepcopy(template)
        entry["name"] = filter_name
        entry["config_discovery"]["config_source"]["initial_fetch_timeout"] = initial_fetch_timeout
        if not default_config:
            entry["config_discovery"].pop("default_config", None)
        chain.append(entry)
    hcm["http_filters"] = [*chain, router]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    _set_endpoint(clusters["wasmxds"], "127.0.0.1", xds_port)
    _set_endpoint(clusters["upstream"], "127.0.0.1", upstream_port)
    return config
