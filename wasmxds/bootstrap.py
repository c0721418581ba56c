"""Envoy bootstraps that connect to wasmxds (``wasmxds bootstrap``; the files in envoy-configs/).

Two modes:

- ``ecds``: a static listener whose HTTP filter chain names WasmPlugins by their
  ECDS resource name; wasmxds streams each filter.
- ``listeners``: no static listeners; wasmxds serves listeners and clusters
  (LDS/CDS over ADS) built from templates, with every applicable WasmPlugin placed.

Either over SotW or delta ADS, in plaintext, TLS or mutual TLS. Over TLS, Envoy
checks that wasmxds's certificate both comes from the CA and names the server it
asked for (a SAN), so that another workload's certificate from the same CA cannot
stand in for wasmxds. The node's namespace (when given) and labels (what
WasmPlugin scoping uses) go into node metadata under Istio's keys, ``NAMESPACE``
and ``LABELS``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmxds.settings import HostPort
from wasmxds.translate.typeurls import HTTP_LUA, HTTP_RBAC, HTTP_WASM

__all__ = [
    "MODULES_CLUSTER",
    "Api",
    "BootstrapOptions",
    "Mode",
    "TlsOptions",
    "build_bootstrap",
    "parse_labels_file",
    "san_matcher",
    "stats_sink_config",
]

_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_METRICS_SERVICE = "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig"
XDS_CLUSTER = "wasmxds"
MODULES_CLUSTER = "wasmxds_modules"
"""The cluster Envoy downloads modules through with ``--module-delivery remote``."""
DEFAULT_XDS = HostPort("127.0.0.1", 18000)
DEFAULT_LISTEN = HostPort("127.0.0.1", 10000)
DEFAULT_UPSTREAM = HostPort("127.0.0.1", 8080)


class Mode(enum.StrEnum):
    ECDS = "ecds"
    LISTENERS = "listeners"


class Api(enum.StrEnum):
    SOTW = "sotw"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How Envoy talks TLS to wasmxds: verify it with ``ca``; present ``cert``/``key`` for mTLS."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    sni: str = ""
    server_san: str = ""
    """The SAN wasmxds's certificate must carry (a SPIFFE ID, an IP or a DNS name); ""
    for ``sni`` if given, else the host Envoy connects to."""


@dataclass(frozen=True, slots=True)
class BootstrapOptions:
    node_id: str
    cluster: str = ""
    namespace: str | None = None
    """Written as ``NAMESPACE`` only when given: with ``--node-identity certificate``
    wasmxds takes it from the proxy's certificate, and otherwise uses ``default``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    xds: HostPort = DEFAULT_XDS
    mode: Mode = Mode.ECDS
    api: Api = Api.SOTW
    filters: Sequence[str] = ()
    listen: HostPort = DEFAULT_LISTEN
    upstream: HostPort = DEFAULT_UPSTREAM
    default_config: bool = True
    initial_fetch_timeout: str = "10s"
    tls: TlsOptions | None = None
    modules: HostPort | None = None
    """wasmxds's admin address, for ``--module-delivery remote`` downloads."""
    modules_tls: TlsOptions | None = None
    """How module downloads talk TLS to wasmxds's admin port (None: plain HTTP)."""
    stats_sink: bool = False
    """Stream Envoy's stats to wasmxds's metrics service (proxy health for rollouts)."""


def parse_labels_file(text: str) -> dict[str, str]:
    """Labels in the Kubernetes downward API file format: one ``key="value"`` per line."""
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        labels[key.strip()] = value
    return labels


def _address(where: HostPort) -> dict[str, Any]:
    return {"socket_address": {"address": where.host, "port_value": where.port}}


