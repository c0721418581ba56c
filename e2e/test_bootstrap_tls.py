"""`wasmxds bootstrap --tls-*` with a real Envoy: the xDS cluster checks wasmxds's SAN, so a
workload certificate from the same CA cannot stand in for wasmxds, while wasmxds itself works
(and a bootstrap without --namespace takes the namespace its certificate proves)."""

from __future__ import annotations

import datetime
from pathlib import Path

import httpx
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from e2e.harness.envoy import running_envoy
from e2e.harness.listeners import free_port
from e2e.harness.wasmxds import run_cli
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until
from e2e.test_xds_flavours import header_value, serving
from tests.xds.certs import client_cert

pytestmark = pytest.mark.envoy

TEAM_A = "spiffe://cluster.local/ns/team-a/sa/edge"


def workload_cert(ca: trustme.CA, uri: str, directory: Path) -> tuple[Path, Path]:
    """An Istio-style workload certificate: one URI SAN, EKU serverAuth and clientAuth (a
    sidecar is a server too), signed by ``ca``: what every workload of the mesh holds."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "workload.pem", directory / "workload-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_envoy_refuses_an_impostor_with_a_workload_certificate_of_the_same_ca(
    tmp_path, upstream, modules
):
    """An unmodified `bootstrap --tls-ca --tls-cert --tls-key` Envoy refuses a control plane
    serving team-b's workload certificate (SAN check fails, its filter never runs), and runs
    team-a's plugin from the real wasmxds, whose certificate names the address connected to."""
    ca = trustme.CA()
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_file = pki / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    impostor_cert, impostor_key = workload_cert(
        ca, "spiffe://cluster.local/ns/team-b/sa/attacker", pki
    )
    server = ca.issue_cert("127.0.0.1")
    server_cert, server_key = pki / "server.pem", pki / "server-key.pem"
    server.cert_chain_pems[0].write_to_path(server_cert)
    server.private_key_pem.write_to_path(server_key)
    envoy_cert, envoy_key = client_cert(ca, TEAM_A).write(pki, "team-a")

    url = modules.url("header-filter.wasm")
    listen, xds_port = free_port(), free_port()
    code, out, err = await run_cli(
        "bootstrap", "--node-id", "edge-a", "--filter", "team-a.header-filter",
        "--xds-address", f"127.0.0.1:{xds_port}", "--tls-ca", str(ca_file),
        "--tls-cert", str(envoy_cert), "--tls-key", str(envoy_key),
        "--listen", f"127.0.0.1:{listen}", "--upstream", f"{upstream.host}:{upstream.port}",
    )  # fmt: skip
    assert code == 0, err
    bootstrap = yaml.safe_load(out)
    assert "NAMESPACE" not in bootstrap["node"].get("metadata", {})

    def plugin(value: str) -> dict[str, str]:
        config = {"response_headers": {HEADER: value}}
        return {"a.yaml": plugin_yaml("header-filter", url, config, namespace="team-a")}

    # The impostor configures itself as it likes: its plugin applies to every proxy.
    impostor_args = (
        "--tls-cert", str(impostor_cert), "--tls-key", str(impostor_key),
        "--root-namespace", "team-a",
        "--module-delivery", "inline", "--xds-address", f"127.0.0.1:{xds_port}",
    )  # fmt: skip
    for name in ("impostor", "legit"):
        (tmp_path / name).mkdir()
    async with (
        serving(tmp_path / "impostor", plugin("IMPOSTOR"), *impostor_args) as (impostor, port, _),
        running_envoy(bootstrap, tmp_path / "envoy-impostor") as envoy,
        httpx.AsyncClient(timeout=5) as client,
    ):
        assert port == xds_port

        port_ = await envoy.wait_listener_port("ingress")
        seen: list[str | None] = []

        async def answers() -> bool:
            # The listener warms until the filter's initial fetch times out (10 s), then
            # serves with the allow-all default: never with the impostor's filter.
            try:
                seen.append(await header_value(client, port_))
            except httpx.TransportError:
                return False
            return True

        await until(answers, timeout=30, what="Envoy's listener answering")
        stats = await envoy.stats(r"cluster\.wasmxds\.ssl\.(fail_verify_san|handshake)$")
        print(f"Envoy against the impostor: x-wasmxds-demo {seen[-1]}, {stats}")
        assert seen[-1] != "IMPOSTOR"
        assert stats["cluster.wasmxds.ssl.fail_verify_san"] >= 1
        assert stats["cluster.wasmxds.ssl.handshake"] == 0
        assert not [e for e in impostor.events if e.get("event") == "xds.connected"]

    legit_args = (
        "--tls-cert", str(server_cert), "--tls-key", str(server_key),
        "--client-ca", str(ca_file), "--trust-domain", "cluster.local",
        "--module-delivery", "inline", "--xds-address", f"127.0.0.1:{xds_port}",
    )  # fmt: skip
    async with (
        serving(tmp_path / "legit", plugin("legit"), *legit_args) as (wasmxds, port, _),
        running_envoy(bootstrap, tmp_path / "envoy-legit") as envoy,
        httpx.AsyncClient(timeout=5) as client,
    ):
        assert port == xds_port
        port_ = await envoy.wait_listener_port("ingress")

        async def runs() -> bool:
            return await header_value(client, port_) == "legit"

        await until(runs, what="team-a's plugin from the real wasmxds")
        connected = await wasmxds.wait_event("xds.connected", lambda e: e["node"] == "edge-a")
        assert (connected["namespace"], connected["identity"]) == ("team-a", TEAM_A)
