"""Where each phase's plugins go among a template's own filters, in istiod's order.

istiod builds every chain in one fixed order and appends each phase's plugins
at its place (``listener_builder.go`` for HTTP, ``networkfilter.go`` and
``gateway.go`` for network chains, checked by ``TestBuildGatewayListenersFilters``
in ``gateway_test.go``)::

    HTTP:    [mx] [CUSTOM: shadow rbac, ext_authz] AUTHN [jwt_authn...] AUTHZ
             [rbac ALLOW/DENY] STATS unspecified [grpc_stats, ..., istio.stats] router
    network: [mx] [CUSTOM: shadow rbac, ext_authz] AUTHN AUTHZ [rbac ALLOW/DENY]
             STATS unspecified [istio.stats] terminal

A template is a chain written by a user, so its filters are read into those
roles ("anchors"): each phase goes right before the first filter of its role,
and a phase whose role is missing takes the next phase's place, so phases never
cross. Unspecified-phase plugins follow the STATS ones, before the stats
filters. An ``ext_authz``, and an ``rbac`` right before one, is Istio's CUSTOM
action: not an anchor, so AUTHN and AUTHZ plugins land after it. A template
whose filters are of other types (a Lua or Wasm auth filter, a stats filter by
another name) names them in ``spec.anchors``, which overrides the type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from wasmxds.translate.typeurls import type_url

__all__ = ["http_classes", "insert", "network_classes"]

T = TypeVar("T")

_ROUTER = type_url("envoy.extensions.filters.http.router.v3.Router")
_HTTP_AUTHN = frozenset(
    type_url(name)
    for name in (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "envoy.extensions.filters.http.oauth2.v3.OAuth2",
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
    )
)
_HTTP_RBAC = type_url("envoy.extensions.filters.http.rbac.v3.RBAC")
_HTTP_EXT_AUTHZ = type_url("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
_HTTP_STATS = frozenset({type_url("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig")})
_STATS_NAMES = frozenset({"istio.stats", "envoy.filters.http.grpc_stats"})
_NETWORK_RBAC = type_url("envoy.extensions.filters.network.rbac.v3.RBAC")
_NETWORK_EXT_AUTHZ = type_url("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz")


def _security_class(kinds: Sequence[str], index: int, rbac: str, ext_authz: str) -> str | None:
    kind = kinds[index]
    if kind == ext_authz:
        return "custom"
    if kind == rbac:
        # istiod's CUSTOM action is a shadow RBAC followed by its ext_authz.
        following = kinds[index + 1] if index + 1 < len(kinds) else ""
        return "custom" if following == ext_authz else "authz"
    return None


def http_classes(
    filters: Sequence[hcm_pb2.HttpFilter], marks: Mapping[str, str]
) -> list[str | None]:
    """Each HTTP filter's role: custom, authn, authz, stats, terminal or None."""
    kinds = [f.typed_config.type_url if f.HasField("typed_config") else "" for f in filters]
    classes: list[str | None] = []
    for index, http_filter in enumerate(filters):
        kind = kinds[index]
        role = marks.get(http_filter.name)
        if role is None:
            if kind == _ROUTER:
                role = "terminal"
            elif kind in _HTTP_AUTHN:
                role = "authn"
            elif kind in _HTTP_STATS or http_filter.name in _STATS_NAMES:
                role = "stats"
            else:
                role = _security_class(kinds, index, _HTTP_RBAC, _HTTP_EXT_AUTHZ)
        classes.append(role)
    return classes


def network_classes(
    filters: Sequence[listener_components_pb2.Filter], marks: Mapping[str, str]
) -> list[str | None]:
    """Each network filter's role; the last filter is the terminal one."""
    kinds = [f.typed_config.type_url for f in filters]
    classes: list[str | None] = []
    for index, network_filter in enumerate(filters):
        role = marks.get(network_filter.name)
        if role is None:
            if index == len(filters) - 1:
                role = "terminal"
            elif network_filter.name in _STATS_NAMES:
                role = "stats"
            else:
                role = _security_class(kinds, index, _NETWORK_RBAC, _NETWORK_EXT_AUTHZ)
        classes.append(role)
    return classes


def _anchors(classes: Sequence[str | None]) -> tuple[int, int, int, int]:
    """Insertion index for AUTHN, AUTHZ, STATS and unspecified plugins, in that order."""

    def first(kind: str, limit: int) -> int:
        found = next((i for i, k in enumerate(classes) if k == kind), None)
        return limit if found is None else min(found, limit)

    stats = first("stats", first("terminal", len(classes)))
    authz = first("authz", stats)
    # Unspecified right after STATS: istiod appends the two one after the other.
    return first("authn", authz), authz, stats, stats


def insert(
    existing: Sequence[T], classes: Sequence[str | None], groups: Sequence[list[T]]
) -> list[T]:
    """``existing`` with the four phase ``groups`` (AUTHN, AUTHZ, STATS, unspecified) placed."""
    result: list[T] = []
    start = 0
    for anchor, group in zip(_anchors(classes), groups, strict=True):
        result.extend(existing[start:anchor])
        result.extend(group)
        start = anchor
    result.extend(existing[start:])
    return result
