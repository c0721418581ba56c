"""Per-plugin reports for status write-back: module state and the proxies that run the plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from tests.factories import make_node, make_plugin
from wasmxds.errors import FetchError
from wasmxds.modules.types import Failed, LocalFile, ModuleRequest, Pending, Ready
from wasmxds.reconcile import PluginStatus
from wasmxds.reports import plugin_reports
from wasmxds.sources.kube.status import ModuleState
from wasmxds.translate.node import NodeInfo


@dataclass
class FakeSession:
    """What the report reads of an xDS session: its node and what it subscribes to."""

    node: NodeInfo
    names: frozenset[str] = frozenset()
    wildcard: bool = False

    def ecds_names(self) -> frozenset[str]:
        return self.names

    def watches_wildcard(self) -> bool:
        return self.wildcard


def status(plugin: Any, outcome: Any) -> PluginStatus:
    return PluginStatus(plugin, ModuleRequest(url=plugin.spec.url), outcome, None)


def test_states_and_counts():
    """Proxies count when the plugin applies to their node and they take its resource."""
    fetched = make_plugin("fetched", selector={"matchLabels": {"app": "web"}})
    failed = make_plugin("failed")
    pending = make_plugin("pending", namespace="other")
    sessions = [
        FakeSession(make_node("a", app="web"), frozenset({"default.fetched", "default.failed"})),
        FakeSession(make_node("b", app="db"), frozenset({"default.fetched"})),  # selector misses
        FakeSession(make_node("c"), wildcard=True),  # listener mode: takes everything
        FakeSession(make_node("d", "other"), frozenset({"other.pending"})),
    ]
    reports = plugin_reports(
        {
            fetched.key: status(fetched, Ready(LocalFile("/x.wasm"))),
            failed.key: status(failed, Failed(FetchError("HTTP 404 from x"), 2, 1.0)),
            pending.key: status(pending, Pending()),
        },
        cast(Any, sessions),
        "istio-system",
    )
    assert reports[fetched.key].state is ModuleState.FETCHED
    assert reports[fetched.key].proxies == 1
    assert (reports[failed.key].state, reports[failed.key].proxies) == (ModuleState.UNAVAILABLE, 2)
    assert "HTTP 404" in reports[failed.key].error
    assert (reports[pending.key].state, reports[pending.key].proxies) == (ModuleState.PENDING, 1)


def test_stale_module_is_noted():
    """A module served from an earlier copy after a failed re-pull says so."""
    plugin = make_plugin("one")
    outcome = Ready(LocalFile("/x.wasm"), stale=FetchError("registry down"))
    [report] = plugin_reports({plugin.key: status(plugin, outcome)}, [], "istio-system").values()
    assert report.state is ModuleState.FETCHED
    assert "registry down" in report.error
