"""Type URLs of the Envoy messages wasmxds produces."""

from __future__ import annotations

__all__ = [
    "HTTP_LUA",
    "HTTP_RBAC",
    "HTTP_WASM",
    "NETWORK_RBAC",
    "NETWORK_WASM",
    "TYPED_EXTENSION_CONFIG",
    "type_url",
]

_PREFIX = "type.googleapis.com/"


def type_url(full_name: str) -> str:
    return _PREFIX + full_name


TYPED_EXTENSION_CONFIG = type_url("envoy.config.core.v3.TypedExtensionConfig")
HTTP_WASM = type_url("envoy.extensions.filters.http.wasm.v3.Wasm")
HTTP_RBAC = type_url("envoy.extensions.filters.http.rbac.v3.RBAC")
NETWORK_WASM = type_url("envoy.extensions.filters.network.wasm.v3.Wasm")
NETWORK_RBAC = type_url("envoy.extensions.filters.network.rbac.v3.RBAC")
HTTP_LUA = type_url("envoy.extensions.filters.http.lua.v3.Lua")
