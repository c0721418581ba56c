"""TrafficExtensions in translation: the Lua filter, references that accept it, ordering."""

from __future__ import annotations

import json
import textwrap

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.factories import make_plugin
from tests.translate.test_listeners import ROUTER, build, http_template
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.parse import parse_text
from wasmxds.bootstrap import BootstrapOptions, build_bootstrap
from wasmxds.translate.filters import FilterKind
from wasmxds.translate.plugins import lua_resources

LUA = 'function envoy_on_request(h) h:headers():add("x-lua", "1") end'
WASM_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
LUA_URL = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"


def extension(name: str, spec: str, *, created: str = "") -> WasmPlugin:
    stamp = f"\n  creationTimestamp: '{created}'" if created else ""
    text = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\n"
        f"metadata:\n  name: {name}{stamp}\nspec:\n" + textwrap.indent(spec, "  ")
    )
    parsed = parse_text(text, f"{name}.yaml")
    assert [str(p) for p in parsed.problems] == []
    return parsed.plugins[0]


def http_filters(listener: listener_pb2.Listener) -> list[hcm_pb2.HttpFilter]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return list(hcm.http_filters)


def test_lua_becomes_an_inline_lua_filter_under_the_extension_name() -> None:
    """istiod's Lua shape (inline source code), named <ns>.<name>, like a WasmPlugin."""
    plugin = extension("hdr", f"lua:\n  inlineCode: '{LUA}'\n")
    resources = lua_resources(plugin, LUA)
    assert resources.kind is FilterKind.HTTP
    assert resources.standin is None
    assert resources.config.name == "default.hdr"
    assert resources.config.typed_config.type_url == LUA_URL
    lua = lua_pb2.Lua()
    assert resources.config.typed_config.Unpack(lua)
    assert lua.default_source_code.inline_string == LUA


def test_extension_references_accept_lua_and_wasmplugin_references_do_not_change() -> None:
    """A TrafficExtension's listener reference lists the Lua type; a WasmPlugin's keeps two."""
    listener = build(
        http_template(("router", ROUTER)),
        make_plugin("w"),
        extension("e", f"lua:\n  inlineCode: '{LUA}'\n"),
    )
    urls = {f.name: list(f.config_discovery.type_urls) for f in http_filters(listener)[:-1]}
    assert urls == {
        "default.w": [WASM_URL, RBAC_URL],
        "default.e": [WASM_URL, RBAC_URL, LUA_URL],
    }


def test_bootstrap_references_accept_lua() -> None:
    """`wasmxds bootstrap` filter references take Wasm, RBAC and Lua."""
    bootstrap = build_bootstrap(BootstrapOptions(node_id="n", filters=("default.a",)))
    text = json.dumps(bootstrap)
    assert text.count(json.dumps([WASM_URL, RBAC_URL, LUA_URL])) == 1


def test_ordered_together_with_wasmplugins_by_phase_priority_then_age() -> None:
    """Phase, then priority (unset lowest), then creationTimestamp and name, across both kinds."""
    plugins = [
        make_plugin("w-unset-authz", phase="AUTHZ"),
        extension("e-authz-5", "phase: AUTHZ\npriority: 5\nlua: {inlineCode: x}\n"),
        make_plugin("w-authz-9", phase="AUTHZ", priority=9),
        extension("e-authn", "phase: AUTHN\nwasm: {url: oci://r/f:v1}\n"),
        extension("e-old", "phase: STATS\nlua: {inlineCode: x}\n", created="2020-01-01T00:00:00Z"),
        extension("a-new", "phase: STATS\nlua: {inlineCode: x}\n", created="2024-01-01T00:00:00Z"),
        make_plugin("w-none"),
    ]
    # Only a router: the order is the plugins' own, whatever the anchors' rules.
    names = [f.name for f in http_filters(build(http_template(("router", ROUTER)), *plugins))]
    assert names == [
        "default.e-authn",
        "default.w-authz-9",
        "default.e-authz-5",
        "default.w-unset-authz",
        "default.e-old",
        "default.a-new",
        "default.w-none",
        "router",
    ]
