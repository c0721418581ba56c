"""Per plugin: where its module stands and how many proxies run it (for status write-back).

The module state comes from the last reconcile; the count is of the connected
xDS streams whose node the plugin applies to and that take its resource: they
subscribe to its ECDS name, or receive whole listeners (listener mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wasmxds.api.objects import ObjectKey
from wasmxds.modules.types import Failed, Ready
from wasmxds.reconcile import PluginStatus
from wasmxds.sources.kube.status import ModuleState, PluginReport
from wasmxds.translate.targeting import applies_to
from wasmxds.xds.server import Session

__all__ = ["plugin_reports"]


def plugin_reports(
    status: Mapping[ObjectKey, PluginStatus], sessions: Iterable[Session], root_namespace: str
) -> dict[ObjectKey, PluginReport]:
    streams = [(session, session.ecds_names(), session.watches_wildcard()) for session in sessions]
    reports: dict[ObjectKey, PluginReport] = {}
    for key, entry in status.items():
        name = entry.plugin.resource_name
        proxies = sum(
            1
            for session, names, wildcard in streams
            if (wildcard or name in names)
            and applies_to(entry.plugin, session.node, root_namespace)
        )
        outcome = entry.outcome
        if isinstance(outcome, Ready):
            stale = (
                f"re-pull failed, serving the earlier copy: {outcome.stale}"
                if outcome.stale
                else ""
            )
            reports[key] = PluginReport(ModuleState.FETCHED, stale, proxies)
        elif isinstance(outcome, Failed):
            reports[key] = PluginReport(ModuleState.UNAVAILABLE, str(outcome.error), proxies)
        else:
            reports[key] = PluginReport(ModuleState.PENDING, "", proxies)
    return reports
