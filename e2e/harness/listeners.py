"""Listener-mode building blocks: templates as plain data, and the shipped listener bootstraps."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.harness.bootstrap import load_bootstrap

__all__ = [
    "HCM",
    "ROUTER",
    "cluster_template",
    "free_port",
    "http_listener_template",
    "listeners_bootstrap",
    "tcp_listener_template",
    "write_templates",
]

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
API_VERSION = "wasmxds.io/v1alpha1"


def free_port() -> int:
    """A port nothing listens on right now (templates need real port numbers for `match`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _nodes(
    namespaces: Sequence[str] = (), labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    if namespaces:
        nodes["namespaces"] = list(namespaces)
    if labels:
        nodes["matchLabels"] = dict(labels)
    return nodes


def http_listener_template(
    name: str,
    port: int,
    *,
    direction: str = "GATEWAY",
    http_filters: Sequence[Mapping[str, Any]] = (),
    cluster: str = "upstream",
    namespaces: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ListenerTemplate: one HCM routing everything to ``cluster``; router appended."""
    filters = [*http_filters, {"name": "envoy.filters.http.router", "typed_config": ROUTER}]
    return {
        "apiVersion": API_VERSION,
        "kind": "ListenerTemplate",
        "metadata": {"name": name},
        "spec": {
            "direction": direction,
            "nodes": _nodes(namespaces, labels),
            "listener": {
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": {
                                    "@type": HCM,
                                    "stat_prefix": name,
                                    "route_config": {
                                        "virtual_hosts": [
                                            {
                                                "name": "all",
                                                "domains": ["*"],
                                                "routes": [
                                                    {
                                                        "match": {"prefix": "/"},
                                                        "route": {"cluster": cluster},
                                                    }
                                                ],
                                            }
                                        ]
                                    },
                                    "http_filters": filters,
                                },
                            }
                        ]
                    }
                ],
            },
        },
    }


def tcp_listener_template(
    name: str, port: int, *, cluster: str, direction: str = "INBOUND"
) -> dict[str, Any]:
    """A ListenerTemplate with tcp_proxy to ``cluster`` (NETWORK plugins go before it)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ListenerTemplate",
        "metadata": {"name": name},
        "spec": {
            "direction": direction,
            "listener": {
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": TCP_PROXY,
                                    "stat_prefix": name,
                                    "cluster": cluster,
                                },
                            }
                        ]
                    }
                ],
            },
        },
    }


def cluster_template(
    name: str, host: str, port: int, *, namespaces: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterTemplate",
        "metadata": {"name": name},
        "spec": {
            "nodes": _nodes(namespaces),
            "cluster": {
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": host, "port_value": port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        },
    }


def write_templates(
    directory: Path, *templates: Mapping[str, Any], name: str = "templates.yaml"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump_all(list(templates), sort_keys=False))
    return path


def listeners_bootstrap(
    *,
    xds_port: int,
    node_id: str = "envoy-test",
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    api: str = "sotw",
    mtls: bool = False,
) -> dict[str, Any]:
    """The shipped listener-mode bootstrap, pointed at ``xds_port`` with this node identity."""
    config = load_bootstrap(f"listeners-{api}{'-mtls' if mtls else ''}.yaml")
    config["node"]["id"] = node_id
    config["node"]["metadata"] = {"NAMESPACE": namespace, "LABELS": dict(labels or {})}
    (cluster,) = config["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": xds_port}
    return config