def _cluster(name: str, where: HostPort, *, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(where)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def san_matcher(san: str) -> dict[str, Any]:
    """A ``SubjectAltNameMatcher`` for ``san``: a SPIFFE ID is a URI SAN, an IP address an
    IP_ADDRESS SAN, anything else a DNS name."""
    if san[: len("spiffe://")].lower() == "spiffe://":
        return {"san_type": "URI", "matcher": {"exact": san}}
    try:
        address = ipaddress.ip_address(san.strip("[]"))
    except ValueError:
        return {"san_type": "DNS", "matcher": {"exact": san}}
    return {"san_type": "IP_ADDRESS", "matcher": {"exact": str(address)}}


def _transport_socket(tls: TlsOptions, host: str, alpn: Sequence[str] = ()) -> dict[str, Any]:
    """An ``UpstreamTlsContext`` verifying wasmxds (at ``host``) with ``tls.ca`` and its SAN,
    and presenting a client certificate when ``tls`` has one."""
    common: dict[str, Any] = {}
    if alpn:
        common["alpn_protocols"] = list(alpn)
    # The CA alone is not enough: a mesh CA signs every workload, and any of them could
    # answer as wasmxds. The certificate must also name the server Envoy asked for.
    san = tls.server_san or tls.sni or host
    common["validation_context"] = {
        "trusted_ca": {"filename": str(tls.ca)},
        "match_typed_subject_alt_names": [san_matcher(san)],
    }
    if tls.cert is not None and tls.key is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(tls.cert)},
                "private_key": {"filename": str(tls.key)},
            }
        ]
    context: dict[str, Any] = {"@type": _UPSTREAM_TLS, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _xds_cluster(options: BootstrapOptions) -> dict[str, Any]:
    cluster = _cluster(XDS_CLUSTER, options.xds, http2=True)
    if options.tls is not None:
        # gRPC servers only speak HTTP/2 and check ALPN for it.
        cluster["transport_socket"] = _transport_socket(options.tls, options.xds.host, ("h2",))
    return cluster


def _modules_cluster(where: HostPort, tls: TlsOptions | None) -> dict[str, Any]:
    cluster = _cluster(MODULES_CLUSTER, where)
    if tls is not None:
        # The admin port over HTTPS (`serve --admin-tls-cert`), with a client
        # certificate when it asks for one (`--admin-client-ca`).
        cluster["transport_socket"] = _transport_socket(tls, where.host)
    return cluster


def _filter_reference(name: str, options: BootstrapOptions) -> dict[str, Any]:
    discovery: dict[str, Any] = {
        "config_source": {
            "ads": {},
            "resource_api_version": "V3",
            "initial_fetch_timeout": options.initial_fetch_timeout,
        },
        # Lua too: any name may be a TrafficExtension's, which can be a Lua filter.
        "type_urls": [HTTP_WASM, HTTP_RBAC, HTTP_LUA],
    }
    if options.default_config:
        # Allow-all RBAC: traffic keeps flowing without the filter while the
        # plugin does not exist (yet); without it Envoy answers 500.
        discovery["default_config"] = {"@type": HTTP_RBAC}
    return {"name": name, "config_discovery": discovery}


def _static_listener(options: BootstrapOptions) -> dict[str, Any]:
    http_filters = [_filter_reference(name, options) for name in options.filters]
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}})
    return {
        "name": "ingress",
        "address": _address(options.listen),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM,
                            "stat_prefix": "ingress",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {"cluster": "upstream"},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": http_filters,
                        },
                    }
                ]
            }
        ],
    }


def build_bootstrap(options: BootstrapOptions) -> dict[str, Any]:
    """The bootstrap as plain data, ready for ``yaml.safe_dump``."""
    if options.mode is Mode.ECDS and not options.filters:
        raise ValueError("ECDS mode needs at least one filter name (<namespace>.<name>)")
    ads: dict[str, Any] = {
        "api_type": "DELTA_GRPC" if options.api is Api.DELTA else "GRPC",
        "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
    }
    dynamic: dict[str, Any] = {"ads_config": ads}
    clusters = [_xds_cluster(options)]
    static: dict[str, Any] = {"clusters": clusters}
    if options.mode is Mode.LISTENERS:
        dynamic["lds_config"] = {"ads": {}, "resource_api_version": "V3"}
        dynamic["cds_config"] = {"ads": {}, "resource_api_version": "V3"}
    else:
        static["listeners"] = [_static_listener(options)]
        clusters.append(_cluster("upstream", options.upstream))
    if options.modules is not None:
        clusters.append(_modules_cluster(options.modules, options.modules_tls))
    metadata: dict[str, Any] = {}
    if options.namespace is not None:
        metadata["NAMESPACE"] = options.namespace
    if options.labels:
        metadata["LABELS"] = dict(options.labels)
    config: dict[str, Any] = {
        "node": {
            "id": options.node_id,
            "cluster": options.cluster or options.node_id,
            "metadata": metadata,
        },
        "dynamic_resources": dynamic,
        "static_resources": static,
    }
    if options.stats_sink:
        config.update(stats_sink_config())
    return config


STATS_FLUSH_INTERVAL = "5s"
"""How often Envoy sends its stats: a failing plugin is seen within this (Envoy's default: 5s)."""


def stats_sink_config() -> dict[str, Any]:
    """The bootstrap fields that stream Envoy's stats to wasmxds's metrics service over the
    xDS cluster; counters as deltas since the last flush, as wasmxds's health figures expect."""
    return {
        "stats_sinks": [
            {
                "name": "envoy.stat_sinks.metrics_service",
                "typed_config": {
                    "@type": _METRICS_SERVICE,
                    "transport_api_version": "V3",
                    "report_counters_as_deltas": True,
                    "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                },
            }
        ],
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
    }
