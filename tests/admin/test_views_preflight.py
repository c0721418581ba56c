"""/debug/plugins shows what the pre-flight check found: capabilities, type warnings, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.factories import make_plugin
from tests.xds.helpers import snapshot_of
from wasmxds.admin.views import plugins_view
from wasmxds.api.objects import WasmPlugin
from wasmxds.errors import ModuleIncompatibleError
from wasmxds.modules.types import Failed, Module, ModuleAbi, Ready
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.translate.plugins import LocalDelivery, plugin_resources

NETWORK_ONLY = ModuleAbi("0.2.1", ("proxy_on_context_create", "proxy_on_new_connection"))
BOTH = ModuleAbi("0.2.1", ("proxy_on_new_connection", "proxy_on_request_headers"))


def view_of(plugin: WasmPlugin, outcome: Ready | Failed) -> dict[str, Any]:
    delivery = LocalDelivery(Path("/c"), Path("/c"))
    status = PluginStatus(
        plugin,
        module_request(plugin),
        outcome,
        plugin_resources(plugin, outcome, delivery, runtime="v8"),
    )
    failed = {plugin.resource_name: outcome} if isinstance(outcome, Failed) else {}
    snap = snapshot_of(plugin, failed=failed)
    (view,) = plugins_view({plugin.key: status}, snap, [], "local")
    return view


def module(abi: ModuleAbi | None) -> Module:
    return Module("ab" * 32, Path("/c/modules/sha256/x.wasm"), 1234, abi)


def test_capabilities_and_a_type_mismatch_are_shown() -> None:
    """An HTTP plugin whose module has only network callbacks: served, with a warning."""
    view = view_of(make_plugin("a"), Ready(module(NETWORK_ONLY)))
    assert view["module"]["implements"] == {
        "abi": "0.2.1",
        "http": False,
        "network": True,
        "callbacks": ["proxy_on_context_create", "proxy_on_new_connection"],
    }
    assert view["type"] == "HTTP"
    assert view["type_warning"].startswith("spec.type: HTTP, but the module implements network")
    assert view["served"] == "filter"


def test_no_warning_when_the_module_fits_the_type() -> None:
    """A module with both kinds of callbacks fits HTTP and NETWORK plugins alike."""
    for plugin in (make_plugin("a"), make_plugin("n", type="NETWORK")):
        view = view_of(plugin, Ready(module(BOTH)))
        assert view["type_warning"] is None
        assert view["module"]["implements"]["http"] is True


def test_unchecked_modules_show_no_capabilities() -> None:
    """With --preflight off nothing is known about the module, and nothing is claimed."""
    view = view_of(make_plugin("a"), Ready(module(None)))
    assert view["module"]["implements"] is None
    assert view["type_warning"] is None


def test_a_refused_module_shows_its_reason_and_the_standin() -> None:
    """module_incompatible is the failure's reason; the plugin gets its stand-in."""
    error = ModuleIncompatibleError(
        "the module cannot run in Envoy: it exports no proxy-wasm ABI version function",
        url="http://m/a.wasm",
    )
    view = view_of(make_plugin("a"), Failed(error, attempts=1, next_retry_in=1.0))
    assert view["module"]["state"] == "failed"
    assert view["module"]["reason"] == "module_incompatible"
    assert "exports no proxy-wasm ABI version function" in view["module"]["error"]
    assert view["served"] == "stand-in"
    assert view["type_warning"] is None
