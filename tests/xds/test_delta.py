"""The delta stream state machine: subscriptions, initial versions, removals, ACK/NACK."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from tests.factories import make_node, make_plugin
from tests.xds.helpers import snapshot_of
from tests.xds.test_snapshot_listeners import listener_snapshot
from wasmxds.translate.typeurls import HTTP_WASM
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.stream import ProtocolError, Verdict
from wasmxds.xds.types import ECDS, LISTENER

A = make_plugin("a")
B = make_plugin("b")


def req(
    *subscribe: str,
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
    type_url: str = ECDS,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return request


def maybe(stream: DeltaStream, snap: Snapshot, type_url: str = ECDS) -> Any:
    payload = stream.next_response(type_url, snap)
    return None if payload is None else discovery_pb2.DeltaDiscoveryResponse.FromString(payload)


def respond(stream: DeltaStream, snap: Snapshot, type_url: str = ECDS) -> Any:
    response = maybe(stream, snap, type_url)
    assert response is not None, "expected a response"
    return response


def versions(response: Any) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def test_subscribe_sends_named_resources_with_versions():
    """Subscribed names are sent as Resources carrying their own content-hash versions."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A, B)
    assert stream.handle(req("default.a")) is Verdict.INITIAL
    response = respond(stream, snap)
    assert versions(response) == {"default.a": snap.ecds["default.a"].active.version}
    config = extension_pb2.TypedExtensionConfig()
    response.resources[0].resource.Unpack(config)
    assert config.typed_config.type_url == HTTP_WASM
    assert response.nonce
    assert list(response.removed_resources) == []


def test_ack_then_only_changes_are_sent():
    """After an ACK a change sends just the changed resource."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(req("default.a", "default.b"))
    first = respond(stream, snap)
    assert stream.handle(req(nonce=first.nonce)) is Verdict.ACK
    assert maybe(stream, snap) is None
    changed = snapshot_of(A, make_plugin("b", pluginConfig={"x": 1}), previous=snap)
    assert list(versions(respond(stream, changed))) == ["default.b"]


def test_initial_resource_versions_skip_unchanged():
    """A reconnecting client that holds current versions gets nothing; stale ones are resent."""
    snap = snapshot_of(A, B)
    current = snap.ecds["default.a"].active.version
    stream = DeltaStream(make_node())
    stream.handle(req("default.a", "default.b", initial={"default.a": current, "default.b": "old"}))
    assert list(versions(respond(stream, snap))) == ["default.b"]


def test_subscription_changes_honoured_with_stale_nonce():
    """Subscribe/unsubscribe apply even when the nonce is not the current one."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(req("default.a"))
    first = respond(stream, snap)
    stream.handle(req(nonce=first.nonce))
    stream.handle(req("default.b"))
    second = respond(stream, snap)
    assert stream.handle(req("default.a", nonce=first.nonce)) is Verdict.STALE
    assert stream.types[ECDS].names == {"default.a", "default.b"}
    assert stream.types[ECDS].in_flight == second.nonce


def test_resubscribe_resends_even_if_held():
    """Subscribing to a name the client supposedly holds sends it again."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A)
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap).nonce))
    stream.handle(req("default.a"))
    assert list(versions(respond(stream, snap))) == ["default.a"]


def test_unsubscribe_forgets_and_sends_nothing():
    """An unsubscribed name is neither sent nor removed."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A)
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap).nonce, unsubscribe=("default.a",)))
    assert maybe(stream, snapshot_of(previous=snap)) is None
    assert stream.types[ECDS].names == set()


def test_deleted_plugin_is_removed():
    """Deleting a plugin puts its name in removed_resources, once."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A)
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap).nonce))
    gone = snapshot_of(previous=snap)
    removal = respond(stream, gone)
    assert list(removal.removed_resources) == ["default.a"]
    assert not removal.resources
    stream.handle(req(nonce=removal.nonce))
    assert maybe(stream, gone) is None


def test_leaving_scope_is_a_removal():
    """A plugin whose selector stops matching the proxy is removed (not a no-op)."""
    stream = DeltaStream(make_node(app="web"))
    snap = snapshot_of(make_plugin("a", selector={"matchLabels": {"app": "web"}}))
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap).nonce))
    moved = snapshot_of(make_plugin("a", selector={"matchLabels": {"app": "api"}}), previous=snap)
    assert list(respond(stream, moved).removed_resources) == ["default.a"]


def test_missing_and_pending_names_get_no_answer():
    """A subscribed name with no plugin, or one still downloading, is not answered at all.

    (Envoy would take a removal of a resource it never had as an answer and stay
    warming; silence lets its initial_fetch_timeout apply default_config.)
    """
    stream = DeltaStream(make_node())
    stream.handle(req("default.missing", "default.a"))
    assert maybe(stream, snapshot_of(pending=("default.a",))) is None
    arrived = snapshot_of(A)
    assert list(versions(respond(stream, arrived))) == ["default.a"]


def test_nack_parks_single_and_isolates_multiple():
    """A rejected single resource waits for new content; a rejected batch is retried one by one."""
    stream = DeltaStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(req("default.a", "default.b"))
    both = respond(stream, snap)
    assert stream.handle(req(nonce=both.nonce, error="bad")) is Verdict.NACK
    one = respond(stream, snap)
    assert len(one.resources) == 1
    stream.handle(req(nonce=one.nonce))
    other = respond(stream, snap)
    assert len(other.resources) == 1
    stream.handle(req(nonce=other.nonce, error="still bad"))
    assert maybe(stream, snap) is None
    assert stream.types[ECDS].last_error == "still bad"
    assert stream.types[ECDS].nacks == 2


def test_wildcard_listeners_and_their_removal():
    """LDS is wildcard: every listener is sent; a template that goes away is removed."""
    snap = listener_snapshot()
    stream = DeltaStream(make_node())
    stream.handle(req(type_url=LISTENER))
    sent = respond(stream, snap, LISTENER)
    assert set(versions(sent)) == {"main"}
    stream.handle(req(nonce=sent.nonce, type_url=LISTENER))
    empty = listener_snapshot(with_template=False, previous=snap)
    assert list(respond(stream, empty, LISTENER).removed_resources) == ["main"]


def test_ecds_removal_waits_for_the_listener_update():
    """An ECDS resource a listener references is removed only after the LDS update lands."""
    node = make_node()
    snap = listener_snapshot(A)
    stream = DeltaStream(node)
    stream.handle(req(type_url=LISTENER))
    stream.handle(req("default.a"))
    listeners = respond(stream, snap, LISTENER)
    stream.handle(req(nonce=listeners.nonce, type_url=LISTENER))
    ecds = respond(stream, snap)
    stream.handle(req(nonce=ecds.nonce))
    gone = listener_snapshot(previous=snap)
    update = respond(stream, gone, LISTENER)
    assert maybe(stream, gone) is None, "removed before the listener dropped the reference"
    stream.handle(req(nonce=update.nonce, type_url=LISTENER))
    assert list(respond(stream, gone).removed_resources) == ["default.a"]


def test_missing_type_url_is_a_protocol_error():
    """Delta ADS requests must name their type."""
    with pytest.raises(ProtocolError):
        DeltaStream(make_node()).handle(req("x", type_url=""))
