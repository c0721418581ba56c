"""What the xDS layer tells about ACKs and NACKs per proxy and version (staged rollouts use it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tests.factories import make_node, make_plugin
from tests.xds.helpers import ack, nack, next_response, request, snapshot_of
from tests.xds.test_server import Client, serving
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS


def test_accepted_version_is_known_only_once_acked():
    """A version in flight is not accepted; after the ACK it is; after a NACK nothing is."""
    snap = snapshot_of(make_plugin("a"))
    stream = SotwStream(make_node())
    stream.handle(request("default.a"))
    response = next_response(stream, snap)
    assert stream.accepted_version(ECDS, "default.a") is None
    ack(stream, response, "default.a")
    assert stream.accepted_version(ECDS, "default.a") == snap.ecds["default.a"].active.version
    edited = snapshot_of(make_plugin("a", pluginConfig={"v": 2}), previous=snap)
    update = next_response(stream, edited)
    assert stream.accepted_version(ECDS, "default.a") is None
    nack(stream, update, "default.a")
    assert stream.accepted_version(ECDS, "default.a") is None


class Heard:
    def __init__(self) -> None:
        self.rejected: list[tuple[str, str, tuple[tuple[str, str], ...], str]] = []

    def on_rejected(
        self, node: NodeInfo, type_url: str, rejected: Sequence[tuple[str, str]], error: str
    ) -> None:
        self.rejected.append((node.id, type_url, tuple(rejected), error))


async def test_server_reports_the_proxy_and_versions_it_nacked():
    """A NACK reaches the rejections hook with the node, the (name, version) pairs and the error."""
    heard = Heard()
    async with serving(rejections=heard) as (server, channel):
        snap = snapshot_of(make_plugin("a"))
        server.publish(snap)
        client = Client(channel, "edge-9")
        await client.send(request("default.a"))
        response = await client.receive()
        await client.send(request("default.a", nonce=response.nonce, error="bad filter"))
        async with asyncio.timeout(5):
            while not heard.rejected:
                await asyncio.sleep(0.01)
        version = snap.ecds["default.a"].active.version
        assert heard.rejected == [("edge-9", ECDS, (("default.a", version),), "bad filter")]
        assert server.sessions[0].accepted(ECDS, "default.a") is None
        await client.close()
