"""A new snapshot takes over the per-class resolutions of names whose entries did not change."""

from __future__ import annotations

from tests.factories import make_node, make_plugin
from tests.xds.helpers import snapshot_of
from wasmxds.xds.types import ECDS

NODES = [make_node("x-1", app="x"), make_node("y-1", app="y"), make_node("bare")]
NAMES = ["default.a", "default.b", "default.c", "default.gone"]


def _resolved(snapshot, node) -> dict[str, str]:
    return {name: r.version for name, r in snapshot.resolve(ECDS, node, NAMES).items()}


def test_carried_resolutions_equal_fresh_ones_and_changed_names_are_not_carried():
    """Unchanged plugins keep each class's answer; a changed config or selector, or a
    plugin gone, is resolved afresh; every answer equals a snapshot built without memos."""
    first_plugins = [
        make_plugin("a"),
        make_plugin("b", selector={"matchLabels": {"app": "x"}}),
        make_plugin("c", selector={"matchLabels": {"app": "y"}}),
        make_plugin("gone"),
    ]
    first = snapshot_of(*first_plugins)
    for node in NODES:
        _resolved(first, node)  # every class resolves every name, as its streams would
    second_plugins = [
        make_plugin("a", pluginConfig={"v": 2}),  # content changed
        make_plugin("b", selector={"matchLabels": {"app": "y"}}),  # targeting changed
        make_plugin("c", selector={"matchLabels": {"app": "y"}}),  # unchanged
    ]
    second = snapshot_of(*second_plugins, previous=first)
    assert second.inherit(first) == len(NODES)  # c, for each class
    fresh = snapshot_of(*second_plugins, previous=first)
    for node in NODES:
        assert _resolved(second, node) == _resolved(fresh, node)
    assert _resolved(second, NODES[1])["default.b"] == second.ecds["default.b"].active.version
    assert _resolved(second, NODES[0])["default.b"] == second.ecds["default.b"].noop.version


def test_classes_without_streams_are_not_carried():
    """A class whose last stream left is not given memos in the new snapshot."""
    first = snapshot_of(make_plugin("a"))
    for node in NODES:
        _resolved(first, node)
    second = snapshot_of(make_plugin("a"), previous=first)
    second.limit_memos_to({NODES[0].class_key})
    assert second.inherit(first) == 1
    assert second.memoized_classes == 1
