"""The SotW stream state machine: subscriptions, nonces, ACK/NACK and what gets sent."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

from tests.factories import make_node, make_plugin
from tests.xds.helpers import (
    ROOT,
    ack,
    maybe_response,
    nack,
    names_in,
    next_response,
    request,
    snapshot_of,
)
from wasmxds.errors import FetchError
from wasmxds.modules.types import Failed
from wasmxds.translate.typeurls import HTTP_RBAC, HTTP_WASM
from wasmxds.xds.sotw import ProtocolError, SotwStream, Verdict

A = make_plugin("a")
B = make_plugin("b")


def _unpack(response: DiscoveryResponse, index: int = 0) -> extension_pb2.TypedExtensionConfig:
    config = extension_pb2.TypedExtensionConfig()
    response.resources[index].Unpack(config)
    return config


def test_new_subscription_is_answered_at_once():
    """The first request for an existing name gets it immediately, with a version and nonce."""
    stream = SotwStream(make_node())
    assert stream.handle(request("default.a")) is Verdict.INITIAL
    response = next_response(stream, snapshot_of(A))
    assert names_in(response) == ["default.a"]
    assert response.version_info
    assert response.nonce
    assert _unpack(response).typed_config.type_url == HTTP_WASM


def test_ack_records_version_and_nothing_is_resent():
    """After an ACK of current content there is nothing more to send."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A)
    stream.handle(request("default.a"))
    response = next_response(stream, snap)
    assert ack(stream, response, "default.a") is Verdict.ACK
    assert stream.types[response.type_url].acked_version == response.version_info
    assert maybe_response(stream, snap) is None


def test_one_response_in_flight_per_type():
    """A change waits for the ACK of the previous response before it is sent."""
    stream = SotwStream(make_node())
    stream.handle(request("default.a"))
    first = next_response(stream, snapshot_of(A))
    changed = snapshot_of(make_plugin("a", url="http://m/new.wasm"))
    assert maybe_response(stream, changed) is None
    ack(stream, first, "default.a")
    second = next_response(stream, changed)
    assert second.version_info != first.version_info


def test_stale_nonce_is_ignored():
    """A request that answers an older nonce changes nothing."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a"))
    first = next_response(stream, snap)
    ack(stream, first, "default.a")
    stream.handle(request("default.a", "default.b", nonce=first.nonce, version=first.version_info))
    second = next_response(stream, snap)
    # The client has not seen `second` yet and answers `first` again: stale.
    assert stream.handle(request("default.a", nonce=first.nonce)) is Verdict.STALE
    assert stream.types[second.type_url].names == {"default.a", "default.b"}


def test_only_changed_resources_are_sent():
    """A response carries only the names whose content changed."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a", "default.b"))
    first = next_response(stream, snap)
    assert sorted(names_in(first)) == ["default.a", "default.b"]
    ack(stream, first, "default.a", "default.b")
    changed = snapshot_of(A, make_plugin("b", pluginConfig={"k": "v"}), previous=snap)
    assert names_in(next_response(stream, changed)) == ["default.b"]


def test_nacked_content_is_not_resent_until_it_changes():
    """A rejected resource is parked; a new version of it is sent."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A)
    stream.handle(request("default.a"))
    response = next_response(stream, snap)
    assert nack(stream, response, "default.a") is Verdict.NACK
    state = stream.types[response.type_url]
    assert state.last_error == "rejected"
    assert state.nacks == 1
    assert maybe_response(stream, snap) is None
    fixed = snapshot_of(make_plugin("a", url="http://m/fixed.wasm"), previous=snap)
    assert names_in(next_response(stream, fixed)) == ["default.a"]


def test_nack_of_several_resources_isolates_the_bad_one():
    """After a multi-resource NACK each resource is resent alone; only the bad one stays parked."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a", "default.b"))
    both = next_response(stream, snap)
    nack(stream, both, "default.a", "default.b")
    single = next_response(stream, snap)
    assert len(single.resources) == 1
    first_name = names_in(single)[0]
    ack(stream, single, "default.a", "default.b")
    other = next_response(stream, snap)
    assert len(other.resources) == 1
    assert names_in(other) != [first_name]
    nack(stream, other, "default.a", "default.b")
    assert maybe_response(stream, snap) is None
    state = stream.types[single.type_url]
    assert set(state.held) == {first_name}
    assert set(state.rejected) == set(names_in(other))


def test_unknown_name_is_absent_until_a_plugin_appears():
    """A name without a plugin gets nothing; it is sent when the plugin is created."""
    stream = SotwStream(make_node())
    empty = snapshot_of()
    stream.handle(request("default.a"))
    assert maybe_response(stream, empty) is None
    assert names_in(next_response(stream, snapshot_of(A, previous=empty))) == ["default.a"]


def test_pending_name_waits_for_its_module():
    """A plugin whose module is still being fetched is not sent, not even as a stand-in."""
    stream = SotwStream(make_node())
    stream.handle(request("default.a"))
    assert maybe_response(stream, snapshot_of(pending=("default.a",))) is None


