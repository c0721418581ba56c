"""Per-plugin reports for status write-back: module state and the proxies that run the plugin."""

from __future__ import annotations

from typing import Any

from tests.factories import make_node, make_plugin
from tests.xds.helpers import maybe_response, request, snapshot_of
from wasmxds.errors import FetchError, SignatureInvalidError
from wasmxds.modules.types import Failed, LocalFile, ModuleRequest, Pending, Ready
from wasmxds.reconcile import PluginStatus
from wasmxds.reconcile.kubestatus import ModuleReadiness
from wasmxds.reconcile.reports import plugin_reports
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream


def _holding(node: NodeInfo, snapshot: Snapshot, *names: str) -> Session:
    """A session whose proxy was sent ``names`` from ``snapshot``."""
    stream = SotwStream(node)
    stream.handle(request(*names))
    maybe_response(stream, snapshot)
    return Session(id=1, node=node, peer="p", protocol=stream, service="ads")


def status(plugin: Any, outcome: Any) -> PluginStatus:
    return PluginStatus(plugin, ModuleRequest(url=plugin.spec.url), outcome, None)


def test_states_and_counts():
    """A proxy counts when it holds what is served for the plugin, filter or stand-in."""
    fetched = make_plugin("fetched", selector={"matchLabels": {"app": "web"}})
    failed = make_plugin("failed")
    pending = make_plugin("pending", namespace="other")
    failure = Failed(FetchError("HTTP 404 from x"), 2, 1.0)
    snapshot = snapshot_of(
        fetched, failed, pending=("other.pending",), failed={"default.failed": failure}
    )
    sessions = [
        _holding(make_node("a", app="web"), snapshot, "default.fetched", "default.failed"),
        _holding(make_node("b", app="db"), snapshot, "default.fetched"),  # holds the no-op
        _holding(make_node("d", "other"), snapshot, "other.pending"),  # nothing to hold yet
    ]
    reports = plugin_reports(
        {
            fetched.key: status(fetched, Ready(LocalFile("/x.wasm"))),
            failed.key: status(failed, failure),
            pending.key: status(pending, Pending()),
        },
        sessions,
        snapshot,
    )
    assert reports[fetched.key].state is ModuleReadiness.FETCHED
    assert reports[fetched.key].proxies == 1
    assert (reports[failed.key].state, reports[failed.key].proxies) == (
        ModuleReadiness.UNAVAILABLE,
        1,
    )
    assert reports[failed.key].reason == "fetch_failed"
    assert "HTTP 404" in reports[failed.key].error
    assert (reports[pending.key].state, reports[pending.key].proxies) == (
        ModuleReadiness.PENDING,
        0,
    )


def test_stale_module_is_noted():
    """A module served from an earlier copy after a failed re-pull says so."""
    plugin = make_plugin("one")
    outcome = Ready(LocalFile("/x.wasm"), stale=FetchError("registry down"))
    [report] = plugin_reports({plugin.key: status(plugin, outcome)}, [], snapshot_of()).values()
    assert report.state is ModuleReadiness.FETCHED
    assert "registry down" in report.error


def test_refusal_reason_reaches_the_report():
    """A signature refusal carries its reason, so status can say SignatureInvalid."""
    plugin = make_plugin("signed")
    failure = Failed(SignatureInvalidError("not signed", url="oci://r/p:v1"), 1, 5.0)
    snapshot = snapshot_of(plugin, failed={"default.signed": failure})
    reports = plugin_reports({plugin.key: status(plugin, failure)}, [], snapshot)
    assert reports[plugin.key].reason == "signature_invalid"
    assert reports[plugin.key].error == "oci://r/p:v1: not signed"
