"""StreamMetricsMessage bytes as Envoy's metrics service sink sends them, and a client stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from wasmxds.health.wire import COUNTER, GAUGE, METHOD, SERVICE, StreamMetricsMessage

PATH = f"/{SERVICE}/{METHOD}"


def metrics_message(
    node_id: str | None = None,
    counters: Mapping[str, float] | None = None,
    *,
    gauges: Mapping[str, float] | None = None,
    labelled: Mapping[str, list[tuple[dict[str, str], float]]] | None = None,
) -> bytes:
    """One flush: ``identifier.node`` when ``node_id`` is given, then counter and gauge families."""
    message: Any = StreamMetricsMessage()
    if node_id is not None:
        message.identifier.node = base_pb2.Node(id=node_id, cluster="c").SerializeToString()
    for name, value in (counters or {}).items():
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        family.metric.add().counter.value = value
    for name, value in (gauges or {}).items():
        family = message.envoy_metrics.add(name=name, type=GAUGE)
        family.metric.add().gauge.value = value
    for name, samples in (labelled or {}).items():
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        for labels, value in samples:
            metric = family.metric.add()
            metric.counter.value = value
            for key, text in labels.items():
                metric.label.add(name=key, value=text)
    data: bytes = message.SerializeToString()
    return data


class MetricsClient:
    """One StreamMetrics client stream whose messages the test sends one at a time."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        method: Any = channel.stream_unary(
            PATH, request_serializer=None, response_deserializer=None
        )
        self.call: Any = method(self._messages())

    async def _messages(self) -> AsyncIterator[bytes]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def send(self, data: bytes) -> None:
        await self.outbox.put(data)

    async def finish(self) -> None:
        """Close the stream and wait for the server's answer (raises its status if not OK)."""
        await self.outbox.put(None)
        async with asyncio.timeout(5):
            await self.call

    async def status(self) -> grpc.StatusCode:
        """The status the server ended the stream with (waits for it)."""
        async with asyncio.timeout(5):
            code: grpc.StatusCode = await self.call.code()
        return code
