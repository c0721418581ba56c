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
