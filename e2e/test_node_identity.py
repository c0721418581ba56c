"""Node identity from the certificate, through the real `wasmxds serve` and real Envoys (mTLS,
SPIFFE SANs): a proxy claiming another namespace is refused, its own namespace works."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
import trustme
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from e2e.harness.envoy import running_envoy
from e2e.harness.listeners import (
    cluster_template,
    free_port,
    http_listener_template,
    listeners_bootstrap,
)
from e2e.harness.wasmxds import run_cli
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until
from e2e.test_xds_flavours import _is, _point_tls, serving
from tests.xds.certs import client_cert

pytestmark = pytest.mark.envoy

TEAM_A = "spiffe://cluster.local/ns/team-a/sa/edge"
ECDS_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def _material(tmp_path: Path) -> dict[str, Path]:
    """CA, wasmxds's server certificate, and an Istio-style client certificate for team-a."""
    ca = trustme.CA()
    server = ca.issue_cert("wasmxds", "127.0.0.1", "localhost")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["server"])
    server.private_key_pem.write_to_path(paths["server-key"])
    paths["client"], paths["client-key"] = client_cert(ca, TEAM_A).write(tmp_path, "team-a")
    return paths


async def test_certificate_namespace_is_enforced_end_to_end(tmp_path, upstream, modules):
    """A team-a certificate claiming team-b is refused (log, metric, no config); claiming
    team-a, Envoy runs team-a's plugin, and `wasmxds status` shows the SPIFFE ID."""
    paths = _material(tmp_path)
    port, admin_port = free_port(), free_port()
    url = modules.url("header-filter.wasm")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.yaml").write_text(
        yaml.safe_dump_all(
            [
                http_listener_template("main", port),
                cluster_template("upstream", upstream.host, upstream.port),
            ]
        )
    )
    files = {
        f"{ns}.yaml": plugin_yaml(
            "header-filter", url, {"response_headers": {HEADER: ns}}, namespace=ns
        )
        for ns in ("team-a", "team-b")
    }
    args = (
        "--listeners", str(templates),
        "--tls-cert", str(paths["server"]), "--tls-key", str(paths["server-key"]),
        "--client-ca", str(paths["ca"]), "--trust-domain", "cluster.local",
        "--admin-address", f"127.0.0.1:{admin_port}",
    )  # fmt: skip
    async with serving(tmp_path, files, *args) as (wasmxds, xds_port, _):
        imposter = _point_tls(
            listeners_bootstrap(
                xds_port=xds_port, node_id="imposter", namespace="team-b", mtls=True
            ),
            paths,
        )
        async with running_envoy(imposter, tmp_path / "imposter") as envoy:
            refused = await wasmxds.wait_event("xds.identity_refused")
            # Envoy retries; every attempt is refused the same way.
            await wasmxds.wait_event("xds.identity_refused", lambda e: e is not refused)
            with pytest.raises(KeyError):
                await envoy.listener_port("main")
        assert refused["node"] == "imposter"
        assert refused["identity"] == TEAM_A
        assert refused["claimed_namespace"] == "team-b"
        assert refused["reason"] == "namespace_mismatch"
        assert "claims namespace 'team-b'" in refused["error"]
        assert not [e for e in wasmxds.events if e.get("event") == "xds.connected"]

        legit = _point_tls(
            listeners_bootstrap(xds_port=xds_port, node_id="edge-a", namespace="team-a", mtls=True),
            paths,
        )
        async with running_envoy(legit, tmp_path / "legit"), httpx.AsyncClient(timeout=5) as client:
            assert await until(lambda: _is(client, port, "team-a"), what="team-a's plugin")
            connected = await wasmxds.wait_event("xds.connected", lambda e: e["node"] == "edge-a")
            assert (connected["namespace"], connected["identity"]) == ("team-a", TEAM_A)
            code, out, _ = await run_cli("status", "--admin-address", f"127.0.0.1:{admin_port}")
            assert code == 0, out
            header, row = out.splitlines()[:2]
            assert "IDENTITY" in header.split()
            assert row.split()[:3] == ["edge-a", "team-a", TEAM_A]
            metrics = (await client.get(f"http://127.0.0.1:{admin_port}/metrics")).text
            assert 'wasmxds_xds_identity_refused_total{reason="namespace_mismatch"}' in metrics


async def test_huge_refused_node_ids_are_cut_and_refusal_lines_rate_limited(tmp_path, modules):
    """Real `wasmxds serve` (mTLS): a 1 MiB node id claiming another namespace is
    PERMISSION_DENIED with a short message and a short log line; 40 refusals in a row log at
    most 20 lines, then one line counting the rest (the metric counts all of them)."""
    paths = _material(tmp_path)
    url = modules.url("header-filter.wasm")
    files = {"b.yaml": plugin_yaml("header-filter", url, namespace="team-b")}
    admin_port = free_port()
    args = (
        "--tls-cert", str(paths["server"]), "--tls-key", str(paths["server-key"]),
        "--client-ca", str(paths["ca"]), "--admin-address", f"127.0.0.1:{admin_port}",
    )  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        root_certificates=paths["ca"].read_bytes(),
        private_key=paths["client-key"].read_bytes(),
        certificate_chain=paths["client"].read_bytes(),
    )

    async def refusal(node_id: str) -> grpc.aio.AioRpcError:
        async with grpc.aio.secure_channel(
            f"localhost:{xds_port}",
            credentials,
            options=[("grpc.max_send_message_length", 8 << 20)],
        ) as channel:
            call = channel.stream_stream(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )
            node = base_pb2.Node(id=node_id)
            node.metadata.update({"NAMESPACE": "team-b"})
            stream = call(
                iter([discovery_pb2.DiscoveryRequest(node=node, type_url=ECDS_TYPE)]), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                async for _ in stream:
                    pass
            return failure.value

    async with serving(tmp_path, files, *args) as (wasmxds, xds_port, _):
        before = sum(len(line) for line in wasmxds.raw)
        failure = await refusal("X" * (1 << 20))
        details = failure.details() or ""
        print(f"1 MiB node id: {failure.code().name}, {len(details)}-character message")
        assert failure.code() == grpc.StatusCode.PERMISSION_DENIED
        assert len(details) < 1000
        assert "characters)" in details
        logged = await wasmxds.wait_event("xds.identity_refused")
        growth = sum(len(line) for line in wasmxds.raw) - before
        print(f"log growth for that refusal: {growth} bytes")
        assert growth < 10_000
        assert len(logged["node"]) < 300

        for i in range(39):
            assert (await refusal(f"edge-{i}")).code() == grpc.StatusCode.PERMISSION_DENIED
        summary = await wasmxds.wait_event("xds.identity_refused_not_logged", timeout=20)
        lines = [e for e in wasmxds.events if e.get("event") == "xds.identity_refused"]
        print(f"40 refusals: {len(lines)} lines, then {summary['count']} counted")
        assert len(lines) == 20
        assert summary["count"] == 20
        async with httpx.AsyncClient(timeout=5) as client:
            metrics = (await client.get(f"http://127.0.0.1:{admin_port}/metrics")).text
        assert 'wasmxds_xds_identity_refused_total{reason="namespace_mismatch"} 40.0' in metrics
