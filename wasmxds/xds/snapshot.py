"""Immutable, versioned desired state: what every proxy should hold right now.

A snapshot is built once per reconcile and then only read. Per proxy it
answers "what does resource X look like for you". Everything per proxy is
computed once per node class (same namespace and labels) and shared by every
stream of that class; identical resources are serialized once and shared
across classes too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import message

from wasmxds.api.templates import Templates
from wasmxds.translate.filters import FilterKind, StandIn
from wasmxds.translate.listeners import (
    PlacedPlugin,
    build_listener,
    order_plugins,
    placed_plugin,
    referenced_names,
)
from wasmxds.translate.node import NodeInfo
from wasmxds.translate.plugins import PluginResources, not_selected_config
from wasmxds.translate.targeting import applies_to
from wasmxds.xds.resources import PreparedResource, prepare
from wasmxds.xds.types import CLUSTER, ECDS, LISTENER

__all__ = [
    "EcdsEntry",
    "EcdsTag",
    "ListenerTag",
    "Snapshot",
    "build_snapshot",
]


@dataclass(frozen=True, slots=True)
class EcdsTag:
    """What a prepared ECDS resource is: which chain it belongs to and whether it is a stand-in."""

    kind: FilterKind
    standin: StandIn | None


@dataclass(frozen=True, slots=True)
class ListenerTag:
    """The ECDS names a prepared listener references."""

    references: frozenset[str]


@dataclass(frozen=True, slots=True, eq=False)
class EcdsEntry:
    """A plugin's two faces: for proxies it applies to, and the no-op for the others."""

    source: PluginResources
    active: PreparedResource
    noop: PreparedResource
    placement: PlacedPlugin

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        return (self.active.version, self.noop.version, self.source.plugin.fingerprint)


@dataclass(frozen=True, slots=True)
class _NodeResources:
    listeners: dict[str, PreparedResource]
    clusters: dict[str, PreparedResource]


