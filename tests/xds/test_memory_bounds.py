"""What streams make the server hold is bounded by what is connected now, not by what ever was."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.factories import make_node, make_plugin
from tests.xds.helpers import next_response, request, snapshot_of
from tests.xds.test_delta import req, respond
from tests.xds.test_server import Client, serving
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.node import ClassKey
from wasmxds.xds.server import XdsServer
from wasmxds.xds.snapshot import MAX_SHARED_RESPONSES
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.stream import MAX_TYPES, LimitExceeded
from wasmxds.xds.types import ECDS

A = make_plugin("a")
B = make_plugin("b")


def labelled(client: Client, **labels: str) -> Client:
    client.node.metadata.update({"LABELS": labels})
    return client


async def sessions_become(server: XdsServer, count: int) -> None:
    async with asyncio.timeout(5):
        while len(server.sessions) != count:
            await asyncio.sleep(0.01)


async def test_class_memo_goes_with_the_last_stream_of_the_class():
    """A class's memo stays while any of its streams is open and is dropped after the last."""
    async with serving() as (server, channel):
        server.publish(snapshot_of(A, B))
        a1, a2 = (labelled(Client(channel, f"a{i}"), app="x") for i in (1, 2))
        other = labelled(Client(channel, "b1"), app="y")
        for client in (a1, a2, other):
            await client.send(request("default.a", "default.b"))
            await client.receive()
        snapshot = server.snapshot
        assert snapshot.memoized_classes == 2
        await a1.close()
        await sessions_become(server, 2)
        assert snapshot.memoized_classes == 2, "another stream of the class is still open"
        await a2.close()
        await sessions_become(server, 1)
        assert snapshot.memoized_classes == 1
        await other.close()
        await sessions_become(server, 0)
        assert snapshot.memoized_classes == 0


async def test_a_published_snapshot_releases_the_previous_ones_memos():
    """Once a newer snapshot is current, the old one keeps no per-class memo."""
    async with serving() as (server, channel):
        first = snapshot_of(A)
        server.publish(first)
        client = labelled(Client(channel), app="x")
        await client.send(request("default.a"))
        await client.receive()
        assert first.memoized_classes == 1
        server.publish(snapshot_of(A, B, previous=first))
        assert first.memoized_classes == 0
        await client.close()


def test_names_no_plugin_has_are_not_memoized():
    """Asking for names that do not exist leaves nothing behind in the snapshot."""
    snap = snapshot_of(A)
    node = make_node(app="x")
    found = snap.resolve(ECDS, node, [f"default.absent-{i}" for i in range(500)])
    assert found == {}
    assert snap.memoized_classes == 0


def test_classes_without_open_streams_are_not_memoized():
    """With the live classes bound, resolving for another class (an admin view) memoizes nothing."""
    snap = snapshot_of(A)
    live: dict[ClassKey, int] = {}
    snap.limit_memos_to(live)
    node = make_node(app="x")
    assert list(snap.resolve(ECDS, node, ["default.a"])) == ["default.a"]
    assert snap.memoized_classes == 0
    live[node.class_key] = 1
    snap.resolve(ECDS, node, ["default.a"])
    assert snap.memoized_classes == 1


def test_shared_responses_of_a_class_are_capped():
    """A stream that keeps changing its subscription cannot grow its class's shared responses."""
    snap = snapshot_of(A)
    stream = SotwStream(make_node(app="x"))
    stream.handle(request("default.a"))
    response = next_response(stream, snap)
    for i in range(MAX_SHARED_RESPONSES * 3):
        names = ("default.a", f"default.absent-{i}")
        stream.handle(request(*names, nonce=response.nonce, version=response.version_info))
        assert stream.next_response(ECDS, snap) is None  # nothing new exists to send
    assert snap.shared_responses(stream.node) == MAX_SHARED_RESPONSES


async def test_too_many_names_are_refused_with_resource_exhausted():
    """A subscription beyond --max-resource-names ends the stream with a sentence naming it."""
    async with serving(max_resource_names=5) as (server, channel):
        server.publish(snapshot_of(A))
        within = Client(channel, "within")
        await within.send(request("default.a", *(f"default.n{i}" for i in range(4))))
        await within.receive()
        beyond = Client(channel, "beyond")
        await beyond.send(request("default.a", *(f"default.n{i}" for i in range(5))))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await beyond.receive()
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = failure.value.details() or ""
        assert "6 resource names" in message, message
        assert "--max-resource-names" in message, message
        await within.close()


def test_delta_subscriptions_are_bounded_in_total():
    """Delta subscriptions accumulate; the bound applies to the total, and to initial versions."""
    snap = snapshot_of(A)
    stream = DeltaStream(make_node(), max_names=3)
    stream.handle(req("default.a", "default.b"))
    response = respond(stream, snap)
    stream.handle(req("default.c", nonce=response.nonce))
    with pytest.raises(LimitExceeded, match="4 resource names"):
        stream.handle(req("default.d"))
    claimed = {f"default.x{i}": "v" for i in range(4)}
    with pytest.raises(LimitExceeded, match="--max-resource-names"):
        DeltaStream(make_node(), max_names=3).handle(req(initial=claimed))


def test_resource_types_per_stream_are_bounded():
    """A stream cannot make the server hold state for an unbounded number of type URLs."""
    stream = SotwStream(make_node())
    for i in range(MAX_TYPES):
        stream.handle(request(type_url=f"type.googleapis.com/made.up.T{i}"))
    with pytest.raises(LimitExceeded, match="resource type"):
        stream.handle(request(type_url="type.googleapis.com/made.up.one_more"))


def test_delta_nack_names_only_resources_sent():
    """Removals of names a client merely claimed never become NACK metric labels."""
    snap = snapshot_of(A)
    stream = DeltaStream(make_node())
    claimed = {f"default.claimed-{i}": "v1" for i in range(3)}
    stream.handle(req("default.a", initial=claimed))
    response = respond(stream, snap)
    assert sorted(response.removed_resources) == sorted(claimed)
    assert stream.in_flight_names(ECDS) == ["default.a"]
