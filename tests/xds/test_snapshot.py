"""Snapshots: per-class resolution, shared bytes, change detection."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from tests.factories import make_node, make_plugin
from tests.xds.helpers import snapshot_of
from wasmxds.translate.filters import FilterKind, StandIn, standin_config
from wasmxds.xds.resources import prepare


def test_resources_are_shared_across_nodes_of_a_class():
    """Two nodes with the same namespace and labels get the very same prepared object."""
    snap = snapshot_of(make_plugin("a"))
    first = snap.ecds_for(make_node("n1", app="x"), "default.a")
    second = snap.ecds_for(make_node("n2", app="x"), "default.a")
    assert first is not None
    assert first is second


def test_unchanged_plugin_reuses_prepared_bytes():
    """Rebuilding a snapshot with an unchanged plugin keeps its prepared resource."""
    previous = snapshot_of(make_plugin("a"))
    current = snapshot_of(make_plugin("a"), make_plugin("b"), previous=previous)
    assert current.ecds["default.a"].active is previous.ecds["default.a"].active
    assert current.changed_names(previous) == {"default.b"}


def test_changed_names_cover_edits_deletes_and_pending():
    """Edited, deleted and newly pending/settled names all count as changed."""
    previous = snapshot_of(make_plugin("a"), make_plugin("b"))
    current = snapshot_of(
        make_plugin("a", pluginConfig={"x": 1}), previous=previous, pending=("default.c",)
    )
    assert current.changed_names(previous) == {"default.a", "default.b", "default.c"}


def test_selector_change_is_a_change_even_with_same_filter():
    """Targeting edits wake subscribers although the filter bytes are equal."""
    previous = snapshot_of(make_plugin("a"))
    current = snapshot_of(make_plugin("a", selector={"matchLabels": {"v": "1"}}), previous=previous)
    assert current.changed_names(previous) == {"default.a"}


def test_version_is_deterministic():
    """The same plugins give the same snapshot version."""
    assert snapshot_of(make_plugin("a")).version == snapshot_of(make_plugin("a")).version


def test_prepared_resource_encodings_parse():
    """Pre-encoded SotW and delta fields are valid protobuf for the real messages."""
    resource = prepare("ns.p", standin_config("ns.p", FilterKind.HTTP, StandIn.DENY_ALL))
    sotw = discovery_pb2.DiscoveryResponse.FromString(resource.sotw_field)
    assert sotw.resources[0].type_url.endswith("TypedExtensionConfig")
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(resource.delta_field)
    assert delta.resources[0].name == "ns.p"
    assert delta.resources[0].version == resource.version
    assert delta.resources[0].resource == sotw.resources[0]


def test_version_changes_with_content_only():
    """Equal content gives equal versions; different content different ones."""
    deny = prepare("ns.p", standin_config("ns.p", FilterKind.HTTP, StandIn.DENY_ALL))
    again = prepare("ns.p", standin_config("ns.p", FilterKind.HTTP, StandIn.DENY_ALL))
    allow = prepare("ns.p", standin_config("ns.p", FilterKind.HTTP, StandIn.ALLOW_ALL))
    assert deny.version == again.version
    assert deny.version != allow.version
