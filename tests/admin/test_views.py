"""The debug views: sync states, per-plugin status and config dumps, built without sockets."""

from __future__ import annotations

from pathlib import Path

from tests.factories import make_node, make_plugin
from tests.xds.helpers import ack, nack, next_response, request, snapshot_of
from wasmxds.admin.views import config_dump, plugins_view, sync_state
from wasmxds.errors import FetchError
from wasmxds.modules.types import Failed, Module, Ready
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.translate.plugins import LocalDelivery, plugin_resources
from wasmxds.xds.server import Session
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS

A = make_plugin("a", url="http://m/a.wasm")


def test_sync_state_follows_the_protocol():
    """NOT SENT → STALE (in flight) → SYNCED on ACK; NACKED after a rejection."""
    snap = snapshot_of(A)
    stream = SotwStream(make_node())
    stream.handle(request("default.a"))
    assert sync_state(stream.types[ECDS]) == "NOT SENT"
    response = next_response(stream, snap)
    assert sync_state(stream.types[ECDS]) == "STALE"
    ack(stream, response, "default.a")
    assert sync_state(stream.types[ECDS]) == "SYNCED"
    changed = snapshot_of(make_plugin("a", url="http://m/b.wasm"), previous=snap)
    rejected = next_response(stream, changed)
    nack(stream, rejected, "default.a")
    assert sync_state(stream.types[ECDS]) == "NACKED"


def _session(node_id: str, stream: SotwStream) -> Session:
    return Session(id=1, node=stream.node, peer="ipv4:127.0.0.1:1", protocol=stream, service="ads")


def test_plugins_view_reports_module_standin_and_proxies():
    """Ready plugins list digest and proxies; failed ones their stand-in and why."""
    failed_plugin = make_plugin("b", url="http://m/missing.wasm")
    module = Module("ab" * 32, Path("/c/modules/sha256/x.wasm"), 1234)
    failure = Failed(
        FetchError("http://m/missing.wasm: 404 Not Found"), attempts=3, next_retry_in=8.0
    )
    delivery = LocalDelivery(Path("/c"), Path("/c"))
    statuses = {
        A.key: PluginStatus(
            A,
            module_request(A),
            Ready(module),
            plugin_resources(A, Ready(module), delivery, runtime="v8"),
        ),
        failed_plugin.key: PluginStatus(
            failed_plugin,
            module_request(failed_plugin),
            failure,
            plugin_resources(failed_plugin, failure, delivery, runtime="v8"),
        ),
    }
    snap = snapshot_of(A, failed_plugin, failed={"default.b": failure})
    stream = SotwStream(make_node("edge-1"))
    stream.handle(request("default.a"))
    ack(stream, next_response(stream, snap), "default.a")
    view = {
        p["name"]: p for p in plugins_view(statuses, snap, [_session("edge-1", stream)], "local")
    }
    ready, failed = view["default/a"], view["default/b"]
    assert (ready["module"]["state"], ready["module"]["digest"], ready["module"]["size"]) == (
        "ready",
        "ab" * 32,
        1234,
    )
    assert ready["served"] == "filter"
    assert ready["proxies"] == ["edge-1"]
    assert failed["served"] == "stand-in"
    assert failed["standin"]["kind"] == "deny-all"
    assert "404" in failed["standin"]["reason"]
    assert failed["module"]["attempts"] == 3
    assert failed["proxies"] == []


def test_config_dump_for_a_hypothetical_node():
    """Without a connected proxy, the dump shows every plugin that would apply to that identity."""
    selective = make_plugin("web", url="http://m/w.wasm", selector={"matchLabels": {"app": "web"}})
    snap = snapshot_of(A, selective)
    web = config_dump(snap, make_node("x", app="web"), None)
    api = config_dump(snap, make_node("y", app="api"), None)
    assert [r["name"] for r in web["resources"]["ECDS"]] == ["default.a", "default.web"]
    assert [r["name"] for r in api["resources"]["ECDS"]] == ["default.a"]
    assert web["resources"]["LDS"] == []
