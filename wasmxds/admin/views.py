"""What the debug endpoints show, as plain JSON-ready data built from live state.

Kept apart from the HTTP layer so it is unit-tested without sockets. Nothing
here may expose a credential: module URLs are always the redacted form, and
pull secrets never reach proxies' resources in the first place.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from wasmxds.api.objects import ObjectKey
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.types import Failed, LocalFile, Module, Pending, Ready
from wasmxds.reconcile import PluginStatus, Serving, module_request
from wasmxds.reconcile.reports import INLINE_TOO_LARGE_ACTION, holders
from wasmxds.xds.delta import DeltaTypeState
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import TypeState
from wasmxds.xds.types import CLUSTER, ECDS, LISTENER

__all__ = ["SHORT_TYPES", "config_dump", "plugins_view", "sync_state", "syncz"]

SHORT_TYPES = {ECDS: "ECDS", LISTENER: "LDS", CLUSTER: "CDS"}


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


def sync_state(state: TypeState | DeltaTypeState) -> str:
    """SYNCED, STALE (a response is unanswered or unacknowledged), NACKED, or NOT SENT."""
    if not state.last_nonce:
        return "NOT SENT"
    if state.last_outcome == "nack" and not state.in_flight:
        return "NACKED"
    if state.in_flight or state.acked_version != state.sent_version:
        return "STALE"
    return "SYNCED"


def _held(state: TypeState | DeltaTypeState) -> dict[str, str]:
    if isinstance(state, TypeState):
        return {name: resource.version for name, resource in state.held.items()}
    return {name: version for name, version in state.sent.items() if version}


def _type_view(state: TypeState | DeltaTypeState) -> dict[str, Any]:
    wildcard = state.wildcard
    return {
        "type_url": state.type_url,
        "subscribed": "*" if wildcard else sorted(state.names),
        "resources": _held(state),
        "version_sent": state.sent_version or None,
        "version_acked": state.acked_version or None,
        "nacks": state.nacks,
        "last_nack": state.last_error or None,
        "state": sync_state(state),
    }


def _types(session: Session) -> list[tuple[str, TypeState | DeltaTypeState]]:
    types: Mapping[str, TypeState | DeltaTypeState] = session.protocol.types
    return sorted(types.items())


def syncz(sessions: Iterable[Session]) -> list[dict[str, Any]]:
    """Per connected proxy: identity, connection, and per type what it was sent and acknowledged."""
    out = []
    for session in sorted(sessions, key=lambda s: (s.node.id, s.id)):
        node = session.node
        out.append(
            {
                "node": node.id,
                "cluster": node.cluster,
                "namespace": node.namespace,
                "labels": dict(node.labels),
                "peer": session.peer,
                "identity": session.identity or None,
                # The SPIFFE ID the namespace was proven by; "metadata" when it is a claim.
                "verified_identity": str(session.verified) if session.verified else "metadata",
                "flavour": session.flavour,
                "service": session.service,
                "connected_since": _iso(session.connected_at),
                "types": {
                    SHORT_TYPES.get(type_url, type_url): _type_view(state)
                    for type_url, state in _types(session)
                },
            }
        )
    return out


def _module_view(status: PluginStatus) -> dict[str, Any]:
    outcome = status.outcome
    request = status.request
    view: dict[str, Any] = {"url": request.display_url, "sha256": request.sha256 or None}
    match outcome:
        case Ready(module=Module() as module, stale=stale):
            view |= {
                "state": "stale" if stale else "ready",
                "digest": module.digest,
                "size": module.size,
                "error": str(stale) if stale else None,
            }
        case Ready(module=LocalFile() as local):
            view |= {"state": "ready", "file": local.path, "error": None}
        case Failed(error=error, attempts=attempts, next_retry_in=retry):
            view |= {
                "state": "failed",
                "error": str(error),
                "reason": error.reason,
                "attempts": attempts,
                "next_retry_in": None if retry == float("inf") else round(retry, 3),
            }
        case Pending():
            view |= {"state": "pending", "error": None}
    return view


def plugins_view(
    statuses: Mapping[ObjectKey, PluginStatus],
    snapshot: Snapshot,
    sessions: Sequence[Session],
    delivery: str,
) -> list[dict[str, Any]]:
    """Per WasmPlugin: origin, module and fetch state, what is served and which proxies run it.

    ``served`` is "filter", "stand-in", "not yet", or "last_good" when proxies keep
    an earlier version (described by ``last_good``) because this one's module is
    pending or failed (``module.state`` and ``module.error`` say which and why),
    or was fetched but cannot be delivered (``last_good.reason``). ``action`` says
    what to do about a module nothing retries (too large for inline delivery).
    """
    out = []
    for key, status in sorted(statuses.items()):
        plugin, spec = status.plugin, status.plugin.spec
        entry = snapshot.ecds.get(plugin.resource_name)
        served = status.served
        standin = None
        if served is not None and served.standin is not None:
            kind = served.standin.name.lower().replace("_", "-")
            standin = {"kind": kind, "reason": served.reason}
        running = []
        if entry is not None:
            running = sorted(s.node.id for s in holders(entry.active, sessions))
        passthrough = isinstance(status.outcome, Ready) and isinstance(
            status.outcome.module, LocalFile
        )
        last_good = None
        if status.serving is Serving.LAST_GOOD and served is not None:
            # The earlier version proxies keep running while this one's module is not good.
            module = status.served_module
            last_good = {
                "url": module_request(served.plugin).display_url,
                "digest": module.digest if module is not None else None,
                "size": module.size if module is not None else None,
                # Why this version is not served (empty while its module is pending).
                "reason": status.unavailable,
            }
            served_label = Serving.LAST_GOOD.value
        else:
            served_label = "stand-in" if standin else ("filter" if entry else "not yet")
        out.append(
            {
                "name": str(key),
                "resource": plugin.resource_name,
                "source": str(plugin.origin),
                "phase": wasm_pb2.PluginPhase.Name(spec.phase).removeprefix("UNSPECIFIED_PHASE")
                or None,
                "priority": spec.priority.value if spec.HasField("priority") else None,
                "type": "NETWORK" if spec.type == wasm_pb2.NETWORK else "HTTP",
                "fail_strategy": wasm_pb2.FailStrategy.Name(spec.fail_strategy),
                "module": _module_view(status),
                "delivery": "file" if passthrough else delivery,
                "served": served_label,
                "standin": standin,
                "last_good": last_good,
                "action": (
                    INLINE_TOO_LARGE_ACTION
                    if isinstance(status.outcome, Ready) and status.unavailable
                    else None
                ),
                "proxies": running,
            }
        )
    return out


def _dump(resources: Mapping[str, PreparedResource]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "version": resource.version,
            "resource": json_format.MessageToDict(
                resource.message, preserving_proto_field_name=True
            ),
        }
        for name, resource in sorted(resources.items())
    ]


def config_dump(
    snapshot: Snapshot, node: NodeInfo, ecds_names: Iterable[str] | None
) -> dict[str, Any]:
    """Exactly what ``node`` gets: its listeners, clusters and ECDS resources.

    ``ecds_names`` are the names the proxy subscribed to; None means every plugin
    that applies to it (for a proxy that is not connected).
    """
    if ecds_names is None:
        ecds = {
            name: entry.active
            for name, entry in snapshot.ecds.items()
            if snapshot.ecds_for(node, name) is entry.active
        }
    else:
        ecds = snapshot.resolve(ECDS, node, ecds_names)
    return {
        "node": {"id": node.id, "namespace": node.namespace, "labels": dict(node.labels)},
        "snapshot": snapshot.version,
        "resources": {
            "CDS": _dump(snapshot.resolve_all(CLUSTER, node)),
            "LDS": _dump(snapshot.resolve_all(LISTENER, node)),
            "ECDS": _dump(ecds),
        },
    }


@dataclass(frozen=True, slots=True)
class Readiness:
    sources_loaded: bool
    first_push: bool
    xds_listening: bool

    @property
    def ready(self) -> bool:
        return self.sources_loaded and self.first_push and self.xds_listening
