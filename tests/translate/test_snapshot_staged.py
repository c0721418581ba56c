"""Snapshots with a staged plugin: who gets which version, and per-class sharing kept."""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.factories import make_node, make_plugin
from tests.xds.helpers import DELIVERY, ROOT, module_for
from tests.xds.test_snapshot_listeners import TEMPLATES
from wasmxds.modules.types import Ready
from wasmxds.translate.plugins import PluginResources, plugin_resources
from wasmxds.translate.snapshot import Staged, build_snapshot
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import PreparedResponse, ResponseKey, references
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.types import LISTENER

NAME = "default.p"


def resources(**spec: Any) -> PluginResources:
    plugin = make_plugin("p", **spec)
    return plugin_resources(plugin, Ready(module_for(plugin)), DELIVERY, runtime="v8")


def node_at(
    low: float, high: float, namespace: str = "default", skip: int = 0, **labels: str
) -> NodeInfo:
    """A node of the given class whose cohort point lies in [low, high) (the ``skip``-th such)."""
    for i in range(10_000):
        node = make_node(f"n-{low}-{i}", namespace, **labels)
        if low <= node.cohort < high and skip:
            skip -= 1
            continue
        if low <= node.cohort < high:
            return node
    raise AssertionError("no such node id found")


def staged_snapshot(percent: float, previous: Snapshot | None = None) -> Snapshot:
    old, new = resources(pluginConfig={"v": 1}), resources(pluginConfig={"v": 2})
    return build_snapshot(
        [new],
        pending=(),
        previous=previous or Snapshot.empty(ROOT),
        staged={NAME: Staged(old, percent)},
    )


def test_nodes_below_the_step_get_the_new_version_others_the_previous():
    """Cohort point below the step's percentage: new version; at or above it: previous."""
    snap = staged_snapshot(25)
    inside, outside = node_at(0, 25, app="x"), node_at(25, 100, app="x")
    assert snap.ecds_for(inside, NAME) is snap.ecds[NAME].active
    assert snap.ecds_for(outside, NAME) is snap.ecds[NAME].previous
    previous = snap.ecds[NAME].previous
    assert previous is not None
    assert previous.version != snap.ecds[NAME].active.version


def test_class_sharing_is_kept_per_rollout_position():
    """Nodes of one class on the same versions share memo and responses; the position splits it."""
    snap = staged_snapshot(50)
    a, b = node_at(0, 50, app="x"), node_at(0, 50, skip=1, app="x")
    c = node_at(50, 100, app="x")
    assert a.id != b.id
    assert a.class_key == b.class_key == c.class_key
    assert snap.translation.position(a) == snap.translation.position(b) == (NAME,)
    assert snap.translation.position(c) == ()
    response = PreparedResponse((), (), "v", b"")
    key: ResponseKey = ("sotw", "ecds", frozenset({NAME}), False, frozenset())
    snap.share_response(a, key, response)
    assert snap.shared_response(b, key) is response
    assert snap.shared_response(c, key) is None
    snap.ecds_for(c, NAME)
    assert snap.memoized_classes == 1
    assert snap.memoized_positions == 2


def test_without_rollouts_the_position_is_empty_and_one_memo_per_class():
    """No staged plugin: every node's position is (), so sharing is exactly per class."""
    snap = build_snapshot([resources()], pending=(), previous=Snapshot.empty(ROOT))
    nodes = [make_node(f"n{i}", app="x") for i in range(20)]
    assert {snap.translation.position(n) for n in nodes} == {()}
    first = snap.ecds_for(nodes[0], NAME)
    assert all(snap.ecds_for(n, NAME) is first for n in nodes)
    assert snap.memoized_positions == 1


def test_each_step_changes_the_snapshot_and_reuses_prepared_bytes():
    """Advancing a step wakes subscribers (a change) without preparing either version anew."""
    first = staged_snapshot(25)
    second = staged_snapshot(50, previous=first)
    assert second.changed_names(first) == {NAME}
    assert second.ecds[NAME].active is first.ecds[NAME].active
    assert second.ecds[NAME].previous is first.ecds[NAME].previous


def test_listener_mode_keeps_the_old_placement_outside_the_step():
    """A change that moves the plugin (a selector) stages the listeners too, per cohort."""
    everywhere = resources()
    only_web = resources(selector={"matchLabels": {"app": "web"}})
    snap = build_snapshot(
        [only_web],
        pending=(),
        previous=Snapshot.empty(ROOT),
        templates=TEMPLATES,
        staged={NAME: Staged(everywhere, 50)},
    )
    inside, outside = node_at(0, 50, app="api"), node_at(50, 100, app="api")
    assert NAME not in references(snap.resolve_all(LISTENER, inside)["main"])
    assert NAME in references(snap.resolve_all(LISTENER, outside)["main"])
    unstaged = build_snapshot(
        [only_web], pending=(), previous=Snapshot.empty(ROOT), templates=TEMPLATES
    )
    assert snap.listeners_version != unstaged.listeners_version


def test_an_override_new_in_a_rollout_is_resolved_afresh_when_the_rollout_ends():
    """A per-scope override that first appears in the staged version keeps its fingerprint
    when the rollout ends, yet whom it applies to changes (its plugin's selector): it is
    not carried into the next snapshot, so proxies outside the last step get it."""
    scope = {
        "scope.wasmxds.io/hosts": "api.example.com",
        "scope.wasmxds.io/override.strict.path-prefixes": "/checkout",
        "scope.wasmxds.io/override.strict.config": '{"limit": 5}',
    }
    old = resources(pluginConfig={"v": 1}, selector={"matchLabels": {"app": "foo"}})
    plugin = dataclasses.replace(
        make_plugin("p", pluginConfig={"v": 2}, selector={"matchLabels": {"app": "bar"}}),
        annotations=scope,
    )
    new = plugin_resources(plugin, Ready(module_for(plugin)), DELIVERY, runtime="v8")
    override = f"{NAME}~strict"
    during = build_snapshot(
        [new], pending=(), previous=Snapshot.empty(ROOT), staged={NAME: Staged(old, 10)}
    )
    outside = node_at(10, 100, app="bar")
    assert during.ecds_for(outside, override) is during.ecds[override].noop  # v1: app=foo
    done = build_snapshot([new], pending=(), previous=during)
    assert done.ecds[override].fingerprint == during.ecds[override].fingerprint
    done.inherit(during)
    assert done.ecds_for(outside, override) is done.ecds[override].active
