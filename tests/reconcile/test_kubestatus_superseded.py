"""Status of a WasmPlugin that a TrafficExtension of its namespace/name supersedes."""

from __future__ import annotations

from tests.factories import make_plugin
from tests.translate.test_trafficextension import extension
from tests.xds.helpers import snapshot_of
from wasmxds.api.objects import ObjectKey
from wasmxds.api.trafficextension import supersede
from wasmxds.reconcile.kubestatus import ObservedObject, desired_status
from wasmxds.reconcile.reports import plugin_reports


def test_superseded_wasmplugin_is_ready_false_with_reason_superseded() -> None:
    """Ready=False, reason Superseded, the warning as message; 0 proxies; others untouched."""
    wasmplugin = make_plugin("w")
    lua = extension("w", "lua: {inlineCode: x}\n")
    kept, superseded = supersede({wasmplugin.key: wasmplugin, lua.key: lua})
    assert list(superseded) == [ObjectKey("default", "w")]
    reports = plugin_reports({}, [], snapshot_of(), superseded=superseded)
    assert list(reports) == [wasmplugin.key]
    patch, _ = desired_status(ObservedObject(wasmplugin.key, generation=4), reports[wasmplugin.key])
    (condition,) = patch["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready",
        "False",
        "Superseded",
    )
    assert condition["message"] == superseded[wasmplugin.key].message
    assert condition["message"].startswith("WasmPlugin default/w is not served: TrafficExtension")
    assert condition["observedGeneration"] == 4
    assert patch["status"]["proxies"] == 0
    # Without the rule's output, nothing is reported for it (the default).
    assert plugin_reports({}, [], snapshot_of()) == {}
    assert [str(key) for key in kept] == ["TrafficExtension default/w"]