class Snapshot:
    """Desired state at one version. Never mutated after construction (its memos aside)."""

    def __init__(
        self,
        *,
        ecds: Mapping[str, EcdsEntry],
        pending: frozenset[str],
        root_namespace: str,
        sequence: int,
        templates: Templates | None = None,
        changed_at: float | None = None,
    ) -> None:
        self.ecds = dict(ecds)
        self.changed_at = changed_at
        """When (monotonic clock) the change this snapshot answers was first seen."""
        self.pending = pending
        self.root_namespace = root_namespace
        self.sequence = sequence
        self.templates = templates or Templates()
        digest = hashlib.sha256()
        for name in sorted(self.ecds):
            digest.update("\0".join((name, *self.ecds[name].fingerprint)).encode())
        for name in sorted(pending):
            digest.update(f"\0pending\0{name}".encode())
        digest.update(self.templates.version.encode())
        self.version = digest.hexdigest()[:12]
        # Listeners depend on templates and on where plugins go, never on their
        # module or configuration: an ECDS-only change leaves listeners alone.
        placement = hashlib.sha256(self.templates.version.encode())
        for name in sorted(self.ecds):
            entry = self.ecds[name]
            spec = entry.source.plugin.spec
            placement.update(repr(entry.placement).encode())
            # Targeting decides which proxies' listeners reference the plugin.
            placement.update(spec.selector.SerializeToString(deterministic=True))
            placement.update(spec.targetRef.SerializeToString(deterministic=True))
            for ref in spec.targetRefs:
                placement.update(ref.SerializeToString(deterministic=True))
        self.listeners_version = placement.hexdigest()[:12]
        self._ecds_memo: dict[tuple[object, str], PreparedResource | None] = {}
        self._node_memo: dict[object, _NodeResources] = {}
        self._shared: dict[tuple[str, bytes], PreparedResource] = {}
        self._noops: dict[tuple[str, FilterKind], PreparedResource] = {}
        self.sotw_responses: dict[object, object] = {}
        """For :mod:`wasmxds.xds.sotw`: responses computed for one stream, reused by every
        stream of the same class in the same state (see ``SotwStream._shared_key``)."""
        self.delta_responses: dict[object, object] = {}
        """The same for :mod:`wasmxds.xds.delta` (``DeltaStream._shared_key``)."""

    @classmethod
    def empty(cls, root_namespace: str) -> Snapshot:
        return cls(ecds={}, pending=frozenset(), root_namespace=root_namespace, sequence=0)

    # -- ECDS ---------------------------------------------------------------

    def ecds_for(self, node: NodeInfo, name: str) -> PreparedResource | None:
        """The resource ``node`` should hold under ``name``; None when no plugin has that name."""
        key = (node.class_key, name)
        try:
            return self._ecds_memo[key]
        except KeyError:
            pass
        entry = self.ecds.get(name)
        result: PreparedResource | None = None
        if entry is not None:
            applies = applies_to(entry.source.plugin, node, self.root_namespace)
            result = entry.active if applies else entry.noop
        self._ecds_memo[key] = result
        return result

    # -- listener mode ------------------------------------------------------

    def _shared_prepare(self, name: str, msg: message.Message, tag: object) -> PreparedResource:
        key = (name, msg.SerializeToString(deterministic=True))
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = prepare(name, msg, tag=tag)
        return found

    def _node_resources(self, node: NodeInfo) -> _NodeResources:
        found = self._node_memo.get(node.class_key)
        if found is not None:
            return found
        applicable = [
            entry.placement
            for entry in self.ecds.values()
            if applies_to(entry.source.plugin, node, self.root_namespace)
        ]
        phases = order_plugins(applicable, node.namespace, self.root_namespace)
        listeners: dict[str, PreparedResource] = {}
        for template in self.templates.listeners:
            name = template.listener.name
            if name in listeners or not template.nodes.matches(node.namespace, node.labels):
                continue
            listener = build_listener(template, phases)
            tag = ListenerTag(referenced_names(listener))
            listeners[name] = self._shared_prepare(name, listener, tag)
        clusters: dict[str, PreparedResource] = {}
        for cluster_template in self.templates.clusters:
            name = cluster_template.cluster.name
            if name in clusters or not cluster_template.nodes.matches(node.namespace, node.labels):
                continue
            clusters[name] = self._shared_prepare(name, cluster_template.cluster, None)
        found = self._node_memo[node.class_key] = _NodeResources(listeners, clusters)
        return found

    # -- what streams ask ---------------------------------------------------

    def resolve_all(self, type_url: str, node: NodeInfo) -> dict[str, PreparedResource]:
        """Every resource of a wildcard type (LDS, CDS) for ``node``."""
        if type_url == LISTENER:
            return self._node_resources(node).listeners
        if type_url == CLUSTER:
            return self._node_resources(node).clusters
        return {}

    def resolve(
        self, type_url: str, node: NodeInfo, names: Iterable[str]
    ) -> dict[str, PreparedResource]:
        """Resources of ``type_url`` among ``names`` that exist for ``node``."""
        if type_url == ECDS:
            found = {}
            for name in names:
                resource = self.ecds_for(node, name)
                if resource is not None:
                    found[name] = resource
            return found
        everything = self.resolve_all(type_url, node)
        return {name: everything[name] for name in names if name in everything}

    def is_pending(self, type_url: str, name: str) -> bool:
        """True while a plugin of that name exists but its module's first fetch is running."""
        return type_url == ECDS and name in self.pending

    def removed_placeholder(self, name: str, held: PreparedResource) -> PreparedResource | None:
        """What replaces a resource whose plugin is gone, on streams that cannot delete (SotW).

        SotW ECDS has no removal: the proxy would keep running the deleted plugin.
        It gets the no-op of the same chain instead, so the plugin stops.
        """
        tag = held.tag
        if not isinstance(tag, EcdsTag) or tag.standin is StandIn.NOT_SELECTED:
            return None
        key = (name, tag.kind)
        noop = self._noops.get(key)
        if noop is None:
            noop = prepare(
                name,
                not_selected_config(name, tag.kind),
                tag=EcdsTag(tag.kind, StandIn.NOT_SELECTED),
            )
            self._noops[key] = noop
        return noop

    def changed_names(self, previous: Snapshot) -> set[str]:
        """ECDS names whose resources may differ between ``previous`` and this snapshot."""
        changed = set()
        for name in self.ecds.keys() | previous.ecds.keys():
            old, new = previous.ecds.get(name), self.ecds.get(name)
            if old is None or new is None or old.fingerprint != new.fingerprint:
                changed.add(name)
        return changed | (self.pending ^ previous.pending)

    def listeners_changed(self, previous: Snapshot) -> bool:
        """Whether any proxy's listeners or clusters may differ from ``previous``."""
        return self.listeners_version != previous.listeners_version


def _prepare_entry(source: PluginResources, previous: EcdsEntry | None) -> EcdsEntry:
    name = source.plugin.resource_name
    if previous is not None and previous.source.config == source.config:
        active = previous.active
    else:
        active = prepare(name, source.config, tag=EcdsTag(source.kind, source.standin))
    if previous is not None and previous.source.kind is source.kind:
        noop = previous.noop
    else:
        noop = prepare(
            name,
            not_selected_config(name, source.kind),
            tag=EcdsTag(source.kind, StandIn.NOT_SELECTED),
        )
    return EcdsEntry(
        source=source, active=active, noop=noop, placement=placed_plugin(source.plugin)
    )


def build_snapshot(
    plugins: Iterable[PluginResources],
    *,
    pending: Iterable[str],
    previous: Snapshot,
    templates: Templates | None = None,
    changed_at: float | None = None,
) -> Snapshot:
    """Prepare every plugin's resources, reusing the previous snapshot's bytes where unchanged."""
    entries = {}
    for source in plugins:
        name = source.plugin.resource_name
        entries[name] = _prepare_entry(source, previous.ecds.get(name))
    return Snapshot(
        ecds=entries,
        pending=frozenset(pending) - entries.keys(),
        root_namespace=previous.root_namespace,
        sequence=previous.sequence + 1,
        templates=templates if templates is not None else previous.templates,
        changed_at=changed_at,
    )
