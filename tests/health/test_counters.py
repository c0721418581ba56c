"""Which stats of a StreamMetricsMessage count for health, read as Envoy 1.40 names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.health.messages import metrics_message
from wasmxds.health.counters import read_report, scan_families
from wasmxds.health.wire import StreamMetricsMessage


def decoded(data: bytes) -> Any:
    return StreamMetricsMessage.FromString(data).envoy_metrics


# Every case holds for the full decode and for the scan the service uses.
@pytest.fixture(name="families", params=[decoded, scan_families], ids=["decoded", "scanned"])
def _families(request: pytest.FixtureRequest) -> Callable[[bytes], Any]:
    reader: Callable[[bytes], Any] = request.param
    return reader


def test_full_stat_names(families):
    """Wasm reload counters per plugin, and non-admin listeners' completed and 5xx requests."""
    report, samples = read_report(
        families(
            metrics_message(
                "n",
                {
                    "wasm.default.trap.vm_reload_backoff": 4,
                    "wasm.default.trap.vm_reload_success": 1,
                    "wasm.envoy.wasm.runtime.v8.created": 3,
                    "wasm.default.ok.vm_reload": 0,
                    "http.ingress_http.downstream_rq_completed": 10,
                    "http.ingress_http.downstream_rq_5xx": 5,
                    "http.other.downstream_rq_completed": 2,
                    "http.admin.downstream_rq_completed": 7,
                    "http.admin.downstream_rq_5xx": 7,
                    "listener.127.0.0.1_0.http.ingress_http.downstream_rq_5xx": 5,
                    "cluster.x.upstream_rq_5xx": 9,
                },
                gauges={"wasm.envoy.wasm.runtime.v8.active": 2},
            )
        )
    )
    assert dict(report.failures) == {"wasm.default.trap.vm_reload_backoff": 4}
    assert (report.requests, report.errors) == (12, 5)
    assert samples == 5


def test_tags_as_labels(families):
    """With emit_tags_as_labels the connection manager and the code class are labels."""
    ingress = {"envoy.http_conn_manager_prefix": "ingress_http"}
    admin = {"envoy.http_conn_manager_prefix": "admin"}
    report, _ = read_report(
        families(
            metrics_message(
                labelled={
                    "http.downstream_rq_completed": [(ingress, 8), (admin, 3)],
                    "http.downstream_rq_xx": [
                        ({**ingress, "envoy.response_code_class": "5"}, 2),
                        ({**ingress, "envoy.response_code_class": "2"}, 6),
                        ({**admin, "envoy.response_code_class": "5"}, 3),
                    ],
                }
            )
        )
    )
    assert (report.requests, report.errors) == (8, 2)


def test_gauges_with_failure_names_are_not_counters(families):
    """Only counter families count: a gauge named like a failure counter is ignored."""
    report, samples = read_report(
        families(metrics_message(gauges={"wasm.default.trap.vm_reload": 5}))
    )
    assert not report.failures
    assert samples == 0


def test_scan_skips_names_that_only_start_like_wanted_ones():
    """A family named like a wanted stat plus a suffix is not taken for it."""
    data = metrics_message(
        "n",
        {
            "http.ingress.downstream_rq_5xx_extra": 9,
            "wasm.p.vm_reload_backoffs": 9,
            "http.ingress.downstream_rq_completed": 4,
        },
    )
    report, samples = read_report(scan_families(data))
    assert (report.requests, report.errors, dict(report.failures)) == (4, 0, {})
    assert samples == 1


def test_scan_finds_families_behind_long_ones():
    """Families after large ones (multi-byte length prefixes) are found and framed right."""
    big = {f"cluster.c{i}.upstream_rq_{j}": 1 for i in range(50) for j in range(40)}
    data = metrics_message(
        "n",
        {**big, "http.ingress.downstream_rq_5xx": 2, "http.ingress.downstream_rq_completed": 3},
        labelled={"http.x.downstream_rq_completed": [({"k" * 300: "v" * 300}, 5)]},
    )
    assert read_report(scan_families(data)) == read_report(decoded(data))
    report, _ = read_report(scan_families(data))
    assert (report.requests, report.errors) == (8, 2)


def test_scan_of_garbage_finds_nothing():
    """Bytes that are no message give no families (and no error)."""
    assert scan_families(b"\x0a\x05http.\xff" * 1000) == []
