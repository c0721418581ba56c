"""The metrics service on the xDS port: real grpc.aio streams on loopback, bounds and identity."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from tests.factories import make_plugin
from tests.health.messages import MetricsClient, metrics_message
from tests.xds.certs import client_cert
from tests.xds.helpers import ROOT, request, snapshot_of
from tests.xds.test_node_identity import TEAM_A
from tests.xds.test_node_identity import stream as ads_stream
from wasmxds.health.metrics_service import MetricsService
from wasmxds.health.verdict import FleetHealth
from wasmxds.settings import HostPort
from wasmxds.xds.identity import IdentityPolicy
from wasmxds.xds.server import TlsFiles, XdsServer

TEAM_B = "spiffe://cluster.local/ns/team-b/sa/edge"
TRAFFIC = {
    "http.ingress.downstream_rq_completed": 10,
    "http.ingress.downstream_rq_5xx": 4,
    "wasm.default.trap.vm_reload_backoff": 2,
}


class Events:
    """Records what the service reports, as the metrics would count it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.samples = 0

    def on_metrics_message(self, result: str, reason: str, samples: int) -> None:
        self.messages.append((result, reason))
        self.samples += samples


class Served:
    def __init__(self, xds: XdsServer, service: MetricsService, events: Events) -> None:
        self.xds, self.service, self.events = xds, service, events
        self.health = service.health


@contextlib.asynccontextmanager
async def serving(
    *, tls: TlsFiles | None = None, policy: IdentityPolicy | None = None, **limits: Any
) -> AsyncIterator[Served]:
    xds = XdsServer(
        address=HostPort("127.0.0.1", 0),
        root_namespace=ROOT,
        grace=0.5,
        tls=tls,
        node_identity=policy,
    )
    events = Events()
    service = MetricsService(
        FleetHealth(), xds_identities=xds.node_identities, identity=policy, events=events, **limits
    )
    xds.add_service(service.handlers())
    started = asyncio.Event()
    task = asyncio.create_task(xds.run(started))
    await started.wait()
    xds.publish(
        snapshot_of(make_plugin("pa", namespace="team-a"), make_plugin("pb", namespace="team-b"))
    )
    try:
        yield Served(xds, service, events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def plain_channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.xds.port}") as channel:
        yield channel


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_proxys_flushes_reach_fleet_health():
    """The first message names the node; every message's counters land in FleetHealth."""
    async with serving() as served, plain_channel(served) as channel:
        client = MetricsClient(channel)
        await client.send(metrics_message("proxy-1", TRAFFIC))
        await client.send(metrics_message(None, TRAFFIC))
        await until(lambda: served.events.messages == [("accepted", "")] * 2)
        assert served.service.open_streams == 1
        view = served.health.node_health("proxy-1")
        assert view is not None
        assert (view["requests"], view["errors_5xx"]) == (20, 8)
        assert view["wasm_failures"] == {"wasm.default.trap.vm_reload_backoff": 4}
        assert served.events.samples == 6
        await client.finish()
        await until(lambda: served.service.open_streams == 0)


async def refused(served: Served, *messages: bytes) -> grpc.aio.AioRpcError:
    async with plain_channel(served) as channel:
        client = MetricsClient(channel)
        for data in messages:
            await client.send(data)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await client.finish()
        return failure.value


async def test_first_message_without_node_is_invalid_argument():
    """A stream whose first message names no node is refused, saying what is missing."""
    async with serving() as served:
        error = await refused(served, metrics_message(None, TRAFFIC))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "identifier.node" in (error.details() or "")
        assert served.events.messages == [("refused", "invalid")]
        assert len(served.health) == 0


async def test_garbage_is_invalid_argument():
    """Bytes that are no StreamMetricsMessage end the stream; nothing is recorded."""
    async with serving() as served:
        error = await refused(served, b"\xff\xff\xff\xff")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(served.health) == 0


async def test_a_message_over_the_limit_is_refused_before_parsing():
    """A message above max_message_bytes ends the stream with RESOURCE_EXHAUSTED and advice."""
    async with serving(max_message_bytes=1000) as served:
        big = metrics_message("proxy-1", {f"cluster.c{i}.upstream_rq_total": 1 for i in range(100)})
        assert len(big) > 1000
        error = await refused(served, big)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "batch_size" in (error.details() or "")
        assert served.events.messages == [("refused", "too_large")]
        assert len(served.health) == 0


async def test_streams_per_node_and_in_all_are_bounded():
    """A third stream for one node, or one past max_streams, is RESOURCE_EXHAUSTED."""
    async with serving(max_streams=3) as served, plain_channel(served) as channel:
        first, second = MetricsClient(channel), MetricsClient(channel)
        for client in (first, second):
            await client.send(metrics_message("proxy-1", TRAFFIC))
        await until(lambda: served.service.open_streams == 2)
        error = await refused(served, metrics_message("proxy-1", TRAFFIC))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already has 2 metrics streams" in (error.details() or "")
        other = MetricsClient(channel)
        await other.send(metrics_message("proxy-2", TRAFFIC))
        await until(lambda: served.service.open_streams == 3)
        error = await refused(served, metrics_message("proxy-3", TRAFFIC))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3 metrics streams" in (error.details() or "")
        for client in (first, second, other):
            await client.finish()
        await until(lambda: served.service.open_streams == 0)


ROUNDS = 200


