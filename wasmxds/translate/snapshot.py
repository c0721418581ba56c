"""From translated plugins and templates to the snapshot the xDS server serves.

Translation happens here, before the snapshot: every plugin's ECDS resource
(and its not-selected no-op) is prepared once per version, and
:class:`PluginTranslation` answers what differs per proxy (whether a plugin
applies, which listeners and clusters it gets). The snapshot asks that once per
node class and keeps the answer only while the class has a stream
(:class:`wasmxds.xds.snapshot.Snapshot`), so the xDS layer needs nothing from
this package.

While a staged rollout runs (:class:`Staged`, decided by :mod:`wasmxds.rollout`),
a plugin has two versions: proxies whose cohort point is below the step's
percentage get the new one, the others keep the previous one (module,
configuration and placement). A proxy's rollout position (the staged names it
is on the new version of) joins its class for the snapshot's memos, so proxies
of one class on the same versions still share everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wasmxds.api.templates import Templates
from wasmxds.translate.listeners import (
    PlacedPlugin,
    build_listener,
    order_plugins,
    placed_plugin,
    referenced_names,
)
from wasmxds.translate.plugins import PluginResources, not_selected_config
from wasmxds.translate.routes import base_name, override_resources
from wasmxds.translate.targeting import applies_to
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import EcdsTag, ListenerTag, PreparedResource, prepare
from wasmxds.xds.snapshot import BuiltResource, ClassResources, EcdsEntry, Snapshot

__all__ = ["PluginTranslation", "Staged", "build_snapshot"]


@dataclass(frozen=True, slots=True)
class Staged:
    """A plugin in a staged rollout: proxies below ``percent`` get the new version, the
    others keep ``previous``."""

    previous: PluginResources
    percent: float


def _placement(resources: PluginResources, placed: PlacedPlugin) -> bytes:
    """What decides which proxies' listeners reference the plugin, and where."""
    spec = resources.plugin.spec
    parts = [
        repr(placed).encode(),
        spec.selector.SerializeToString(deterministic=True),
        spec.targetRef.SerializeToString(deterministic=True),
    ]
    parts.extend(ref.SerializeToString(deterministic=True) for ref in spec.targetRefs)
    return b"\0".join(parts)


class PluginTranslation:
    """The per-proxy decisions of one snapshot (a ``wasmxds.xds.snapshot.Translation``)."""

    def __init__(
        self,
        plugins: Mapping[str, PluginResources],
        *,
        templates: Templates,
        root_namespace: str,
        staged: Mapping[str, Staged] | None = None,
    ) -> None:
        self.plugins = dict(plugins)
        """ECDS resource name → what its plugin translated to (the next build compares)."""
        self.staged = {name: s for name, s in (staged or {}).items() if name in self.plugins}
        """ECDS resource name → its rollout, for plugins in a staged rollout."""
        self.templates = templates
        self.root_namespace = root_namespace
        self._placed: dict[str, PlacedPlugin] = {
            name: placed_plugin(source.plugin) for name, source in self.plugins.items()
        }
        self._placed_before: dict[str, PlacedPlugin] = {
            name: placed_plugin(s.previous.plugin) for name, s in self.staged.items()
        }
        self._staged_names = tuple(sorted(self.staged))
        # Listeners depend on templates and on where plugins go, never on their
        # module or configuration: an ECDS-only change leaves listeners alone.
        placement = hashlib.sha256(templates.version.encode())
        for name in sorted(self.plugins):
            new = _placement(self.plugins[name], self._placed[name])
            placement.update(new)
            staging = self.staged.get(name)
            if staging is not None:
                old = _placement(staging.previous, self._placed_before[name])
                if old != new:
                    # Which proxies get which placement moves with every step.
                    placement.update(b"\0staged\0" + old + repr(staging.percent).encode())
        self.listeners_version = placement.hexdigest()[:12]

    def on_new(self, name: str, node: NodeInfo) -> bool:
        staging = self.staged.get(base_name(name))
        return staging is None or node.cohort < staging.percent

    def steady(self, name: str) -> bool:
        return base_name(name) not in self.staged

    def position(self, node: NodeInfo) -> tuple[str, ...]:
        if not self._staged_names:
            return ()
        return tuple(n for n in self._staged_names if node.cohort < self.staged[n].percent)

    def _version_for(self, name: str, node: NodeInfo) -> tuple[PluginResources, PlacedPlugin]:
        staging = self.staged.get(name)
        if staging is not None and node.cohort >= staging.percent:
            return staging.previous, self._placed_before[name]
        return self.plugins[name], self._placed[name]

    def applies(self, name: str, node: NodeInfo) -> bool:
        # A per-scope override (``<name>~<label>``) goes wherever its plugin goes.
        name = base_name(name)
        if name not in self.plugins:
            return False
        source, _ = self._version_for(name, node)
        return applies_to(source.plugin, node, self.root_namespace)

    def class_resources(self, node: NodeInfo) -> ClassResources:
        applicable = []
        for name in self.plugins:
            source, placed = self._version_for(name, node)
            if applies_to(source.plugin, node, self.root_namespace):
                applicable.append(placed)
        phases = order_plugins(applicable, node.namespace, self.root_namespace)
        listeners: dict[str, BuiltResource] = {}
        for template in self.templates.listeners:
            name = template.listener.name
            if name in listeners or not template.nodes.matches(node.namespace, node.labels):
                continue
            listener = build_listener(template, phases)
            listeners[name] = BuiltResource(name, listener, ListenerTag(referenced_names(listener)))
        clusters: dict[str, BuiltResource] = {}
        for cluster_template in self.templates.clusters:
            name = cluster_template.cluster.name
            if name in clusters or not cluster_template.nodes.matches(node.namespace, node.labels):
                continue
            clusters[name] = BuiltResource(name, cluster_template.cluster)
        return ClassResources(tuple(listeners.values()), tuple(clusters.values()))


