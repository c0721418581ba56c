"""Push figures kept as plain numbers are exposed exactly as prometheus_client would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from wasmxds.metrics import _LATENCY_BUCKETS, Metrics, StreamMetrics

# Below, on and above bounds, the extremes, and +Inf's bucket.
_SECONDS = [0.0, 0.0005, 0.001, 0.001000001, 0.0025, 0.3, 1.0, 2.5, 29.999, 30.0, 31.0, 1e6]


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith(name) and not sample.name.endswith("_created"):
                labels = tuple(sorted(sample.labels.items()))
                out[(sample.name, *(f"{k}={v}" for k, v in labels))] = sample.value
    return out


def test_push_latencies_match_a_prometheus_client_histogram():
    """Bucket bounds ("less than or equal"), counts and sums equal prometheus_client's."""
    reference = CollectorRegistry()
    histogram = Histogram(
        "wasmxds_xds_push_latency_seconds",
        "reference",
        ["stage"],
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    metrics = Metrics()
    events = StreamMetrics(metrics)
    for seconds in _SECONDS:
        histogram.labels("send_to_ack").observe(seconds)
        events.on_ack("t", seconds)
        histogram.labels("change_to_send").observe(seconds / 2)
        events.on_push("t", "sotw", seconds / 2)
    events.on_push("t", "sotw", None)  # a response no change caused: counted, not timed
    name = "wasmxds_xds_push_latency_seconds"
    assert _samples(metrics.registry, name) == _samples(reference, name)


def test_pushes_are_counted_per_type_and_flavour():
    """wasmxds_xds_pushes_total counts every response, labelled as before."""
    metrics = Metrics()
    events = StreamMetrics(metrics)
    for _ in range(3):
        events.on_push("type.a", "sotw", 0.1)
    events.on_push("type.a", "delta", None)
    samples = _samples(metrics.registry, "wasmxds_xds_pushes_total")
    assert samples == {
        ("wasmxds_xds_pushes_total", "flavour=sotw", "type_url=type.a"): 3.0,
        ("wasmxds_xds_pushes_total", "flavour=delta", "type_url=type.a"): 1.0,
    }
