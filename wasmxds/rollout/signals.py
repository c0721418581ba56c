"""What the rollout engine reads from outside: the xDS streams and the proxies' health.

Narrow protocols, so the engine needs neither the xDS server nor the health
package: :class:`wasmxds.xds.server.Session` is a :class:`ProxyStream`, and
:class:`wasmxds.health.verdict.FleetHealth` a :class:`HealthSource`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

from wasmxds.rollout.model import MAX_WAITING_SHOWN, Counts, Rollout, clip
from wasmxds.translate.targeting import applies_to
from wasmxds.xds.node import ClassKey, NodeInfo
from wasmxds.xds.types import ECDS

__all__ = ["HealthSource", "HealthVerdictLike", "ProxyStream", "count"]


class ProxyStream(Protocol):
    """What the engine reads of a connected xDS stream (an :class:`wasmxds.xds.server.Session`)."""

    @property
    def node(self) -> NodeInfo: ...

    def ecds_names(self) -> frozenset[str]: ...

    def accepted(self, type_url: str, name: str) -> str | None: ...


class HealthVerdictLike(Protocol):
    """A verdict (:class:`wasmxds.health.verdict.HealthVerdict`): ``known`` is False when
    no new-version proxy reported (healthy by default)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def details(self) -> dict[str, Any]: ...

    @property
    def known(self) -> bool: ...


class HealthSource(Protocol):
    """The proxies' own health signals (:class:`wasmxds.health.verdict.FleetHealth`)."""

    def verdict(
        self, new_nodes: Collection[str], old_nodes: Collection[str], *, since: float, plugin: str
    ) -> HealthVerdictLike: ...


def count(rollout: Rollout, streams: Iterable[ProxyStream], root_namespace: str) -> Counts:
    """What the connected proxies of ``rollout`` hold, and who of its step has not ACKed."""
    counts = Counts()
    name, percent = rollout.name, rollout.percent
    applies: dict[ClassKey, bool] = {}
    new_nodes, old_nodes = [], []
    waiting_nodes: list[str] = []
    for stream in streams:
        subscribed = stream.ecds_names()
        if name not in subscribed:
            continue
        node = stream.node
        held = stream.accepted(ECDS, name)
        # On the new version: every resource of it the proxy subscribes to (the plugin's
        # own and its per-scope overrides') is ACKed at the new version.
        on_new = all(
            stream.accepted(ECDS, resource) == version
            for resource, version in (rollout.new.ecds or {name: rollout.new.version}).items()
            if resource in subscribed
        )
        if on_new:
            counts.new += 1
            new_nodes.append(node.id)
        elif held == rollout.old.acked(name):
            counts.old += 1
            old_nodes.append(node.id)
        if node.cohort >= percent:
            continue
        key = node.class_key
        if key not in applies:
            applies[key] = applies_to(rollout.new.resources.plugin, node, root_namespace)
        if applies[key]:
            counts.in_step += 1
            if not on_new:
                counts.waiting += 1
                if len(waiting_nodes) < MAX_WAITING_SHOWN:
                    waiting_nodes.append(clip(node.id))
    counts.new_nodes, counts.old_nodes = tuple(new_nodes), tuple(old_nodes)
    counts.waiting_nodes = tuple(waiting_nodes)
    return counts