def _reuse(
    wanted: PluginResources, candidates: Iterable[tuple[PluginResources, PreparedResource | None]]
) -> PreparedResource | None:
    """A resource prepared earlier for exactly ``wanted``'s filter, if there is one."""
    for source, prepared in candidates:
        same = source.config == wanted.config and source.display == wanted.display
        if prepared is not None and same:
            return prepared
    return None


def _prepare_entry(
    source: PluginResources,
    previous: EcdsEntry | None,
    previous_source: PluginResources | None,
    staged: Staged | None = None,
    previous_staged: Staged | None = None,
    name: str = "",
) -> EcdsEntry:
    name = name or source.plugin.resource_name
    noop = active = None
    if previous is not None and previous_source is not None:
        if previous_source.kind is source.kind:
            noop = previous.noop
        if previous_source.config == source.config and previous_source.display == source.display:
            active = previous.active
    if noop is None:
        noop = prepare(name, not_selected_config(name, source.kind), tag=EcdsTag(noop=True))
    if active is None:
        # A SotW stream cannot remove it once the plugin is gone: it sends the
        # no-op of the same chain in its place.
        active = prepare(
            name,
            source.config,
            tag=EcdsTag(noop=False, placeholder=noop, display=source.display),
        )
    fingerprint: tuple[str, ...] = (active.version, noop.version, source.plugin.fingerprint)
    before = None
    if staged is not None:
        candidates: list[tuple[PluginResources, PreparedResource | None]] = []
        if previous is not None and previous_source is not None:
            candidates.append((previous_source, previous.active))
            if previous_staged is not None:
                candidates.append((previous_staged.previous, previous.previous))
        old = staged.previous
        before = _reuse(old, candidates) or prepare(
            name, old.config, tag=EcdsTag(noop=False, placeholder=noop, display=old.display)
        )
        fingerprint += (before.version, old.plugin.fingerprint, repr(staged.percent))
    return EcdsEntry(active=active, noop=noop, fingerprint=fingerprint, previous=before)


def _override_entries(
    sources: Mapping[str, PluginResources],
    previous: Snapshot,
    prior: PluginTranslation | None,
    staged: Mapping[str, Staged],
) -> dict[str, EcdsEntry]:
    """One more ECDS entry per per-scope override (wasmxds.translate.routes), staged with
    its plugin."""
    entries: dict[str, EcdsEntry] = {}
    for name, source in sources.items():
        overrides = override_resources(source)
        if not overrides:
            continue
        before = prior.plugins.get(name) if prior is not None else None
        before_overrides = override_resources(before) if before is not None else {}
        staging = staged.get(name)
        old = override_resources(staging.previous) if staging is not None else {}
        prior_staging = prior.staged.get(name) if prior is not None else None
        prior_old = override_resources(prior_staging.previous) if prior_staging else {}
        for extra, derived in overrides.items():
            entries[extra] = _prepare_entry(
                derived,
                previous.ecds.get(extra),
                before_overrides.get(extra),
                Staged(old[extra], staging.percent) if staging and extra in old else None,
                Staged(prior_old[extra], prior_staging.percent)
                if prior_staging and extra in prior_old
                else None,
                name=extra,
            )
    return entries


def build_snapshot(
    plugins: Iterable[PluginResources],
    *,
    pending: Iterable[str],
    previous: Snapshot,
    templates: Templates | None = None,
    changed_at: float | None = None,
    staged: Mapping[str, Staged] | None = None,
) -> Snapshot:
    """Prepare every plugin's resources, reusing the previous snapshot's bytes where unchanged.

    ``templates`` default to the previous snapshot's. ``staged``: the plugins in a staged
    rollout (resource name → their previous version and step).
    """
    staged = staged or {}
    prior = previous.translation if isinstance(previous.translation, PluginTranslation) else None
    sources = {source.plugin.resource_name: source for source in plugins}
    entries = {
        name: _prepare_entry(
            source,
            previous.ecds.get(name),
            prior.plugins.get(name) if prior is not None else None,
            staged.get(name),
            prior.staged.get(name) if prior is not None else None,
        )
        for name, source in sources.items()
    }
    entries.update(_override_entries(sources, previous, prior, staged))
    if templates is None:
        templates = prior.templates if prior is not None else Templates()
    translation = PluginTranslation(
        sources, templates=templates, root_namespace=previous.root_namespace, staged=staged
    )
    return Snapshot(
        ecds=entries,
        pending=frozenset(pending) - entries.keys(),
        root_namespace=previous.root_namespace,
        sequence=previous.sequence + 1,
        translation=translation,
        changed_at=changed_at,
    )
