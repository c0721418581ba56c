"""A module the pre-flight check refused gets its own Ready condition reason: ModuleIncompatible."""

from __future__ import annotations

from pathlib import Path

from tests.factories import make_plugin
from tests.xds.helpers import snapshot_of
from wasmxds.errors import ModuleIncompatibleError
from wasmxds.modules.types import Failed
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.reconcile.kubestatus import ObservedObject, desired_status
from wasmxds.reconcile.reports import plugin_reports
from wasmxds.translate.plugins import LocalDelivery, plugin_resources


def test_refused_module_condition_names_the_import() -> None:
    """Ready=False, reason ModuleIncompatible, and the sentence naming what is wrong."""
    plugin = make_plugin("magic")
    error = ModuleIncompatibleError(
        "the module cannot run in Envoy: it imports env.proxy_get_magic, which Envoy's"
        " proxy-wasm host does not provide",
        url="http://m/magic.wasm",
    )
    failure = Failed(error, attempts=2, next_retry_in=4.0)
    delivery = LocalDelivery(Path("/c"), Path("/c"))
    resources = plugin_resources(plugin, failure, delivery, runtime="v8")
    status = {plugin.key: PluginStatus(plugin, module_request(plugin), failure, resources)}
    snap = snapshot_of(plugin, failed={plugin.resource_name: failure})
    report = plugin_reports(status, [], snap)[plugin.key]
    patch, _ = desired_status(ObservedObject(plugin.key, generation=2), report)
    (condition,) = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "ModuleIncompatible")
    assert "imports env.proxy_get_magic" in condition["message"]
    assert "failStrategy stand-in" in condition["message"]
