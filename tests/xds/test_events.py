"""The server reports pushes, ACKs, NACKs and open streams through StreamEvents, as metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.factories import make_plugin
from tests.xds.helpers import request, snapshot_of
from tests.xds.test_server import Client, serving
from wasmxds.metrics import Metrics, StreamMetrics
from wasmxds.xds.types import ECDS


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def _until(check: Callable[[], object]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


async def test_stream_events_become_metrics():
    """A push, its ACK, a NACK of the next push and the open stream all show in the registry."""
    metrics = Metrics()
    async with serving(events=StreamMetrics(metrics)) as (server, channel):
        first = snapshot_of(make_plugin("a"))
        server.publish(first)
        client = Client(channel)
        await client.send(request("default.a"))
        response = await client.receive()
        assert _sample(metrics, "wasmxds_xds_connected_proxies", flavour="sotw", service="ads") == 1
        await _until(
            lambda: _sample(metrics, "wasmxds_xds_pushes_total", type_url=ECDS, flavour="sotw") == 1
        )
        await client.send(request("default.a", nonce=response.nonce, version=response.version_info))
        await _until(
            lambda: _sample(metrics, "wasmxds_xds_push_latency_seconds_count", stage="send_to_ack")
        )
        second = snapshot_of(
            make_plugin("a", pluginConfig={"v": 2}), previous=first, changed_at=time.monotonic()
        )
        server.publish(second)
        update = await client.receive()
        await _until(
            lambda: _sample(metrics, "wasmxds_xds_pushes_total", type_url=ECDS, flavour="sotw") == 2
        )
        # The push answers a change: its latency from the change is recorded.
        assert _sample(metrics, "wasmxds_xds_push_latency_seconds_count", stage="change_to_send")
        await client.send(
            request(
                "default.a",
                nonce=update.nonce,
                version=response.version_info,
                error="rejected",
            )
        )
        await _until(
            lambda: _sample(metrics, "wasmxds_xds_nacks_total", type_url=ECDS, resource="default.a")
        )
        await client.close()
        await _until(lambda: not server.sessions)
        assert (
            _sample(metrics, "wasmxds_xds_connected_proxies", flavour="sotw", service="ads") is None
        )
