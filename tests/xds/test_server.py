"""The gRPC ADS server over a real loopback connection (no Envoy: a grpc.aio client plays it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.factories import make_plugin
from tests.xds.helpers import ROOT, names_in, request, snapshot_of
from wasmxds.settings import HostPort
from wasmxds.xds.server import XdsServer


class Client:
    """One ADS stream driven by the test."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "proxy-1") -> None:
        self.node = base_pb2.Node(id=node_id)
        self.outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def send(self, req: discovery_pb2.DiscoveryRequest, *, with_node: bool = True) -> None:
        if with_node:
            req.node.CopyFrom(self.node)
        await self.outbox.put(req)

    async def receive(self) -> discovery_pb2.DiscoveryResponse:
        async with asyncio.timeout(5):
            response: Any = await self.call.read()
        assert isinstance(response, discovery_pb2.DiscoveryResponse), response
        return response

    async def close(self) -> None:
        await self.outbox.put(None)
        self.call.cancel()


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[XdsServer, grpc.aio.Channel]]:
    server = XdsServer(address=HostPort("127.0.0.1", 0), root_namespace=ROOT, grace=0.5, **options)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_subscribe_ack_and_push_on_change():
    """A stream gets its resource, ACKs, and receives only the changed resource on publish."""
    async with serving() as (server, channel):
        first = snapshot_of(make_plugin("a"), make_plugin("b"))
        server.publish(first)
        client = Client(channel)
        await client.send(request("default.a"))
        response = await client.receive()
        assert names_in(response) == ["default.a"]
        await client.send(request("default.a", nonce=response.nonce, version=response.version_info))
        second = snapshot_of(
            make_plugin("a", pluginConfig={"v": 2}), make_plugin("b"), previous=first
        )
        async with asyncio.timeout(5):
            while server.sessions[0].protocol.types[response.type_url].acked_version == "":
                await asyncio.sleep(0.01)
        assert server.publish(second) == 1
        update = await client.receive()
        assert names_in(update) == ["default.a"]
        assert update.version_info != response.version_info
        await client.close()


async def test_publish_wakes_only_subscribers_of_changed_names():
    """Streams that do not hold a changed name are not woken."""
    async with serving() as (server, channel):
        first = snapshot_of(make_plugin("a"), make_plugin("b"))
        server.publish(first)
        clients = [Client(channel, "p-a"), Client(channel, "p-b")]
        for client, name in zip(clients, ("default.a", "default.b"), strict=True):
            await client.send(request(name))
            await client.receive()
        changed = snapshot_of(
            make_plugin("a", pluginConfig={"x": 1}), make_plugin("b"), previous=first
        )
        assert server.publish(changed) == 1
        for client in clients:
            await client.close()


async def test_streams_wait_for_the_first_snapshot():
    """A proxy that connects before the first snapshot is answered once it is published."""
    async with serving() as (server, channel):
        client = Client(channel)
        await client.send(request("default.a"))
        await asyncio.sleep(0)  # let the stream reach the server before publishing
        server.publish(snapshot_of(make_plugin("a")))
        assert names_in(await client.receive()) == ["default.a"]
        await client.close()


async def test_first_request_without_node_is_refused():
    """The first request must identify the proxy."""
    async with serving() as (server, channel):
        server.publish(snapshot_of())
        client = Client(channel)
        await client.send(request("default.a"), with_node=False)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await client.receive()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_request_without_type_url_is_refused():
    """ADS requests must carry a type URL."""
    async with serving() as (server, channel):
        server.publish(snapshot_of())
        client = Client(channel)
        await client.send(request("default.a", type_url=""))
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await client.receive()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "type_url" in (failure.value.details() or "")


async def test_requests_above_four_mib_are_accepted():
    """The receive limit is raised past gRPC's 4 MiB default (large delta/SotW requests)."""
    async with serving() as (server, channel):
        server.publish(snapshot_of(make_plugin("a")))
        client = Client(channel)
        # Names are bounded per stream (--max-resource-names); node metadata is not.
        client.node.metadata.update({"padding": "x" * (5 << 20)})
        big = request("default.a")
        big.node.CopyFrom(client.node)
        assert big.ByteSize() > 4 << 20
        await client.send(big)
        assert names_in(await client.receive()) == ["default.a"]
        await client.close()


async def test_disconnect_frees_the_session():
    """A closed stream is forgotten by the server and its name index."""
    async with serving() as (server, channel):
        server.publish(snapshot_of(make_plugin("a")))
        client = Client(channel)
        await client.send(request("default.a"))
        await client.receive()
        assert len(server.sessions) == 1
        await client.close()
        async with asyncio.timeout(5):
            while server.sessions:
                await asyncio.sleep(0.01)
        changed = snapshot_of(make_plugin("a", pluginConfig={"x": 1}))
        assert server.publish(changed) == 0
