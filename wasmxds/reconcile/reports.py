"""Per plugin: where its module stands and which proxies hold what is served for it.

Shared by the admin pages and status write-back, so both count the same way:
a proxy "runs" a plugin when it holds exactly the resource the current
snapshot serves under the plugin's name (the filter, or its stand-in) — which
in listener mode is also how Envoy fetches every filter its listeners name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from wasmxds.api.objects import ObjectKey, Problem
from wasmxds.modules.types import Failed, Ready
from wasmxds.reconcile.kubestatus import ModuleReadiness, PluginReport, RolloutCondition
from wasmxds.reconcile.reconciler import PluginStatus, Serving
from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.types import ECDS

__all__ = ["INLINE_TOO_LARGE_ACTION", "holders", "plugin_reports"]

# What to do about a fetched module that inline delivery cannot carry (nothing retries it).
INLINE_TOO_LARGE_ACTION = (
    "nothing retries this: raise --inline-max-size above the module's size, "
    "or serve with --module-delivery local or remote"
)


def holders(resource: PreparedResource, sessions: Iterable[Session]) -> list[Session]:
    """The sessions whose proxy holds exactly ``resource`` (sent to it, and not rejected)."""
    found = []
    for session in sessions:
        state = session.protocol.types.get(ECDS)
        if state is not None and state.version_held(resource.name) == resource.version:
            found.append(session)
    return found


def plugin_reports(
    status: Mapping[ObjectKey, PluginStatus],
    sessions: Iterable[Session],
    snapshot: Snapshot,
    rollout: Callable[[ObjectKey], RolloutCondition | None] = lambda key: None,
    superseded: Mapping[ObjectKey, Problem] | None = None,
) -> dict[ObjectKey, PluginReport]:
    """``rollout``: a plugin's staged-rollout condition, if it has one; ``superseded``:
    the WasmPlugins not served because a TrafficExtension of their name is, and why."""
    reports = _module_reports(status, sessions, snapshot)
    for key, problem in (superseded or {}).items():
        # Not served, so no module stands for it: no module fetched, no proxy runs it.
        reports[key] = PluginReport(ModuleReadiness.UNAVAILABLE, superseded=problem.message)
    for key, report in reports.items():
        condition = rollout(key)
        if condition is not None:
            reports[key] = dataclasses.replace(report, rollout=condition)
    return reports


def _module_reports(
    status: Mapping[ObjectKey, PluginStatus], sessions: Iterable[Session], snapshot: Snapshot
) -> dict[ObjectKey, PluginReport]:
    sessions = list(sessions)
    reports: dict[ObjectKey, PluginReport] = {}
    for key, entry in status.items():
        served = snapshot.ecds.get(entry.plugin.resource_name)
        proxies = 0 if served is None else len(holders(served.active, sessions))
        outcome = entry.outcome
        last_good = entry.serving is Serving.LAST_GOOD
        standin = entry.serving is Serving.STANDIN
        if entry.config is not None and entry.config.refusal is not None:
            reports[key] = PluginReport(
                ModuleReadiness.UNAVAILABLE,
                entry.config.error,
                proxies,
                last_good=last_good,
                standin=standin,
                config_refusal=entry.config.refusal.value,
            )
        elif isinstance(outcome, Ready) and entry.unavailable:
            # Fetched, but not servable as it is (too large for inline delivery, the
            # only such case): no retry changes that, the user has to.
            reports[key] = PluginReport(
                ModuleReadiness.UNAVAILABLE,
                entry.unavailable,
                proxies,
                last_good=last_good,
                standin=standin,
                action=INLINE_TOO_LARGE_ACTION,
            )
        elif isinstance(outcome, Ready):
            stale = (
                f"re-pull failed, serving the earlier copy: {outcome.stale}"
                if outcome.stale
                else ""
            )
            reports[key] = PluginReport(ModuleReadiness.FETCHED, stale, proxies)
        elif isinstance(outcome, Failed):
            reports[key] = PluginReport(
                ModuleReadiness.UNAVAILABLE,
                str(outcome.error),
                proxies,
                last_good=last_good,
                standin=standin,
                reason=outcome.error.reason,
            )
        else:
            reports[key] = PluginReport(
                ModuleReadiness.PENDING, "", proxies, last_good=last_good, standin=standin
            )
    return reports
