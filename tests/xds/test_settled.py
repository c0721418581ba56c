"""``settled``: a stream that has nothing left to send for a snapshot says so without recomputing.

The server skips waking a stream's writer after a request (almost always the
ACK of a push) when the stream is settled, so "settled" must imply "responses()
would send nothing". Besides targeted cases, random request sequences compare
every response with a stream that never takes the shortcut.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from tests.factories import make_node, make_plugin
from tests.xds.helpers import ack, nack, next_response, request, snapshot_of
from tests.xds.test_delta import req, respond
from tests.xds.test_server import Client, serving
from tests.xds.test_snapshot_listeners import listener_snapshot
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.resources import ResponseKey
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS, LISTENER

A = make_plugin("a")
B = make_plugin("b")


def test_sotw_ack_of_a_push_settles_until_the_next_snapshot():
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a", "default.b"))
    assert not stream.settled(snap)
    ack(stream, next_response(stream, snap), "default.a", "default.b")
    assert stream.settled(snap)
    assert stream.responses(snap) == []
    changed = snapshot_of(make_plugin("a", pluginConfig={"v": 2}), B, previous=snap)
    assert not stream.settled(changed)
    assert len(stream.responses(changed)) == 1


def test_sotw_subscription_change_in_an_ack_unsettles():
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a"))
    response = next_response(stream, snap)
    ack(stream, response, "default.a", "default.b")
    assert not stream.settled(snap)
    assert list(stream.types[ECDS].held) == ["default.a"]
    stream.responses(snap)
    assert set(stream.types[ECDS].held) == {"default.a", "default.b"}


def test_sotw_nack_isolation_stays_unsettled_until_every_suspect_is_resent():
    stream = SotwStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(request("default.a", "default.b"))
    nack(stream, next_response(stream, snap), "default.a", "default.b")
    assert not stream.settled(snap)
    first = next_response(stream, snap)
    ack(stream, first, "default.a", "default.b")
    assert not stream.settled(snap), "the second suspect is still to be sent"
    second = next_response(stream, snap)
    ack(stream, second, "default.a", "default.b")
    assert stream.settled(snap)


def test_sotw_blocked_removal_unsettles_until_the_listener_ack():
    """ECDS removal waits for the LDS ACK, which must wake the stream."""
    stream = SotwStream(make_node())
    snap = listener_snapshot(A)
    stream.handle(request(type_url=LISTENER))
    stream.handle(request("default.a"))
    lds = _sotw(stream.next_response(LISTENER, snap))
    stream.handle(request(type_url=LISTENER, nonce=lds.nonce, version=lds.version_info))
    ecds = next_response(stream, snap)
    ack(stream, ecds, "default.a")
    assert stream.settled(snap)
    gone = listener_snapshot(previous=snap)
    update = _sotw(stream.next_response(LISTENER, gone))
    assert stream.next_response(ECDS, gone) is None  # blocked: LDS in flight
    stream.handle(request(type_url=LISTENER, nonce=update.nonce, version=update.version_info))
    assert not stream.settled(gone)
    assert stream.next_response(ECDS, gone) is not None


def test_delta_ack_settles_and_subscribe_unsettles():
    stream = DeltaStream(make_node())
    snap = snapshot_of(A, B)
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap).nonce))
    assert stream.settled(snap)
    assert stream.responses(snap) == []
    stream.handle(req("default.b"))
    assert not stream.settled(snap)
    assert [r.name for r in respond(stream, snap).resources] == ["default.b"]


def test_delta_blocked_removal_unsettles_until_the_listener_ack():
    stream = DeltaStream(make_node())
    snap = listener_snapshot(A)
    stream.handle(req(type_url=LISTENER))
    stream.handle(req("default.a"))
    stream.handle(req(nonce=respond(stream, snap, LISTENER).nonce, type_url=LISTENER))
    stream.handle(req(nonce=respond(stream, snap).nonce))
    gone = listener_snapshot(previous=snap)
    update = respond(stream, gone, LISTENER)
    assert stream.next_response(ECDS, gone) is None
    stream.handle(req(nonce=update.nonce, type_url=LISTENER))
    assert not stream.settled(gone)
    assert list(respond(stream, gone).removed_resources) == ["default.a"]


def _sotw(payload: bytes | None) -> Any:
    assert payload is not None
    return discovery_pb2.DiscoveryResponse.FromString(payload)


# -- random sequences against a stream that never takes the shortcut ---------------


class _SotwReference(SotwStream):
    """Recomputes every response: neither the settled shortcut nor the per-class memo."""

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        if (state := self.types.get(type_url)) is not None:
            state.settled_on = None
        return super().next_response(type_url, snapshot)

    def _shared_key(self, state: Any) -> ResponseKey | None:
        return None


class _DeltaReference(DeltaStream):
    """Recomputes every response: neither the settled shortcut nor the per-class memo."""

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        if (state := self.types.get(type_url)) is not None:
            state.settled_on = None
        return super().next_response(type_url, snapshot)

    def _shared_key(self, state: Any) -> ResponseKey | None:
        return None


NAMES = ("default.a", "default.b", "default.c")


def _random_snapshot(rng: random.Random, previous: Snapshot) -> Snapshot:
    plugins = []
    for name in "abc":
        if rng.random() < 0.25:
            continue  # deleted (or never there)
        spec: dict[str, Any] = {"pluginConfig": {"v": rng.randint(1, 2)}}
        if rng.random() < 0.3:
            spec["selector"] = {"matchLabels": {"app": rng.choice(["x", "y"])}}
        plugins.append(make_plugin(name, **spec))
    present = [p.resource_name for p in plugins]
    pending = tuple(n for n in NAMES if n not in present and rng.random() < 0.2)
    return snapshot_of(*plugins, previous=previous, pending=pending)


def _parse(delta: bool, payload: bytes) -> Any:
    kind = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
    return kind.FromString(payload)


def _requests(
    rng: random.Random, delta: bool, in_flight: dict[str, Any], subscribed: dict[str, set[str]]
) -> list[Any]:
    """One client move: answer a response (ACK/NACK), change a subscription, or a stale nonce."""
    type_url = rng.choice(sorted(subscribed))
    response = in_flight.get(type_url)
    move = rng.random()
    nonce = response.nonce if response is not None else ""
    names = subscribed[type_url]
    if move < 0.2 and type_url == ECDS:  # subscription change, maybe riding on an answer
        name = rng.choice(NAMES)
        leaving = name in names
        names.symmetric_difference_update({name})
        if delta:
            if leaving:
                return [req(unsubscribe=(name,), nonce=nonce, type_url=type_url)]
            return [req(name, nonce=nonce, type_url=type_url)]
        version = response.version_info if response is not None else ""
        return [request(*sorted(names), nonce=nonce, version=version, type_url=type_url)]
    if move < 0.25:
        nonce = "stale"
    error = "rejected" if move > 0.85 else None
    if delta:
        return [req(nonce=nonce, error=error, type_url=type_url)]
    version = response.version_info if response is not None and error is None else ""
    wanted = sorted(names) if type_url == ECDS else ()
    return [request(*wanted, nonce=nonce, version=version, error=error, type_url=type_url)]


class _Pair:
    """A stream taking every shortcut and one that never does, fed the same requests."""

    def __init__(self, node: Any, delta: bool, listeners: bool) -> None:
        self.fast: Any = DeltaStream(node) if delta else SotwStream(node)
        self.slow: Any = _DeltaReference(node) if delta else _SotwReference(node)
        self.subscribed: dict[str, set[str]] = {ECDS: {"default.a", "default.b"}}
        self.in_flight: dict[str, Any] = {}
        names = sorted(self.subscribed[ECDS])
        first = [req(*names)] if delta else [request(*names)]
        if listeners:
            self.subscribed[LISTENER] = set()
            first.insert(0, req(type_url=LISTENER) if delta else request(type_url=LISTENER))
        for message in first:
            self.handle(message)

    def handle(self, message: Any) -> None:
        assert self.fast.handle(message) == self.slow.handle(message)
        if message.response_nonce and message.response_nonce != "stale":
            self.in_flight.pop(message.type_url, None)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("listeners", [False, True], ids=["ecds", "with-lds"])
@pytest.mark.parametrize("seed", range(40))
def test_shortcuts_match_a_stream_that_always_recomputes(seed: int, delta: bool, listeners: bool):
    """Settled streams have nothing to send, and streams of one class share responses safely."""
    rng = random.Random(seed)
    # Two streams of one class (they share memoized responses) and one of another.
    nodes = [make_node("p1", app="x"), make_node("p2", app="x"), make_node("p3", app="y")]
    pairs = [_Pair(node, delta, listeners) for node in nodes]
    snapshot = listener_snapshot() if listeners else snapshot_of()
    for _ in range(90):
        step = rng.random()
        pair = rng.choice(pairs)
        if step < 0.2:
            snapshot = _random_snapshot(rng, snapshot)
        elif step < 0.6:
            for message in _requests(rng, delta, pair.in_flight, pair.subscribed):
                pair.handle(message)
        settled = pair.fast.settled(snapshot)
        fast_out, slow_out = pair.fast.responses(snapshot), pair.slow.responses(snapshot)
        assert fast_out == slow_out
        if settled:
            assert fast_out == [], "settled, yet there was something to send"
        for type_url, payload in fast_out:
            pair.in_flight[type_url] = _parse(delta, payload)


def test_streams_of_a_class_share_one_computed_response():
    snap = snapshot_of(A, B)
    streams = [SotwStream(make_node(f"p{i}")) for i in range(3)]
    for stream in streams:
        stream.handle(request("default.a", "default.b"))
    payloads = [stream.next_response(ECDS, snap) for stream in streams]
    assert snap.memoized_classes == 1
    assert snap.shared_responses(streams[0].node) == 1
    parsed = [_sotw(p) for p in payloads]
    assert len({(r.version_info, r.SerializeToString().count(b"default.a")) for r in parsed}) == 1
    assert [r.nonce for r in parsed] == ["1", "1", "1"]  # nonces are per stream


async def test_server_does_not_wake_the_writer_for_an_ack(monkeypatch: pytest.MonkeyPatch):
    """The ACK of a push leaves the stream's writer asleep; a new snapshot wakes it."""
    async with serving() as (server, channel):
        first = snapshot_of(A)
        server.publish(first)
        client = Client(channel)
        await client.send(request("default.a"))
        response = await client.receive()
        async with asyncio.timeout(5):
            while not server.sessions:
                await asyncio.sleep(0.01)
        session = server.sessions[0]
        calls = 0
        protocol = session.protocol
        original = type(protocol).responses

        def counting(self: Any, snapshot: Snapshot) -> list[tuple[str, bytes]]:
            nonlocal calls
            calls += self is protocol
            return original(self, snapshot)

        # Streams have slots: the method is counted on the class, for this stream only.
        monkeypatch.setattr(type(protocol), "responses", counting)
        await client.send(request("default.a", nonce=response.nonce, version=response.version_info))
        async with asyncio.timeout(5):
            while session.protocol.types[ECDS].acked_version != response.version_info:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert calls == 0
        server.publish(snapshot_of(make_plugin("a", pluginConfig={"v": 2}), previous=first))
        update = await client.receive()
        assert update.version_info != response.version_info
        assert calls == 1
        await client.close()
