"""What the rollout engine reads from outside: the xDS streams and the proxies' health.

Narrow protocols, so the engine needs neither the xDS server nor the health
package: :class:`wasmxds.xds.server.Session` is a :class:`ProxyStream`, and
:class:`wasmxds.health.verdict.FleetHealth` a :class:`HealthSource`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

from wasmxds.rollout.model import Counts, Rollout
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
    for stream in streams:
        if name not in stream.ecds_names():
            continue
        node = stream.node
        held = stream.accepted(ECDS, name)
        if held == rollout.new.version:
            counts.new += 1
            new_nodes.append(node.id)
        elif held == rollout.old.version:
            counts.old += 1
            old_nodes.append(node.id)
        if node.cohort >= percent:
            continue
        key = node.class_key
        if key not in applies:
            applies[key] = applies_to(rollout.new.resources.plugin, node, root_namespace)
        if applies[key]:
            counts.in_step += 1
            if held != rollout.new.version:
                counts.waiting += 1
    counts.new_nodes, counts.old_nodes = tuple(new_nodes), tuple(old_nodes)
    return counts
