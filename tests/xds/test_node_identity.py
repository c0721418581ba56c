"""Namespaces proven by client certificates, over real mutual TLS gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.factories import make_plugin
from tests.xds.certs import ClientCert, client_cert
from tests.xds.helpers import ROOT, names_in, request, snapshot_of
from tests.xds.test_server import Client
from wasmxds.admin.views import syncz
from wasmxds.settings import HostPort
from wasmxds.xds.events import NoEvents
from wasmxds.xds.identity import IdentityPolicy
from wasmxds.xds.server import TlsFiles, XdsServer

TEAM_A = "spiffe://cluster.local/ns/team-a/sa/edge"
BOTH = ("team-a.pa", "team-b.pb")
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


class Refusals(NoEvents):
    """Records identity refusals as the metrics would count them."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def on_identity_refused(self, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture(name="ca")
def _ca() -> trustme.CA:
    return trustme.CA()


@contextlib.asynccontextmanager
async def mtls_server(
    tmp_path: Path,
    ca: trustme.CA,
    policy: IdentityPolicy | None,
    events: Refusals | None = None,
) -> AsyncIterator[XdsServer]:
    leaf = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    server = XdsServer(
        address=HostPort("127.0.0.1", 0),
        root_namespace=ROOT,
        grace=0.5,
        tls=TlsFiles(cert, key, ca_file),
        events=events,
        node_identity=policy,
    )
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    server.publish(
        snapshot_of(make_plugin("pa", namespace="team-a"), make_plugin("pb", namespace="team-b"))
    )
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def stream(
    server: XdsServer, ca: trustme.CA, cert: ClientCert, metadata: dict[str, str]
) -> AsyncIterator[Client]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=cert.key_pem,
        certificate_chain=cert.cert_pem,
    )
    async with grpc.aio.secure_channel(
        f"localhost:{server.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        client = Client(channel, node_id="edge-1")
        meta = struct_pb2.Struct()
        meta.update({**metadata, "LABELS": {"app": "web"}})
        client.node.metadata.CopyFrom(meta)
        try:
            yield client
        finally:
            await client.close()


def wasm_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The names answered with the plugin's Wasm filter; the others get the not-selected no-op."""
    out = []
    for item in response.resources:
        config = extension_pb2.TypedExtensionConfig()
        item.Unpack(config)
        if config.typed_config.type_url == WASM:
            out.append(config.name)
    return out


async def served(server: XdsServer, ca: trustme.CA, cert: ClientCert, **metadata: str) -> list[str]:
    async with stream(server, ca, cert, metadata) as client:
        await client.send(request(*BOTH))
        response = await client.receive()
        assert names_in(response) == list(BOTH)
        return wasm_names(response)


async def refused(server: XdsServer, ca: trustme.CA, cert: ClientCert, **metadata: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await served(server, ca, cert, **metadata)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED, failure.value
    assert server.sessions == []
    return failure.value.details() or ""


async def test_claiming_another_namespace_is_permission_denied(tmp_path, ca):
    """team-a's certificate claiming team-b gets PERMISSION_DENIED naming both, and a count."""
    events = Refusals()
    async with mtls_server(tmp_path, ca, IdentityPolicy(), events) as server:
        details = await refused(server, ca, client_cert(ca, TEAM_A), NAMESPACE="team-b")
    assert "claims namespace 'team-b'" in details
    assert TEAM_A in details
    assert events.reasons == ["namespace_mismatch"]


async def test_claiming_its_own_namespace_gets_its_plugins(tmp_path, ca):
    """team-a's certificate claiming team-a is served team-a's plugins, not team-b's."""
    async with mtls_server(tmp_path, ca, IdentityPolicy()) as server:
        assert await served(server, ca, client_cert(ca, TEAM_A), NAMESPACE="team-a") == [
            "team-a.pa"
        ]


async def test_no_namespace_in_metadata_gets_the_certificates(tmp_path, ca):
    """Without a claimed namespace, the stream is team-a (not "default"), labels from metadata;
    /debug/syncz shows the verified SPIFFE ID."""
    async with (
        mtls_server(tmp_path, ca, IdentityPolicy()) as server,
        stream(server, ca, client_cert(ca, TEAM_A), {}) as client,
    ):
        await client.send(request(*BOTH))
        assert wasm_names(await client.receive()) == ["team-a.pa"]
        (view,) = syncz(server.sessions)
        assert view["namespace"] == "team-a"
        assert view["labels"] == {"app": "web"}
        assert view["verified_identity"] == TEAM_A


async def test_certificate_without_spiffe_id_is_refused(tmp_path, ca):
    """A CA-signed certificate with no SPIFFE URI SAN gets no stream."""
    events = Refusals()
    async with mtls_server(tmp_path, ca, IdentityPolicy(), events) as server:
        details = await refused(
            server, ca, client_cert(ca, "https://edge.example/x"), NAMESPACE="team-a"
        )
    assert "has no SPIFFE ID" in details
    assert events.reasons == ["no_spiffe_id"]


async def test_other_trust_domain_is_refused(tmp_path, ca):
    """With --trust-domain prod.example, a cluster.local identity is refused; prod.example works."""
    policy = IdentityPolicy(frozenset({"prod.example"}))
    async with mtls_server(tmp_path, ca, policy) as server:
        details = await refused(server, ca, client_cert(ca, TEAM_A))
        assert "trust domain 'cluster.local'" in details
        prod = client_cert(ca, "spiffe://prod.example/ns/team-b/sa/edge")
        assert await served(server, ca, prod) == ["team-b.pb"]


async def test_metadata_mode_keeps_the_old_behaviour(tmp_path, ca):
    """--node-identity metadata with mTLS: the metadata's namespace is taken as claimed."""
    async with (
        mtls_server(tmp_path, ca, None) as server,
        stream(server, ca, client_cert(ca, TEAM_A), {"NAMESPACE": "team-b"}) as client,
    ):
        await client.send(request(*BOTH))
        assert wasm_names(await client.receive()) == ["team-b.pb"]
        (view,) = syncz(server.sessions)
        assert (view["namespace"], view["verified_identity"]) == ("team-b", "metadata")


def test_certificate_identity_needs_a_client_ca(tmp_path):
    """Building a server that takes identity from certificates without mutual TLS fails."""
    with pytest.raises(ValueError, match="mutual TLS"):
        XdsServer(
            address=HostPort("127.0.0.1", 0),
            root_namespace=ROOT,
            tls=TlsFiles(tmp_path / "c", tmp_path / "k"),
            node_identity=IdentityPolicy(),
        )
