"""The shipped bootstraps in envoy-configs/ and `wasmxds bootstrap`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.envoy_configs import OUT, generate
from wasmxds.bootstrap import parse_labels_file
from wasmxds.cli import main


def test_shipped_bootstraps_are_what_the_command_prints():
    """envoy-configs/ matches `wasmxds bootstrap` output; run `make envoy-configs` after changes."""
    expected = generate()
    shipped = {path.relative_to(OUT).as_posix(): path.read_text() for path in OUT.rglob("*.yaml")}
    assert shipped == expected


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["bootstrap", *args])
    out, err = capsys.readouterr()
    return code, (yaml.safe_load(out) if code == 0 else {}), err


def test_node_identity_goes_to_istio_metadata_keys(capsys, tmp_path: Path):
    """Namespace and labels (flags and a downward API file) land in NAMESPACE and LABELS."""
    labels = tmp_path / "labels"
    labels.write_text('app="gateway"\nversion="v1"\n')
    code, config, _ = _run(
        capsys, "--node-id", "gw-1", "--namespace", "edge", "--labels-file", str(labels),
        "--label", "version=v2", "--filter", "edge.auth",
    )  # fmt: skip
    assert code == 0
    assert config["node"]["id"] == "gw-1"
    assert config["node"]["metadata"] == {
        "NAMESPACE": "edge",
        "LABELS": {"app": "gateway", "version": "v2"},
    }


def test_listener_mode_uses_lds_and_cds_over_delta(capsys):
    """Listener mode has no static listener and fetches LDS/CDS through delta ADS."""
    code, config, _ = _run(capsys, "--node-id", "n", "--mode", "listeners", "--api", "delta")
    assert code == 0
    dynamic = config["dynamic_resources"]
    assert dynamic["ads_config"]["api_type"] == "DELTA_GRPC"
    assert dynamic["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert dynamic["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert "listeners" not in config["static_resources"]


def test_filters_keep_their_order_and_fallback(capsys):
    """ECDS mode lists the filters in the given order, each with the allow-all default."""
    code, config, _ = _run(capsys, "--node-id", "n", "--filter", "a.one", "--filter", "b.two")
    assert code == 0
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == ["a.one", "b.two", "envoy.filters.http.router"]
    assert all("default_config" in f["config_discovery"] for f in filters[:2])


def test_mutual_tls_client_certificate(capsys):
    """With --tls-* the xDS cluster speaks TLS with ALPN h2 and presents the client cert."""
    code, config, _ = _run(
        capsys, "--node-id", "n", "--filter", "a.b", "--tls-ca", "/ca.pem",
        "--tls-cert", "/c.pem", "--tls-key", "/k.pem",
    )  # fmt: skip
    assert code == 0
    socket = config["static_resources"]["clusters"][0]["transport_socket"]
    common = socket["typed_config"]["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"] == "/c.pem"


def test_module_downloads_over_mutual_tls(capsys):
    """With --modules-tls-* the wasmxds_modules cluster verifies the admin certificate with the
    CA and presents the client certificate (no h2 ALPN: the admin port speaks HTTP/1.1)."""
    code, config, _ = _run(
        capsys, "--node-id", "n", "--filter", "a.b", "--modules-address", "wasmxds:18001",
        "--modules-tls-ca", "/admin-ca.pem", "--modules-tls-cert", "/m.pem",
        "--modules-tls-key", "/m-key.pem", "--modules-tls-sni", "wasmxds-admin",
    )  # fmt: skip
    assert code == 0
    xds, *_, modules = config["static_resources"]["clusters"]
    assert modules["name"] == "wasmxds_modules"
    assert "transport_socket" not in xds
    context = modules["transport_socket"]["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    assert context["sni"] == "wasmxds-admin"
    common = context["common_tls_context"]
    assert "alpn_protocols" not in common
    assert common["validation_context"]["trusted_ca"]["filename"] == "/admin-ca.pem"
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": "/m.pem"}, "private_key": {"filename": "/m-key.pem"}}
    ]


def _san(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    matchers: list[dict[str, Any]] = common["validation_context"]["match_typed_subject_alt_names"]
    return matchers


def test_without_namespace_no_namespace_is_written(capsys):
    """No --namespace, no NAMESPACE key: an mTLS proxy takes its certificate's namespace
    instead of being refused for claiming "default"."""
    code, config, _ = _run(capsys, "--node-id", "n", "--filter", "a.b", "--label", "app=x")
    assert code == 0
    assert config["node"]["metadata"] == {"LABELS": {"app": "x"}}


def test_tls_clusters_check_the_server_san_by_default(capsys):
    """Over TLS both clusters check wasmxds's SAN, not only the CA: the host connected to by
    default (IP or DNS), the SNI name when one is asked for."""
    code, config, _ = _run(
        capsys, "--node-id", "n", "--filter", "a.b", "--xds-address", "127.0.0.1:18000",
        "--tls-ca", "/ca.pem", "--modules-address", "wasmxds-admin.svc:18001",
        "--modules-tls-ca", "/ca.pem",
    )  # fmt: skip
    assert code == 0
    xds, *_, modules = config["static_resources"]["clusters"]
    assert _san(xds) == [{"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}]
    assert _san(modules) == [{"san_type": "DNS", "matcher": {"exact": "wasmxds-admin.svc"}}]
    code, config, _ = _run(
        capsys, "--node-id", "n", "--filter", "a.b", "--xds-address", "10.0.0.5:18000",
        "--tls-ca", "/ca.pem", "--tls-sni", "wasmxds.example",
    )  # fmt: skip
    assert _san(config["static_resources"]["clusters"][0]) == [
        {"san_type": "DNS", "matcher": {"exact": "wasmxds.example"}}
    ]


def test_server_san_flags_take_spiffe_ids_ips_and_names(capsys):
    """--tls-server-san / --modules-tls-server-san: a SPIFFE ID is a URI SAN, an IP an
    IP_ADDRESS SAN, anything else a DNS name."""
    spiffe = "spiffe://cluster.local/ns/wasmxds/sa/wasmxds"
    code, config, _ = _run(
        capsys, "--node-id", "n", "--filter", "a.b", "--tls-ca", "/ca.pem",
        "--tls-server-san", spiffe, "--modules-address", "wasmxds:18001",
        "--modules-tls-ca", "/ca.pem", "--modules-tls-server-san", "::1",
    )  # fmt: skip
    assert code == 0
    xds, *_, modules = config["static_resources"]["clusters"]
    assert _san(xds) == [{"san_type": "URI", "matcher": {"exact": spiffe}}]
    assert _san(modules) == [{"san_type": "IP_ADDRESS", "matcher": {"exact": "::1"}}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node-id", "n"], "needs at least one --filter"),
        (["--node-id", "n", "--filter", "a.b", "--tls-cert", "/c"], "mutual TLS needs"),
        (
            ["--node-id", "n", "--filter", "a.b", "--modules-tls-ca", "/ca"],
            "--modules-tls-* options need --modules-address",
        ),
        (
            [
                *("--node-id", "n", "--filter", "a.b", "--modules-address", "w:1"),
                *("--modules-tls-cert", "/c", "--modules-tls-key", "/k"),
            ],
            "need --modules-tls-ca, --modules-tls-cert and",
        ),
        (
            ["--node-id", "n", "--filter", "a.b", "--tls-server-san", "wasmxds"],
            "--tls-server-san needs --tls-ca",
        ),
        (
            [
                *("--node-id", "n", "--filter", "a.b", "--modules-address", "w:1"),
                *("--modules-tls-server-san", "w"),
            ],
            "--modules-tls-server-san needs --modules-tls-ca",
        ),
        (["--node-id", "n", "--filter", "a.b", "--label", "novalue"], "expected KEY=VALUE"),
        (["--node-id", "n", "--filter", "a.b", "--xds-address", "nope"], "expected HOST:PORT"),
    ],
)
def test_usage_errors(capsys, args, message):
    """Bad combinations exit 2 with a message naming the flag."""
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert message in err


def test_labels_file_format():
    """Downward API label files are key="value" lines with escapes."""
    assert parse_labels_file('a="1"\nb="x\\"y"\n\nbroken\n') == {"a": "1", "b": 'x"y'}
