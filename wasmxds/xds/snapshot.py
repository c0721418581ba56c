"""Immutable, versioned desired state: what every proxy should hold right now.

A snapshot is built once per reconcile (by the translate stage:
:func:`wasmxds.translate.snapshot.build_snapshot`) and then only read. Per
proxy it answers "what does resource X look like for you". What differs per
proxy (whether a plugin applies, its listeners and clusters) is decided by the
:class:`Translation` the translate stage hands over; the snapshot asks it once
per node class (same namespace and labels) and shares the answer with every
stream of that class. Identical resources are serialized once and shared
across classes too. While a staged rollout runs, a class's memo is kept per
rollout position (:meth:`Translation.position`: the staged plugins a proxy
gets the new version of), so proxies of a class on the same versions still
share everything; with no rollout every position is ``()``.

Per-class memos are bounded by what is connected, not by what ever connected:
the server limits them to classes with an open stream
(:meth:`Snapshot.limit_memos_to`), drops a class's memo when its last stream
goes (:meth:`Snapshot.forget_class`) and a whole snapshot's memos once a newer
one is published (:meth:`Snapshot.release`). Names no plugin has are never
memoized, and the responses shared within a class are capped.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import message

from wasmxds.xds.node import ClassKey, NodeInfo
from wasmxds.xds.resources import (
    EcdsTag,
    ListenerTag,
    PreparedResource,
    PreparedResponse,
    ResponseKey,
    prepare,
)
from wasmxds.xds.types import CLUSTER, ECDS, LISTENER

__all__ = [
    "MAX_SHARED_RESPONSES",
    "BuiltResource",
    "ClassResources",
    "EcdsEntry",
    "Snapshot",
    "Translation",
]


@dataclass(frozen=True, slots=True, eq=False)
class EcdsEntry:
    """A plugin's two faces: for proxies it applies to, and the no-op for the others."""

    active: PreparedResource
    noop: PreparedResource
    fingerprint: tuple[str, ...]
    """Changes whenever what any proxy may get under this name does."""
    previous: PreparedResource | None = None
    """While a staged rollout runs: the version proxies outside its current step keep
    (the translation says which proxies those are)."""


@dataclass(frozen=True, slots=True)
class BuiltResource:
    """A listener or cluster the translate stage built for a node class, not yet serialized."""

    name: str
    message: message.Message
    tag: ListenerTag | None = None


@dataclass(frozen=True, slots=True)
class ClassResources:
    """Everything of listener mode one node class gets."""

    listeners: Sequence[BuiltResource] = ()
    clusters: Sequence[BuiltResource] = ()


class Translation(Protocol):
    """What the translate stage decides per node; the snapshot asks once per class and keeps it."""

    @property
    def listeners_version(self) -> str:
        """Changes whenever any proxy's listeners or clusters may."""
        ...

    def applies(self, name: str, node: NodeInfo) -> bool:
        """Whether the plugin behind ECDS resource ``name`` applies to ``node``."""
        ...

    def class_resources(self, node: NodeInfo) -> ClassResources:
        """The listeners and clusters for ``node``'s class (listener mode)."""
        ...

    def position(self, node: NodeInfo) -> tuple[str, ...]:
        """Where ``node`` stands in the staged rollouts: the staged names it gets the new
        version of. Always ``()`` while no rollout runs; proxies of one class in the same
        position get identical resources (and share responses)."""
        ...

    def on_new(self, name: str, node: NodeInfo) -> bool:
        """Whether ``node`` gets the new version of ``name`` (False: its entry's ``previous``)."""
        ...

    def steady(self, name: str) -> bool:
        """Whether what ``name`` resolves to depends on no rollout: neither it nor the
        plugin it overrides (``<name>~<label>``) is staged."""
        ...


class _Nothing:
    """The translation of an empty snapshot: no plugin, no listener."""

    listeners_version = ""

    def applies(self, name: str, node: NodeInfo) -> bool:
        return False

    def class_resources(self, node: NodeInfo) -> ClassResources:
        return ClassResources()

    def position(self, node: NodeInfo) -> tuple[str, ...]:
        return ()

    def on_new(self, name: str, node: NodeInfo) -> bool:
        return True

    def steady(self, name: str) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class _NodeResources:
    listeners: dict[str, PreparedResource]
    clusters: dict[str, PreparedResource]


