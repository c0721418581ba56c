"""From translated plugins and templates to the snapshot the xDS server serves.

Translation happens here, before the snapshot: every plugin's ECDS resource
(and its not-selected no-op) is prepared once per version, and
:class:`PluginTranslation` answers what differs per proxy (whether a plugin
applies, which listeners and clusters it gets). The snapshot asks that once per
node class and keeps the answer only while the class has a stream
(:class:`wasmxds.xds.snapshot.Snapshot`), so the xDS layer needs nothing from
this package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from wasmxds.api.templates import Templates
from wasmxds.translate.listeners import (
    PlacedPlugin,
    build_listener,
    order_plugins,
    placed_plugin,
    referenced_names,
)
from wasmxds.translate.plugins import PluginResources, not_selected_config
from wasmxds.translate.targeting import applies_to
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import EcdsTag, ListenerTag, prepare
from wasmxds.xds.snapshot import BuiltResource, ClassResources, EcdsEntry, Snapshot

__all__ = ["PluginTranslation", "build_snapshot"]


class PluginTranslation:
    """The per-proxy decisions of one snapshot (a ``wasmxds.xds.snapshot.Translation``)."""

    def __init__(
        self,
        plugins: Mapping[str, PluginResources],
        *,
        templates: Templates,
        root_namespace: str,
    ) -> None:
        self.plugins = dict(plugins)
        """ECDS resource name → what its plugin translated to (the next build compares)."""
        self.templates = templates
        self.root_namespace = root_namespace
        self._placed: dict[str, PlacedPlugin] = {
            name: placed_plugin(source.plugin) for name, source in self.plugins.items()
        }
        # Listeners depend on templates and on where plugins go, never on their
        # module or configuration: an ECDS-only change leaves listeners alone.
        placement = hashlib.sha256(templates.version.encode())
        for name in sorted(self.plugins):
            spec = self.plugins[name].plugin.spec
            placement.update(repr(self._placed[name]).encode())
            # Targeting decides which proxies' listeners reference the plugin.
            placement.update(spec.selector.SerializeToString(deterministic=True))
            placement.update(spec.targetRef.SerializeToString(deterministic=True))
            for ref in spec.targetRefs:
                placement.update(ref.SerializeToString(deterministic=True))
        self.listeners_version = placement.hexdigest()[:12]

    def applies(self, name: str, node: NodeInfo) -> bool:
        source = self.plugins.get(name)
        return source is not None and applies_to(source.plugin, node, self.root_namespace)

    def class_resources(self, node: NodeInfo) -> ClassResources:
        applicable = [
            self._placed[name]
            for name, source in self.plugins.items()
            if applies_to(source.plugin, node, self.root_namespace)
        ]
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


def _prepare_entry(
    source: PluginResources, previous: EcdsEntry | None, previous_source: PluginResources | None
) -> EcdsEntry:
    name = source.plugin.resource_name
    noop = active = None
    if previous is not None and previous_source is not None:
        if previous_source.kind is source.kind:
            noop = previous.noop
        if previous_source.config == source.config:
            active = previous.active
    if noop is None:
        noop = prepare(name, not_selected_config(name, source.kind), tag=EcdsTag(noop=True))
    if active is None:
        # A SotW stream cannot remove it once the plugin is gone: it sends the
        # no-op of the same chain in its place.
        active = prepare(name, source.config, tag=EcdsTag(noop=False, placeholder=noop))
    return EcdsEntry(
        active=active,
        noop=noop,
        fingerprint=(active.version, noop.version, source.plugin.fingerprint),
    )


def build_snapshot(
    plugins: Iterable[PluginResources],
    *,
    pending: Iterable[str],
    previous: Snapshot,
    templates: Templates | None = None,
    changed_at: float | None = None,
) -> Snapshot:
    """Prepare every plugin's resources, reusing the previous snapshot's bytes where unchanged.

    ``templates`` default to the previous snapshot's.
    """
    prior = previous.translation if isinstance(previous.translation, PluginTranslation) else None
    sources = {source.plugin.resource_name: source for source in plugins}
    entries = {
        name: _prepare_entry(
            source,
            previous.ecds.get(name),
            prior.plugins.get(name) if prior is not None else None,
        )
        for name, source in sources.items()
    }
    if templates is None:
        templates = prior.templates if prior is not None else Templates()
    translation = PluginTranslation(
        sources, templates=templates, root_namespace=previous.root_namespace
    )
    return Snapshot(
        ecds=entries,
        pending=frozenset(pending) - entries.keys(),
        root_namespace=previous.root_namespace,
        sequence=previous.sequence + 1,
        translation=translation,
        changed_at=changed_at,
    )
