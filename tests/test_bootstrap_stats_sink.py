"""`wasmxds bootstrap --stats-sink`: Envoy's stats go to the metrics service on the xDS cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness.envoy import envoy_binary
from wasmxds.cli import main


def _bootstrap(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["bootstrap", "--node-id", "gw-1", "--filter", "default.auth", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    config: dict[str, Any] = yaml.safe_load(out)
    return config


def test_stats_sink_streams_counters_as_deltas_over_the_xds_cluster(capsys):
    """The sink is the V3 metrics service on cluster wasmxds, deltas, flushed every 5 s."""
    config = _bootstrap(capsys, "--stats-sink")
    (sink,) = config["stats_sinks"]
    assert sink["name"] == "envoy.stat_sinks.metrics_service"
    typed = sink["typed_config"]
    assert typed["@type"] == "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig"
    assert typed["transport_api_version"] == "V3"
    assert typed["report_counters_as_deltas"] is True
    assert typed["grpc_service"] == {"envoy_grpc": {"cluster_name": "wasmxds"}}
    assert config["stats_flush_interval"] == "5s"
    clusters = [c["name"] for c in config["static_resources"]["clusters"]]
    assert "wasmxds" in clusters


def test_without_the_flag_there_is_no_sink(capsys):
    """Bootstraps stay as they were unless asked for the sink."""
    config = _bootstrap(capsys)
    assert "stats_sinks" not in config
    assert "stats_flush_interval" not in config


def test_envoy_accepts_the_stats_sink(capsys, tmp_path: Path):
    """Envoy 1.40 validates the bootstrap with the sink."""
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(_bootstrap(capsys, "--stats-sink")))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
