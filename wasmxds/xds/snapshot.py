"""Immutable, versioned desired state: what every proxy should hold right now.

A snapshot is built once per reconcile and then only read. Per proxy it answers
"what does resource X look like for you", computed once per node class (same
namespace and labels) and shared by every stream of that class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wasmxds.translate.filters import FilterKind, StandIn
from wasmxds.translate.node import NodeInfo
from wasmxds.translate.plugins import PluginResources, not_selected_config
from wasmxds.translate.targeting import applies_to
from wasmxds.translate.typeurls import TYPED_EXTENSION_CONFIG
from wasmxds.xds.resources import PreparedResource, prepare

__all__ = ["EcdsEntry", "EcdsTag", "Snapshot", "build_snapshot"]


@dataclass(frozen=True, slots=True)
class EcdsTag:
    """What a prepared ECDS resource is: which chain it belongs to and whether it is a stand-in."""

    kind: FilterKind
    standin: StandIn | None


@dataclass(frozen=True, slots=True, eq=False)
class EcdsEntry:
    """A plugin's two faces: for proxies it applies to, and the no-op for the others."""

    source: PluginResources
    active: PreparedResource
    noop: PreparedResource

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        return (self.active.version, self.noop.version, self.source.plugin.fingerprint)


class Snapshot:
    """Desired state at one version. Never mutated after construction (its memo aside)."""

    def __init__(
        self,
        *,
        ecds: Mapping[str, EcdsEntry],
        pending: frozenset[str],
        root_namespace: str,
        sequence: int,
    ) -> None:
        self.ecds = dict(ecds)
        self.pending = pending
        self.root_namespace = root_namespace
        self.sequence = sequence
        digest = hashlib.sha256()
        for name in sorted(self.ecds):
            digest.update("\0".join((name, *self.ecds[name].fingerprint)).encode())
        for name in sorted(pending):
            digest.update(f"\0pending\0{name}".encode())
        self.version = digest.hexdigest()[:12]
        self._memo: dict[tuple[object, str], PreparedResource | None] = {}
        self._noops: dict[tuple[str, FilterKind], PreparedResource] = {}

    @classmethod
    def empty(cls, root_namespace: str) -> Snapshot:
        return cls(ecds={}, pending=frozenset(), root_namespace=root_namespace, sequence=0)

    def ecds_for(self, node: NodeInfo, name: str) -> PreparedResource | None:
        """The resource ``node`` should hold under ``name``; None when no plugin has that name."""
        key = (node.class_key, name)
        try:
            return self._memo[key]
        except KeyError:
            pass
        entry = self.ecds.get(name)
        result: PreparedResource | None = None
        if entry is not None:
            result = (
                entry.active
                if applies_to(entry.source.plugin, node, self.root_namespace)
                else entry.noop
            )
        self._memo[key] = result
        return result

    def resolve(
        self, type_url: str, node: NodeInfo, names: Iterable[str]
    ) -> dict[str, PreparedResource]:
        """Resources of ``type_url`` among ``names`` that exist for ``node``."""
        if type_url != TYPED_EXTENSION_CONFIG:
            return {}
        found = {}
        for name in names:
            resource = self.ecds_for(node, name)
            if resource is not None:
                found[name] = resource
        return found

    def is_pending(self, type_url: str, name: str) -> bool:
        """True while a plugin of that name exists but its module's first fetch is running."""
        return type_url == TYPED_EXTENSION_CONFIG and name in self.pending

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
    return EcdsEntry(source=source, active=active, noop=noop)


def build_snapshot(
    plugins: Iterable[PluginResources],
    *,
    pending: Iterable[str],
    previous: Snapshot,
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
    )
