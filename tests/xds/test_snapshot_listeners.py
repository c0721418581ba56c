"""Listener mode in the snapshot: per-class listeners, sharing, what changes wake LDS."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from tests.factories import make_node, make_plugin
from tests.translate.test_listeners import ROUTER, http_template
from tests.xds.helpers import snapshot_of
from wasmxds.api.objects import Origin
from wasmxds.api.templates import ClusterTemplate, NodeSelector, Templates
from wasmxds.xds.resources import ListenerTag
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.types import CLUSTER, LISTENER

TEMPLATES = Templates(
    (http_template(("router", ROUTER)),),
    (
        ClusterTemplate(
            "c",
            NodeSelector(frozenset({"default"})),
            cluster_pb2.Cluster(name="upstream"),
            Origin("c.yaml", 1),
            "c1",
        ),
    ),
)


def listener_snapshot(
    *plugins: Any, with_template: bool = True, previous: Snapshot | None = None
) -> Snapshot:
    templates = TEMPLATES if with_template else Templates()
    return snapshot_of(*plugins, previous=previous, templates=templates)


def test_nodes_of_a_class_share_listener_objects():
    """Two proxies with the same namespace and labels get the same prepared listener."""
    snap = listener_snapshot(make_plugin("a"))
    first = snap.resolve_all(LISTENER, make_node("n1", app="x"))["main"]
    second = snap.resolve_all(LISTENER, make_node("n2", app="x"))["main"]
    assert first is second
    assert isinstance(first.tag, ListenerTag)
    assert first.tag.references == {"default.a"}


def test_identical_listeners_are_shared_across_classes():
    """Classes that end up with the same listener share its bytes."""
    snap = listener_snapshot(make_plugin("a"))
    web = snap.resolve_all(LISTENER, make_node("n1", app="web"))["main"]
    api = snap.resolve_all(LISTENER, make_node("n2", app="api"))["main"]
    assert web is api


def test_selector_gives_classes_different_listeners():
    """A plugin selecting one label class only appears in that class's listener."""
    snap = listener_snapshot(make_plugin("a", selector={"matchLabels": {"app": "web"}}))
    web = snap.resolve_all(LISTENER, make_node("n1", app="web"))["main"]
    api = snap.resolve_all(LISTENER, make_node("n2", app="api"))["main"]
    assert web.version != api.version


def test_cluster_templates_respect_node_selector():
    """Cluster templates go only to the proxies they select."""
    snap = listener_snapshot()
    assert set(snap.resolve_all(CLUSTER, make_node(namespace="default"))) == {"upstream"}
    assert snap.resolve_all(CLUSTER, make_node(namespace="other")) == {}


def test_config_only_change_leaves_listeners_alone():
    """Editing pluginConfig changes ECDS only: listeners keep their version (no drain)."""
    before = listener_snapshot(make_plugin("a", pluginConfig={"v": 1}))
    after = listener_snapshot(make_plugin("a", pluginConfig={"v": 2}), previous=before)
    assert not after.listeners_changed(before)
    node = make_node()
    assert (
        before.resolve_all(LISTENER, node)["main"].version
        == after.resolve_all(LISTENER, node)["main"].version
    )


def test_placement_change_wakes_listeners():
    """Changing phase, priority or selector is a listener change."""
    before = listener_snapshot(make_plugin("a"))
    for change in ({"phase": "AUTHN"}, {"priority": 3}, {"selector": {"matchLabels": {"x": "y"}}}):
        after = listener_snapshot(make_plugin("a", **change), previous=before)
        assert after.listeners_changed(before), change