async def test_a_hostile_stream_cannot_grow_memory():
    """Thousands of families with new names per message are dropped on arrival: memory is flat."""
    rng = random.Random(7)

    def flood() -> bytes:
        names = {f"x.{rng.getrandbits(64):x}.{i}": 1.0 for i in range(2000)}
        return metrics_message(None, {**names, **TRAFFIC})

    async with serving() as served, plain_channel(served) as channel:
        client = MetricsClient(channel)
        await client.send(metrics_message("hostile", TRAFFIC))
        for _ in range(20):  # warm up allocator pools and gRPC buffers
            await client.send(flood())
        await until(lambda: len(served.events.messages) == 21)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(ROUNDS):
            await client.send(flood())
        await until(lambda: len(served.events.messages) == 21 + ROUNDS)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        print(f"after {ROUNDS} messages of 2000 unknown families: {grown} bytes more")
        assert grown < 256 * 1024
        await client.finish()


# -- certificate mode -------------------------------------------------------


@pytest.fixture(name="ca")
def _ca() -> trustme.CA:
    return trustme.CA()


def tls_files(tmp_path: Path, ca: trustme.CA) -> TlsFiles:
    leaf = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return TlsFiles(cert, key, ca_file)


@contextlib.asynccontextmanager
async def mtls_channel(served: Served, ca: trustme.CA, *uris: str) -> AsyncIterator[Any]:
    cert = client_cert(ca, *uris)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=cert.key_pem,
        certificate_chain=cert.cert_pem,
    )
    async with grpc.aio.secure_channel(
        f"localhost:{served.xds.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        yield channel


async def with_ads(
    served: Served, ca: trustme.CA, uri: str, body: Callable[[], Awaitable[None]]
) -> None:
    """Run ``body`` while node edge-1 has a live ADS stream proven by ``uri``."""
    async with ads_stream(served.xds, ca, client_cert(ca, uri), {}) as ads:
        await ads.send(request("team-a.pa"))
        await ads.receive()
        await body()


async def test_certificate_mode_counts_only_the_ads_streams_identity(tmp_path, ca):
    """Samples for edge-1 count from its ADS identity; from another namespace's proxy they don't."""
    policy = IdentityPolicy()
    async with serving(tls=tls_files(tmp_path, ca), policy=policy) as served:

        async def report_as(uri: str, count: int) -> None:
            async with mtls_channel(served, ca, uri) as channel:
                client = MetricsClient(channel)
                await client.send(metrics_message("edge-1", TRAFFIC))
                await until(lambda: len(served.events.messages) == count)
                await client.finish()

        # No ADS stream for edge-1 yet: nothing counts.
        await report_as(TEAM_A, 1)
        assert served.events.messages == [("refused", "no_xds_stream")]

        async def while_connected() -> None:
            await report_as(TEAM_B, 2)  # team-b reporting for team-a's proxy
            assert served.events.messages[-1] == ("refused", "identity_mismatch")
            assert served.health.node_health("edge-1") is None
            await report_as(TEAM_A, 3)
            assert served.events.messages[-1] == ("accepted", "")

        await with_ads(served, ca, TEAM_A, while_connected)
        view = served.health.node_health("edge-1")
        assert view is not None
        assert view["requests"] == 10


async def test_certificate_mode_refuses_a_certificate_without_spiffe_id(tmp_path, ca):
    """Without a SPIFFE ID the metrics stream is PERMISSION_DENIED, saying why."""
    async with serving(tls=tls_files(tmp_path, ca), policy=IdentityPolicy()) as served:
        async with mtls_channel(served, ca) as channel:
            client = MetricsClient(channel)
            await client.send(metrics_message("edge-1", TRAFFIC))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await client.finish()
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no SPIFFE ID" in (failure.value.details() or "")
        assert served.events.messages == [("refused", "no_spiffe_id")]


async def test_certificate_mode_refuses_samples_when_two_identities_claim_a_node_id(tmp_path, ca):
    """team-b opening its own ADS stream as team-a's edge-1 cannot report health for edge-1."""
    async with (
        serving(tls=tls_files(tmp_path, ca), policy=IdentityPolicy()) as served,
        ads_stream(served.xds, ca, client_cert(ca, TEAM_A), {}) as victim,
    ):
        await victim.send(request("team-a.pa"))
        await victim.receive()
        async with ads_stream(served.xds, ca, client_cert(ca, TEAM_B), {}) as attacker:
            await attacker.send(request("team-b.pb"))
            await attacker.receive()
            for uri in (TEAM_B, TEAM_A):
                sent = len(served.events.messages)
                async with mtls_channel(served, ca, uri) as channel:
                    client = MetricsClient(channel)
                    await client.send(metrics_message("edge-1", TRAFFIC))
                    await until(lambda: len(served.events.messages) > sent)  # noqa: B023
                    await client.finish()
            # Neither side's samples count while both hold streams as edge-1.
            assert served.events.messages == [("refused", "ambiguous_node")] * 2
            assert served.health.node_health("edge-1") is None
            verdict = served.health.verdict(["edge-1"], [], since=0, plugin="default/trap")
            assert verdict.healthy, verdict.reason
        # The attacker gone, team-a's own samples count again.
        async with mtls_channel(served, ca, TEAM_A) as channel:
            client = MetricsClient(channel)
            await client.send(metrics_message("edge-1", TRAFFIC))
            await until(lambda: len(served.events.messages) == 3)
            await client.finish()
        assert served.events.messages[-1] == ("accepted", "")
        view = served.health.node_health("edge-1")
        assert view is not None
        assert view["requests"] == 10


async def test_a_flush_with_implausible_counters_is_refused_and_counted():
    """A flush claiming more requests than any proxy serves is dropped, counted ``implausible``."""
    async with serving() as served, plain_channel(served) as channel:
        client = MetricsClient(channel)
        await client.send(
            metrics_message(
                "liar",
                {"http.in.downstream_rq_completed": 1e15, "http.in.downstream_rq_5xx": 1e15},
            )
        )
        await until(lambda: len(served.events.messages) == 1)
        await client.finish()
    assert served.events.messages == [("refused", "implausible")]
    assert served.health.node_health("liar") is None
