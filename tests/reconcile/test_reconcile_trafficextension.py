"""Reconciling TrafficExtensions: Lua needs no module, Wasm ones fetch like WasmPlugins."""

from __future__ import annotations

from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from structlog.testing import capture_logs

from tests.factories import make_plugin
from tests.reconcile.test_reconcile import NODE, Harness
from tests.translate.test_trafficextension import extension
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import ModuleError
from wasmxds.modules.types import Failed
from wasmxds.reconcile.reconciler import Reconciler, Serving
from wasmxds.sources.state import SourceState
from wasmxds.translate.filters import StandIn
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.translate.typeurls import HTTP_LUA, HTTP_RBAC, HTTP_WASM
from wasmxds.xds.snapshot import Snapshot


def served_code(h: Harness, name: str) -> str:
    resource = h.snapshot.ecds_for(NODE, name)
    assert resource is not None
    config = resource.message
    assert isinstance(config, extension_pb2.TypedExtensionConfig)
    assert config.typed_config.type_url == HTTP_LUA
    lua = lua_pb2.Lua()
    config.typed_config.Unpack(lua)
    return str(lua.default_source_code.inline_string)


async def test_lua_is_served_at_once_without_a_module_request() -> None:
    """A Lua extension is served on the first reconcile and asks the module stage for nothing."""
    h = Harness(extension("hdr", "lua: {inlineCode: 'function envoy_on_request(h) end'}\n"))
    await h.reconciler.reconcile()
    assert served_code(h, "default.hdr") == "function envoy_on_request(h) end"
    assert h.modules.retained == []
    (status,) = h.reconciler.status.values()
    assert status.serving is Serving.FILTER


async def test_lua_edit_flows_and_wasm_extension_waits_for_its_module() -> None:
    """An edited Lua body replaces the old one; a Wasm extension is a WasmPlugin to the cache."""
    h = Harness(extension("hdr", "lua: {inlineCode: v1}\n"))
    await h.reconciler.reconcile()
    h.set(
        extension("hdr", "lua: {inlineCode: v2}\n"),
        extension("w", "wasm: {url: 'http://m/w.wasm'}\n"),
    )
    await h.reconciler.reconcile()
    assert served_code(h, "default.hdr") == "v2"
    assert [r.url for r in h.modules.retained] == ["http://m/w.wasm"]
    h.modules.ready("http://m/w.wasm", "ab" * 32)
    await h.reconciler.reconcile()
    resource = h.snapshot.ecds_for(NODE, "default.w")
    assert resource is not None
    assert isinstance(resource.message, extension_pb2.TypedExtensionConfig)
    assert resource.message.typed_config.type_url == HTTP_WASM


async def test_wasm_extension_gets_the_fail_strategy_standin_then_keeps_last_good() -> None:
    """A Wasm extension's failing module: its stand-in first, its last good after an edit."""
    spec = "wasm: {{url: 'http://m/{0}.wasm', failStrategy: FAIL_OPEN}}\n"
    h = Harness(extension("w", spec.format("v1")))
    h.modules.outcomes["http://m/v1.wasm"] = Failed(ModuleError("down"), 1, 1.0)
    await h.reconciler.reconcile()
    name = "default.w"
    assert standin_of(h, name) == StandIn.ALLOW_ALL
    h.modules.ready("http://m/v1.wasm", "cd" * 32)
    await h.reconciler.reconcile()
    h.set(extension("w", spec.format("v2")))
    h.modules.outcomes["http://m/v2.wasm"] = Failed(ModuleError("down"), 1, 1.0)
    await h.reconciler.reconcile()
    (status,) = h.reconciler.status.values()
    assert status.serving is Serving.LAST_GOOD
    assert "cdcd" in h.filename(name)


def standin_of(h: Harness, name: str) -> StandIn:
    resource = h.snapshot.ecds_for(NODE, name)
    assert resource is not None
    config = resource.message
    assert isinstance(config, extension_pb2.TypedExtensionConfig)
    assert config.typed_config.type_url == HTTP_RBAC
    rbac = rbac_pb2.RBAC()
    config.typed_config.Unpack(rbac)
    return StandIn(rbac.rules_stat_prefix)


async def test_a_trafficextension_supersedes_a_wasmplugin_from_another_source() -> None:
    """Same ns/name from two sources: <ns>.<name> is the TrafficExtension's, the other warned."""
    h = Harness()

    def publish(snapshot: Snapshot) -> int:
        h.published.append(snapshot)
        return 0

    wasmplugin = make_plugin("w", url="http://m/w.wasm")
    lua = extension("w", "lua: {inlineCode: te}\n")
    wasmplugins = SourceState({wasmplugin.key: wasmplugin})
    extensions = SourceState({lua.key: lua})
    h.reconciler = Reconciler(
        sources=[lambda: wasmplugins, lambda: extensions],
        resolver=h.modules,
        delivery=LocalDelivery(Path("/cache"), Path("/cache")),
        runtime="envoy.wasm.runtime.v8",
        publish=publish,
        root_namespace="istio-system",
    )
    with capture_logs() as logs:
        await h.reconciler.reconcile()
        await h.reconciler.reconcile()
    assert served_code(h, "default.w") == "te"
    assert h.modules.retained == []  # the WasmPlugin's module is not even fetched
    assert [str(key) for key in h.reconciler.status] == ["TrafficExtension default/w"]
    warning = (
        "WasmPlugin default/w is not served: TrafficExtension default/w (at w.yaml:1) has the"
        " same resource name default.w and supersedes it, as in Istio 1.30 (which serves both"
        " by renaming the WasmPlugin); rename one of them or delete the WasmPlugin"
    )
    assert [p.message for p in h.reconciler.problems] == [warning]
    assert [str(p.severity) for p in h.reconciler.problems] == ["warning"]
    assert list(h.reconciler.superseded) == [ObjectKey("default", "w")]
    # Logged once per change, not on every pass.
    assert [e["error"] for e in logs if e["event"] == "reconcile.superseded"] == [warning]

    extensions = SourceState({})
    await h.reconciler.reconcile()
    assert h.reconciler.problems == ()
    assert h.reconciler.superseded == {}
    assert [r.url for r in h.modules.retained] == ["http://m/w.wasm"]
    # Make before break: the name keeps its filter until the WasmPlugin's module is here.
    assert served_code(h, "default.w") == "te"
    h.modules.ready("http://m/w.wasm", "ef" * 32)
    await h.reconciler.reconcile()
    assert "efef" in h.filename("default.w")