# Responses one class shares are kept per (subscription, what is held). Streams
# of a class are usually all in one state after a push, so a handful is the
# working set; the cap only stops a stream that churns its subscription from
# growing the memo (an evicted response is recomputed, never wrong).
MAX_SHARED_RESPONSES = 64


@dataclass(slots=True)
class _ClassMemo:
    """What one node class resolved to in one snapshot."""

    ecds: dict[str, PreparedResource] = field(default_factory=dict)
    """Only names a plugin has: a client cannot grow it by asking for others."""
    resources: _NodeResources | None = None
    responses: dict[ResponseKey, PreparedResponse] = field(default_factory=dict)


class Snapshot:
    """Desired state at one version. Never mutated after construction (its memos aside)."""

    def __init__(
        self,
        *,
        ecds: Mapping[str, EcdsEntry],
        pending: frozenset[str],
        root_namespace: str,
        sequence: int,
        translation: Translation | None = None,
        changed_at: float | None = None,
    ) -> None:
        self.ecds = dict(ecds)
        self.changed_at = changed_at
        """When (monotonic clock) the change this snapshot answers was first seen."""
        self.pending = pending
        self.root_namespace = root_namespace
        """The namespace whose plugins apply to every proxy (kept for the next build)."""
        self.sequence = sequence
        self.translation: Translation = translation or _Nothing()
        # Listeners depend on templates and on where plugins go, never on their
        # module or configuration: an ECDS-only change leaves listeners alone.
        self.listeners_version = self.translation.listeners_version
        digest = hashlib.sha256()
        for name in sorted(self.ecds):
            digest.update("\0".join((name, *self.ecds[name].fingerprint)).encode())
        for name in sorted(pending):
            digest.update(f"\0pending\0{name}".encode())
        digest.update(self.listeners_version.encode())
        self.version = digest.hexdigest()[:12]
        # Per class, one memo per rollout position ({(): ...} while no rollout runs).
        self._classes: dict[ClassKey, dict[tuple[str, ...], _ClassMemo]] = {}
        self._live: Container[ClassKey] | None = None
        # Listeners identical across classes share one prepared resource; it
        # lives as long as some class memo holds it.
        self._shared: weakref.WeakValueDictionary[tuple[str, bytes], PreparedResource] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def empty(cls, root_namespace: str) -> Snapshot:
        return cls(ecds={}, pending=frozenset(), root_namespace=root_namespace, sequence=0)

    # -- per-class memos ----------------------------------------------------

    def _memo(self, node: NodeInfo) -> _ClassMemo | None:
        """The memo of ``node``'s class and rollout position; None when the class is not
        to be memoized."""
        key = node.class_key
        positions = self._classes.get(key)
        if positions is None:
            if self._live is not None and key not in self._live:
                return None
            positions = self._classes[key] = {}
        position = self.translation.position(node)
        found = positions.get(position)
        if found is None:
            found = positions[position] = _ClassMemo()
        return found

    def _existing_memo(self, node: NodeInfo) -> _ClassMemo | None:
        positions = self._classes.get(node.class_key)
        return None if positions is None else positions.get(self.translation.position(node))

    def limit_memos_to(self, live: Container[ClassKey]) -> None:
        """Memoize only classes in ``live`` (a view the caller keeps current).

        Anything else that resolves for a node (an admin page asking about
        arbitrary labels) computes afresh instead of leaving a memo behind.
        """
        self._live = live

    def forget_class(self, class_key: ClassKey) -> None:
        """Drop everything memoized for a class (its last stream is gone)."""
        self._classes.pop(class_key, None)

    def inherit(self, previous: Snapshot) -> int:
        """Take over what each live class resolved in ``previous`` for names whose entries
        did not change; returns how many resolutions were carried.

        A change to one plugin otherwise makes every class resolve every name again
        (100 classes by 50 plugins: 5,000 targeting decisions, tens of milliseconds, on
        each push). For a name no rollout touches in either snapshot, an unchanged
        fingerprint (the plugin object and both resources) means the same decision
        for every proxy, so the class gets the same face (active, no-op) of the new
        entry. Names under a rollout are resolved afresh: an override's fingerprint
        does not carry its plugin's step, and a rollout position means another thing
        once the set of staged names changes.
        """
        carried = 0
        for key, positions in previous._classes.items():
            if self._live is not None and key not in self._live:
                continue
            for position, memo in positions.items():
                faces: dict[str, PreparedResource] = {}
                for name, resolved in memo.ecds.items():
                    old, new = previous.ecds.get(name), self.ecds.get(name)
                    if old is None or new is None or old.fingerprint != new.fingerprint:
                        continue
                    if not (self.translation.steady(name) and previous.translation.steady(name)):
                        continue
                    if resolved is old.active:
                        faces[name] = new.active
                    elif resolved is old.noop:
                        faces[name] = new.noop
                if faces:
                    target = self._classes.setdefault(key, {}).setdefault(position, _ClassMemo())
                    for name, face in faces.items():
                        target.ecds.setdefault(name, face)
                    carried += len(faces)
        return carried

    def release(self) -> None:
        """Drop every memo, and make no more: a newer snapshot is current."""
        self._classes.clear()
        self._live = frozenset()

    @property
    def memoized_classes(self) -> int:
        """How many node classes hold memos in this snapshot."""
        return len(self._classes)

    @property
    def memoized_positions(self) -> int:
        """How many (class, rollout position) memos this snapshot holds."""
        return sum(len(positions) for positions in self._classes.values())

    def shared_responses(self, node: NodeInfo) -> int:
        """How many responses ``node``'s class (and rollout position) keeps to share."""
        memo = self._existing_memo(node)
        return 0 if memo is None else len(memo.responses)

    def shared_response(self, node: NodeInfo, key: ResponseKey) -> PreparedResponse | None:
        """A response another stream of ``node``'s class and position computed under ``key``."""
        memo = self._existing_memo(node)
        return None if memo is None else memo.responses.get(key)

    def share_response(self, node: NodeInfo, key: ResponseKey, response: PreparedResponse) -> None:
        """Keep ``response`` for the other streams of ``node``'s class (oldest evicted)."""
        memo = self._memo(node)
        if memo is None:
            return
        responses = memo.responses
        if key not in responses and len(responses) >= MAX_SHARED_RESPONSES:
            del responses[next(iter(responses))]
        responses[key] = response

    # -- ECDS ---------------------------------------------------------------

    def ecds_for(self, node: NodeInfo, name: str) -> PreparedResource | None:
        """The resource ``node`` should hold under ``name``; None when no plugin has that name."""
        entry = self.ecds.get(name)
        if entry is None:
            return None
        memo = self._memo(node)
        if memo is not None:
            found = memo.ecds.get(name)
            if found is not None:
                return found
        if not self.translation.applies(name, node):
            result = entry.noop
        elif entry.previous is not None and not self.translation.on_new(name, node):
            result = entry.previous
        else:
            result = entry.active
        if memo is not None:
            memo.ecds[name] = result
        return result

    # -- listener mode ------------------------------------------------------

    def _shared_prepare(self, built: BuiltResource) -> PreparedResource:
        key = (built.name, built.message.SerializeToString(deterministic=True))
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = prepare(built.name, built.message, tag=built.tag)
        return found

    def _node_resources(self, node: NodeInfo) -> _NodeResources:
        memo = self._memo(node)
        if memo is not None and memo.resources is not None:
            return memo.resources
        built = self.translation.class_resources(node)
        resources = _NodeResources(
            {listener.name: self._shared_prepare(listener) for listener in built.listeners},
            {cluster.name: self._shared_prepare(cluster) for cluster in built.clusters},
        )
        if memo is not None:
            memo.resources = resources
        return resources

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

    @staticmethod
    def removed_placeholder(held: PreparedResource) -> PreparedResource | None:
        """What replaces a resource whose plugin is gone, on streams that cannot delete (SotW).

        SotW ECDS has no removal: the proxy would keep running the deleted plugin.
        It gets the no-op of the same chain instead, so the plugin stops.
        """
        return held.tag.placeholder if isinstance(held.tag, EcdsTag) else None

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