def test_out_of_scope_name_gets_allow_all_noop():
    """A plugin that does not select the node is served as an allow-all RBAC."""
    plugin = make_plugin("a", selector={"matchLabels": {"app": "web"}})
    stream = SotwStream(make_node(app="api"))
    stream.handle(request("default.a"))
    config = _unpack(next_response(stream, snapshot_of(plugin)))
    assert config.typed_config.type_url == HTTP_RBAC
    rbac = rbac_pb2.RBAC()
    config.typed_config.Unpack(rbac)
    assert not rbac.HasField("rules")


def test_failed_module_serves_standin_then_real_filter():
    """A failed module is a deny-all stand-in, replaced by the filter when it arrives."""
    stream = SotwStream(make_node())
    failed = {"default.a": Failed(FetchError("boom"), attempts=1, next_retry_in=1)}
    snap = snapshot_of(A, failed=failed)
    stream.handle(request("default.a"))
    standin = next_response(stream, snap)
    rbac = rbac_pb2.RBAC()
    _unpack(standin).typed_config.Unpack(rbac)
    assert rbac.HasField("rules")
    ack(stream, standin, "default.a")
    recovered = next_response(stream, snapshot_of(A, previous=snap))
    assert _unpack(recovered).typed_config.type_url == HTTP_WASM


def test_deleted_plugin_is_replaced_by_noop():
    """SotW cannot delete: a proxy holding a deleted plugin gets the no-op instead."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A)
    stream.handle(request("default.a"))
    ack(stream, next_response(stream, snap), "default.a")
    gone = snapshot_of(previous=snap)
    replacement = next_response(stream, gone)
    assert _unpack(replacement).typed_config.type_url == HTTP_RBAC
    ack(stream, replacement, "default.a")
    assert maybe_response(stream, gone) is None


def test_resubscribe_resends():
    """Leaving and re-joining a subscription resends the resource even if unchanged."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A)
    stream.handle(request("default.a"))
    first = next_response(stream, snap)
    ack(stream, first, "default.a")
    stream.handle(request(nonce=first.nonce, version=first.version_info))
    assert maybe_response(stream, snap) is None
    stream.handle(request("default.a", nonce=first.nonce, version=first.version_info))
    assert names_in(next_response(stream, snap)) == ["default.a"]


def test_unsubscribe_forgets_the_name():
    """Unsubscribed names are dropped from what the stream holds."""
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a", "default.b"))
    first = next_response(stream, snap)
    ack(stream, first, "default.a")
    assert set(stream.types[first.type_url].held) == {"default.a"}


def test_reconnect_with_current_version_sends_nothing():
    """A client resuming with the version it holds gets no resend; a different version gets one."""
    snap = snapshot_of(A)
    stream = SotwStream(make_node())
    stream.handle(request("default.a"))
    version = next_response(stream, snap).version_info

    resumed = SotwStream(make_node())
    resumed.handle(request("default.a", version=version))
    assert maybe_response(resumed, snap) is None
    assert resumed.types[next(iter(resumed.types))].acked_version == version

    outdated = SotwStream(make_node())
    outdated.handle(request("default.a", version="0123456789abcdef"))
    assert names_in(next_response(outdated, snap)) == ["default.a"]


def test_versions_are_content_hashes():
    """Two streams holding the same content report the same version_info."""
    snap = snapshot_of(A)
    versions = set()
    for node_id in ("x", "y"):
        stream = SotwStream(make_node(node_id))
        stream.handle(request("default.a"))
        versions.add(next_response(stream, snap).version_info)
    assert len(versions) == 1


def test_root_namespace_constant_is_used():
    """The snapshot scopes plugins with the configured root namespace."""
    assert snapshot_of().root_namespace == ROOT


def test_missing_type_url_is_a_protocol_error():
    """ADS requests must name their type."""
    with pytest.raises(ProtocolError):
        SotwStream(make_node()).handle(request("x", type_url=""))


def test_listeners_are_full_state_and_wildcard():
    """SotW LDS: an empty first request means all; each response carries the full set."""
    from tests.xds.test_snapshot_listeners import listener_snapshot
    from wasmxds.xds.types import LISTENER

    stream = SotwStream(make_node())
    snap = listener_snapshot(A)
    stream.handle(request(type_url=LISTENER))
    payload = stream.next_response(LISTENER, snap)
    assert payload is not None
    first = DiscoveryResponse.FromString(payload)
    assert len(first.resources) == 1
    stream.handle(request(type_url=LISTENER, nonce=first.nonce, version=first.version_info))
    assert stream.next_response(LISTENER, snap) is None
    grown = listener_snapshot(A, B, previous=snap)
    payload = stream.next_response(LISTENER, grown)
    assert payload is not None
    assert len(DiscoveryResponse.FromString(payload).resources) == 1


def test_rejected_listener_set_is_not_resent():
    """A NACKed LDS state waits until the listeners change."""
    from tests.xds.test_snapshot_listeners import listener_snapshot
    from wasmxds.xds.types import LISTENER

    stream = SotwStream(make_node())
    snap = listener_snapshot(A)
    stream.handle(request(type_url=LISTENER))
    payload = stream.next_response(LISTENER, snap)
    assert payload is not None
    sent = DiscoveryResponse.FromString(payload)
    stream.handle(request(type_url=LISTENER, nonce=sent.nonce, error="bad listener"))
    assert stream.next_response(LISTENER, snap) is None
    assert stream.next_response(LISTENER, listener_snapshot(B, previous=snap)) is not None
