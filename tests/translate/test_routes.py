"""Per-route scoping in built listeners and the per-scope override ECDS resources."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format, wrappers_pb2

from tests.factories import make_node, make_plugin
from tests.translate.test_listeners import ROUTER, _template, build
from tests.xds.helpers import DELIVERY, ROOT, module_for
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.templates import Direction, ListenerTemplate
from wasmxds.modules.types import Ready
from wasmxds.translate.plugins import plugin_resources, standin_resources
from wasmxds.translate.routes import base_name, override_name, override_resources
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.xds.snapshot import Snapshot

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ENABLED: dict[str, Any] = {"config": {}}
DISABLED: dict[str, Any] = {"disabled": True}


def scoped(name: str, annotations: dict[str, str], **spec: Any) -> WasmPlugin:
    return dataclasses.replace(make_plugin(name, **spec), annotations=annotations)


def two_host_template(*, rds: bool = False, api_entries: dict[str, Any] | None = None):
    def route(name: str, prefix: str) -> dict[str, Any]:
        return {"name": name, "match": {"prefix": prefix}, "route": {"cluster": "up"}}

    api: dict[str, Any] = {
        "name": "api",
        "domains": ["api.example.com"],
        "routes": [route("checkout", "/checkout"), route("catalog", "/")],
    }
    if api_entries:
        api["typed_per_filter_config"] = api_entries
    web = {"name": "web", "domains": ["*"], "routes": [route("web-checkout", "/checkout")]}
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "main",
        "http_filters": [{"name": "router", "typed_config": ROUTER}],
    }
    if rds:
        hcm["rds"] = {"route_config_name": "r", "config_source": {"ads": {}}}
    else:
        hcm["route_config"] = {"virtual_hosts": [api, web]}
    listener = {
        "name": "main",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return _template(listener, Direction.GATEWAY)


def hcm_of(template: ListenerTemplate, *plugins: WasmPlugin) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    build(template, *plugins).filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def per_route(hcm: hcm_pb2.HttpConnectionManager) -> dict[str, dict[str, Any]]:
    """Route name → its typed_per_filter_config as FilterConfig dicts."""
    result = {}
    for vhost in hcm.route_config.virtual_hosts:
        for route in vhost.routes:
            entries = {}
            for name, packed in route.typed_per_filter_config.items():
                config = route_components_pb2.FilterConfig()
                assert packed.Unpack(config)
                entries[name] = json_format.MessageToDict(config, preserving_proto_field_name=True)
            result[route.name] = entries
    return result


SCOPED = {
    "scope.wasmxds.io/hosts": "api.example.com",
    "scope.wasmxds.io/override.strict.path-prefixes": "/checkout",
    "scope.wasmxds.io/override.strict.config": '{"limit": 5, "mode": null}',
}


def test_scoped_plugin_is_disabled_by_default_and_enabled_per_route():
    """Host scope enables the plugin on that host's routes; the override replaces it on its own."""
    hcm = hcm_of(
        two_host_template(),
        scoped("s", SCOPED),
        scoped("r", {"scope.wasmxds.io/routes": "web-checkout"}),
        make_plugin("plain"),
    )
    filters = [(f.name, f.disabled) for f in hcm.http_filters]
    # Ordered by name (equal phase, priority and age); each override right after its plugin.
    assert filters == [
        ("default.plain", False),
        ("default.r", True),
        ("default.s", True),
        ("default.s~strict", True),
        ("router", False),
    ]
    assert per_route(hcm) == {
        "checkout": {"default.s~strict": ENABLED},
        "catalog": {"default.s": ENABLED},
        "web-checkout": {"default.r": ENABLED},
    }


def test_override_of_an_unscoped_plugin_disables_the_plugin_where_it_runs():
    """With overrides only, the plugin runs everywhere except where an override runs instead."""
    annotations = {k: v for k, v in SCOPED.items() if "override" in k}
    hcm = hcm_of(two_host_template(), scoped("s", annotations))
    assert [(f.name, f.disabled) for f in hcm.http_filters][:2] == [
        ("default.s", False),
        ("default.s~strict", True),
    ]
    both = {"default.s~strict": ENABLED, "default.s": DISABLED}
    assert per_route(hcm) == {"checkout": both, "catalog": {}, "web-checkout": both}


