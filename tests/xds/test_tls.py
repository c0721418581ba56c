"""TLS and mutual TLS on the xDS port, over real gRPC connections on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme

from tests.factories import make_plugin
from tests.xds.helpers import ROOT, names_in, request, snapshot_of
from tests.xds.test_server import Client
from wasmxds.settings import HostPort
from wasmxds.xds.server import TlsFiles, XdsServer


@pytest.fixture(name="ca")
def _ca() -> trustme.CA:
    return trustme.CA()


def _files(tmp_path: Path, ca: trustme.CA, *, mutual: bool) -> TlsFiles:
    server = ca.issue_cert("wasmxds", "localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return TlsFiles(cert, key, ca_file if mutual else None)


@contextlib.asynccontextmanager
async def tls_server(files: TlsFiles) -> AsyncIterator[XdsServer]:
    server = XdsServer(address=HostPort("127.0.0.1", 0), root_namespace=ROOT, grace=0.5, tls=files)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    server.publish(snapshot_of(make_plugin("a")))
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _channel(
    server: XdsServer, ca: trustme.CA, client: trustme.LeafCert | None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=client.cert_chain_pems[0].bytes() if client else None,
    )
    return grpc.aio.secure_channel(
        f"localhost:{server.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


async def _subscribe(channel: grpc.aio.Channel) -> list[str]:
    client = Client(channel)
    await client.send(request("default.a"))
    try:
        return names_in(await client.receive())
    finally:
        await client.close()


async def test_tls_serves_verified_clients(tmp_path, ca):
    """With --tls-cert/--tls-key a client that trusts the CA gets its resources."""
    async with (
        tls_server(_files(tmp_path, ca, mutual=False)) as server,
        _channel(server, ca, None) as channel,
    ):
        assert await _subscribe(channel) == ["default.a"]


async def test_mutual_tls_accepts_a_client_certificate_and_records_it(tmp_path, ca):
    """With --client-ca a client certificate from that CA is accepted and its identity kept."""
    async with tls_server(_files(tmp_path, ca, mutual=True)) as server:
        client_cert = ca.issue_cert("envoy-edge-1")
        async with _channel(server, ca, client_cert) as channel:
            stream = Client(channel)
            await stream.send(request("default.a"))
            assert names_in(await stream.receive()) == ["default.a"]
            assert "envoy-edge-1" in server.sessions[0].identity
            await stream.close()


@pytest.mark.parametrize("other_ca", [False, True], ids=["no-certificate", "foreign-ca"])
async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(tmp_path, ca, other_ca):
    """Without a client certificate signed by --client-ca there is no stream."""
    async with tls_server(_files(tmp_path, ca, mutual=True)) as server:
        client_cert = trustme.CA().issue_cert("intruder") if other_ca else None
        async with _channel(server, ca, client_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _subscribe(channel)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.sessions == []


async def test_plaintext_client_cannot_talk_to_a_tls_port(tmp_path, ca):
    """A client that does not speak TLS is refused."""
    async with (
        tls_server(_files(tmp_path, ca, mutual=False)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await _subscribe(channel)
