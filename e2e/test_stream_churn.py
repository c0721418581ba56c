"""Short-lived proxies with unique labels: the real ``wasmxds serve`` gives their memory back."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from e2e.harness.modules import ModuleServer
from e2e.harness.wasmxds import running_wasmxds
from e2e.test_core import plugin_yaml

ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
PLUGINS = 10
# What a hostile or misconfigured client asks for besides the real plugins:
# names no plugin has, different on every stream.
JUNK_NAMES = 150
ROUNDS = 4
STREAMS_PER_ROUND = 1200
AT_ONCE = 64


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def node(index: int) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": "default", "LABELS": {"app": "churn", "pod": f"pod-{index}"}})
    return base_pb2.Node(id=f"churn-{index}", cluster="churn", metadata=metadata)


def wanted(index: int) -> list[str]:
    real = [f"default.plugin-{i}" for i in range(PLUGINS)]
    return real + [f"default.absent-{index}-{j}" for j in range(JUNK_NAMES)]


async def sotw_stream(channel: grpc.aio.Channel, index: int) -> None:
    """Subscribe, take the response, ACK it, hang up."""
    outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        requests()
    )
    await outbox.put(
        discovery_pb2.DiscoveryRequest(
            node=node(index), type_url=ECDS, resource_names=wanted(index)
        )
    )
    response = await call.read()
    assert len(response.resources) == PLUGINS, response
    await outbox.put(
        discovery_pb2.DiscoveryRequest(
            type_url=ECDS,
            resource_names=wanted(index),
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
    )
    await outbox.put(None)
    call.cancel()


async def delta_stream(channel: grpc.aio.Channel, index: int) -> None:
    """The same over incremental xDS."""
    outbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(
        requests()
    )
    await outbox.put(
        discovery_pb2.DeltaDiscoveryRequest(
            node=node(index), type_url=ECDS, resource_names_subscribe=wanted(index)
        )
    )
    response = await call.read()
    assert len(response.resources) == PLUGINS, response
    await outbox.put(
        discovery_pb2.DeltaDiscoveryRequest(type_url=ECDS, response_nonce=response.nonce)
    )
    await outbox.put(None)
    call.cancel()


async def churn(channel: grpc.aio.Channel, indices: range) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(index: int) -> None:
        async with gate:
            if index % 2:
                await delta_stream(channel, index)
            else:
                await sotw_stream(channel, index)

    async with asyncio.TaskGroup() as group:
        for index in indices:
            group.create_task(one(index))


async def no_sessions(client: httpx.AsyncClient, admin: int) -> None:
    """Wait until the server has let go of every stream."""
    async with asyncio.timeout(30):
        while (await client.get(f"http://127.0.0.1:{admin}/debug/syncz")).json():
            await asyncio.sleep(0.1)


async def test_unique_label_churn_returns_memory(tmp_path: Path, modules: ModuleServer) -> None:
    """Rounds of short streams, each its own node class, leave RSS where the first round left it."""
    config = tmp_path / "config"
    config.mkdir()
    url = f"http://127.0.0.1:{modules.port}/header-filter.wasm"
    for i in range(PLUGINS):
        (config / f"plugin-{i}.yaml").write_text(plugin_yaml(f"plugin-{i}", url, {"i": i}))
    async with (
        running_wasmxds([config], tmp_path / "cache") as wasmxds,
        httpx.AsyncClient(timeout=5) as client,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        admin_port = await wasmxds.port_of("admin.listening")
        await wasmxds.wait_event("reconcile.pushed", lambda e: e["plugins"] == PLUGINS)
        pid = wasmxds.proc.pid
        baseline = rss_mib(pid)
        figures = []
        counter = itertools.count()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}") as channel:
            for _ in range(ROUNDS):
                start = next(counter) * STREAMS_PER_ROUND
                await churn(channel, range(start, start + STREAMS_PER_ROUND))
                await no_sessions(client, admin_port)
                figures.append(rss_mib(pid))
        print(
            f"\nRSS MiB: baseline {baseline:.1f}, after each round of {STREAMS_PER_ROUND} "
            f"streams: {', '.join(f'{f:.1f}' for f in figures)}"
        )
        assert figures[-1] - figures[0] < 20, (baseline, figures)