def test_the_templates_own_entries_win():
    """A virtual host that already names the filter is left to the template."""
    template = two_host_template(
        api_entries={
            "default.s": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        }
    )
    hcm = hcm_of(template, scoped("s", {"scope.wasmxds.io/hosts": "api.example.com"}))
    assert per_route(hcm) == {"checkout": {}, "catalog": {}, "web-checkout": {}}


def test_rds_routes_are_left_to_their_owner():
    """An HCM with RDS gets the disabled filter; the RDS routes must enable it themselves."""
    hcm = hcm_of(two_host_template(rds=True), scoped("s", SCOPED))
    assert [(f.name, f.disabled) for f in hcm.http_filters][:2] == [
        ("default.s", True),
        ("default.s~strict", True),
    ]
    assert not hcm.HasField("route_config")


def configuration(config: extension_pb2.TypedExtensionConfig) -> Any:
    wasm, text = http_wasm_pb2.Wasm(), wrappers_pb2.StringValue()
    assert config.typed_config.Unpack(wasm)
    assert wasm.config.configuration.Unpack(text)
    return json.loads(text.value)


def test_override_resources_merge_the_patch_and_stand_ins_are_renamed():
    """The override's ECDS resource is the plugin's filter with the patch merged (RFC 7386)."""
    plugin = scoped("s", SCOPED, pluginConfig={"mode": "x", "limit": 1, "keep": True})
    source = plugin_resources(plugin, Ready(module_for(plugin)), DELIVERY, runtime="v8")
    ((name, derived),) = override_resources(source).items()
    assert name == override_name("default.s", "strict") == "default.s~strict"
    assert base_name(name) == "default.s"
    assert derived.config.name == name
    assert configuration(derived.config) == {"limit": 5, "keep": True}
    assert configuration(source.config) == {"mode": "x", "limit": 1, "keep": True}
    failed = standin_resources(plugin, "module gone")
    (standin,) = override_resources(failed).values()
    assert standin.config.name == name
    assert standin.config.typed_config == failed.config.typed_config


def test_snapshot_serves_overrides_wherever_the_plugin_applies():
    """Override resources are in the snapshot and follow their plugin's selector."""
    plugin = scoped("s", SCOPED, selector={"matchLabels": {"app": "a"}})
    source = plugin_resources(plugin, Ready(module_for(plugin)), DELIVERY, runtime="v8")
    snap = build_snapshot([source], pending=(), previous=Snapshot.empty(ROOT))
    assert set(snap.ecds) == {"default.s", "default.s~strict"}
    selected, other = make_node("n1", app="a"), make_node("n2", app="b")
    assert snap.ecds_for(selected, "default.s~strict") is snap.ecds["default.s~strict"].active
    assert snap.ecds_for(other, "default.s~strict") is snap.ecds["default.s~strict"].noop
    again = build_snapshot([source], pending=(), previous=snap)
    assert again.ecds["default.s~strict"].active is snap.ecds["default.s~strict"].active


def test_only_scope_changes_touch_listeners():
    """Editing an override's config changes its ECDS resource only; editing a scope, listeners."""

    def snapshot(annotations: dict[str, str]) -> Snapshot:
        plugin = scoped("s", annotations)
        source = plugin_resources(plugin, Ready(module_for(plugin)), DELIVERY, runtime="v8")
        return build_snapshot([source], pending=(), previous=Snapshot.empty(ROOT))

    base = snapshot(SCOPED)
    patched = snapshot({**SCOPED, "scope.wasmxds.io/override.strict.config": '{"limit": 6}'})
    rescoped = snapshot({**SCOPED, "scope.wasmxds.io/hosts": "other.example.com"})
    assert patched.listeners_version == base.listeners_version
    assert patched.ecds["default.s~strict"].active.version != (
        base.ecds["default.s~strict"].active.version
    )
    assert patched.ecds["default.s"].active.version == base.ecds["default.s"].active.version
    assert rescoped.listeners_version != base.listeners_version
