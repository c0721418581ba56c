"""Streams of one class share responses keyed by the shared response they last applied.

That token stands for what a stream holds only while everything it holds came
from shared responses: whatever else changes the holding (a name dropped, a
name asked for again) must make the stream key by content, or it would borrow
the answer of a peer that holds more.
"""

from __future__ import annotations

from tests.factories import make_node, make_plugin
from tests.xds.helpers import ack, maybe_response, names_in, next_response, request, snapshot_of
from tests.xds.test_delta import maybe, req, respond
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS

A = make_plugin("a")
B = make_plugin("b")
A2 = make_plugin("a", pluginConfig={"v": 2})


def test_sotw_peers_of_one_class_share_by_token_after_a_shared_push():
    """Two streams of a class that took the same pushes hold the same token and share."""
    first = snapshot_of(A, B)
    streams = [SotwStream(make_node(f"p{i}")) for i in range(2)]
    for stream in streams:
        stream.handle(request("default.a", "default.b"))
        ack(stream, next_response(stream, first), "default.a", "default.b")
    second = snapshot_of(A2, B, previous=first)
    for stream in streams:
        ack(stream, next_response(stream, second), "default.a", "default.b")
    tokens = {id(stream.types[ECDS].holding) for stream in streams}
    assert len(tokens) == 1
    assert None not in {stream.types[ECDS].holding for stream in streams}
    assert second.shared_responses(streams[0].node) == 1


def test_sotw_stream_that_dropped_a_name_does_not_borrow_a_peers_empty_answer():
    """Dropping a name and asking for it again resends it, though a class peer that still
    holds it is told nothing under the token both streams had."""
    first = snapshot_of(A, B)
    dropping, steady = SotwStream(make_node("p1")), SotwStream(make_node("p2"))
    for stream in (dropping, steady):
        stream.handle(request("default.a", "default.b"))
        ack(stream, next_response(stream, first), "default.a", "default.b")
    second = snapshot_of(A2, B, previous=first)
    for stream in (dropping, steady):
        ack(stream, next_response(stream, second), "default.a", "default.b")
    # The peer asks again with nothing changed: "nothing to send" is memoized for its key.
    state = steady.types[ECDS]
    steady.handle(request("default.a", "default.b", nonce=state.last_nonce))
    assert maybe_response(steady, second) is None
    state = dropping.types[ECDS]
    dropping.handle(request("default.a", nonce=state.last_nonce))
    assert maybe_response(dropping, second) is None  # b left: nothing to send
    dropping.handle(request("default.a", "default.b", nonce=state.last_nonce))
    assert names_in(next_response(dropping, second)) == ["default.b"]


def test_delta_stream_asking_again_gets_the_resource_though_its_peer_is_told_nothing():
    """A delta client subscribing to a name it holds must get it again (spec), even when a
    class peer with the same token has nothing to receive."""
    first = snapshot_of(A, B)
    asking, steady = DeltaStream(make_node("p1")), DeltaStream(make_node("p2"))
    for stream in (asking, steady):
        stream.handle(req("default.a", "default.b"))
        stream.handle(req(nonce=respond(stream, first).nonce))
    second = snapshot_of(A2, B, previous=first)
    for stream in (asking, steady):
        stream.handle(req(nonce=respond(stream, second).nonce))
    assert asking.types[ECDS].holding is steady.types[ECDS].holding is not None
    steady.handle(req(nonce=steady.types[ECDS].last_nonce))
    assert maybe(steady, second) is None
    asking.handle(req("default.b", nonce=asking.types[ECDS].last_nonce))
    response = respond(asking, second)
    assert [r.name for r in response.resources] == ["default.b"]
