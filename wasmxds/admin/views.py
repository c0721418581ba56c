"""What the debug endpoints show, as plain JSON-ready data built from live state.

Kept apart from the HTTP layer so it is unit-tested without sockets. Nothing
here may expose a credential: module URLs are always the redacted form, pull
secrets never reach proxies' resources in the first place, and pluginConfig
values from Secrets are shown masked (``[from secret NAME/KEY]``, the
resource's display form).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from wasmxds.api.objects import ObjectKey
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.proxyabi import plugin_type_warning
from wasmxds.modules.types import Failed, LocalFile, Module, ModuleAbi, Pending, Ready
from wasmxds.reconcile import PluginStatus, Serving, module_request
from wasmxds.reconcile.reports import INLINE_TOO_LARGE_ACTION, holders
from wasmxds.xds.delta import DeltaTypeState
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import (
    EcdsTag,
    PreparedResource,
    secret_versions_exist,
    shown_version,
)
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
    # Versions of resources with values from Secrets are shown as HMACs (shown_version).
    if isinstance(state, TypeState):
        return {name: _version(resource) for name, resource in state.held.items()}
    return {name: shown_version(version) for name, version in state.sent.items() if version}


def _type_version(state: TypeState | DeltaTypeState, version: str) -> str | None:
    """A type's version (a hash of its resources' versions), masked like theirs."""
    if not version:
        return None
    return shown_version(version, secret=state.type_url == ECDS and secret_versions_exist())


def _type_view(state: TypeState | DeltaTypeState) -> dict[str, Any]:
    wildcard = state.wildcard
    return {
        "type_url": state.type_url,
        "subscribed": "*" if wildcard else sorted(state.names),
        "resources": _held(state),
        "version_sent": _type_version(state, state.sent_version),
        "version_acked": _type_version(state, state.acked_version),
        "nacks": state.nacks,
        "last_nack": state.last_error or None,
        "state": sync_state(state),
    }


def _types(session: Session) -> list[tuple[str, TypeState | DeltaTypeState]]:
    types: Mapping[str, TypeState | DeltaTypeState] = session.protocol.types
    return sorted(types.items())


def syncz(
    sessions: Iterable[Session],
    health: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> list[dict[str, Any]]:
    """Per connected proxy: identity, connection, per type what it was sent and acknowledged,
    and the health its own stats report (null until it reports over the metrics service)."""
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
                "health": health(node.id) if health is not None else None,
            }
        )
    return out


def _implements(abi: ModuleAbi | None) -> dict[str, Any] | None:
    """What the pre-flight check found the module implements (None: not checked)."""
    if abi is None:
        return None
    return {
        "abi": abi.version,
        "http": abi.http,
        "network": abi.network,
        "callbacks": list(abi.callbacks),
    }


def _type_warning(status: PluginStatus, kind: str) -> str | None:
    outcome = status.outcome
    if isinstance(outcome, Ready) and isinstance(outcome.module, Module) and outcome.module.abi:
        return plugin_type_warning(kind, outcome.module.abi) or None
    return None


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
                "implements": _implements(module.abi),
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


def _config_view(status: PluginStatus) -> dict[str, Any] | None:
    config = status.config
    if config is None:
        return None
    return {
        "references": [
            {"line": ref.line, "path": ref.dotted, "value": ref.masked} for ref in config.refs
        ],
        "state": config.refusal.value if config.refusal else "resolved",
        "error": config.error or None,
    }


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
                "reason": status.unavailable or (status.config.error if status.config else ""),
            }
            served_label = Serving.LAST_GOOD.value
        else:
            served_label = "stand-in" if standin else ("filter" if entry else "not yet")
        kind = "NETWORK" if spec.type == wasm_pb2.NETWORK else "HTTP"
        out.append(
            {
                "name": str(key),
                "resource": plugin.resource_name,
                "source": str(plugin.origin),
                "phase": wasm_pb2.PluginPhase.Name(spec.phase).removeprefix("UNSPECIFIED_PHASE")
                or None,
                "priority": spec.priority.value if spec.HasField("priority") else None,
                "type": kind,
                # The module implements no callbacks of this type (pre-flight check).
                "type_warning": _type_warning(status, kind),
                "fail_strategy": wasm_pb2.FailStrategy.Name(spec.fail_strategy),
                "module": _module_view(status),
                "delivery": "file" if passthrough else delivery,
                "served": served_label,
                "standin": standin,
                "last_good": last_good,
                # References only (path, Secret, key): values never leave the server here.
                "config_secrets": _config_view(status),
                "action": (
                    INLINE_TOO_LARGE_ACTION
                    if isinstance(status.outcome, Ready) and status.unavailable
                    else None
                ),
                "proxies": running,
            }
        )
    return out


def _version(resource: PreparedResource) -> str:
    """The resource's version as debug pages show it (an HMAC when it holds values
    from Secrets: the real one would let a reader test guesses of them)."""
    tag = resource.tag
    secret = isinstance(tag, EcdsTag) and tag.display is not None
    return shown_version(resource.version, secret=secret)


def _shown(resource: PreparedResource) -> Message:
    """The resource as debug pages show it: values from Secrets masked."""
    tag = resource.tag
    if isinstance(tag, EcdsTag) and tag.display is not None:
        return tag.display
    return resource.message


def _dump(resources: Mapping[str, PreparedResource]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "version": _version(resource),
            "resource": json_format.MessageToDict(
                _shown(resource), preserving_proto_field_name=True
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
        # Derived from every resource's version: masked once any holds Secret values.
        "snapshot": shown_version(snapshot.version, secret=secret_versions_exist()),
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
