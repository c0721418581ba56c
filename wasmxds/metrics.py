"""Prometheus metrics, one registry per process (per :class:`Metrics` object).

Stages record into the metrics they are given; the admin server exposes the
registry on ``/metrics``. Gauges about live state (connected proxies, cache
size) are read at scrape time through collectors, so nothing has to keep them
in step by hand. Labels never carry credentials: URLs are redacted and module
references are reduced to their scheme.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["HealthMetrics", "Metrics", "StreamMetrics"]

# Push latencies on loopback are milliseconds; across a fleet, seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


_Reader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class _Live(Collector):
    """Gauges computed at scrape time from callbacks."""

    def __init__(self) -> None:
        self._gauges: list[
            tuple[str, str, tuple[str, ...], Callable[[], Iterable[tuple[tuple[str, ...], float]]]]
        ] = []

    def add(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        self._gauges.append((name, documentation, labels, read))

    def collect(self) -> Iterable[Metric]:
        for name, documentation, labels, read in self._gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in read():
                family.add_metric(list(values), value)
            yield family


class LatencyBuckets:
    """A histogram's counts, kept as plain numbers: see :class:`PushFigures`."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= the value.
        self.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


class PushFigures(Collector):
    """Responses sent and push latencies, counted per stream on every push.

    prometheus_client's own metrics take a lock and walk their label index on
    each call; three of those per stream per push were a visible share of a
    push's CPU. These are plain numbers, changed on the event loop only and
    turned into metric families when scraped.
    """

    def __init__(self) -> None:
        self.pushes: dict[tuple[str, str], int] = {}
        self.change_to_send = LatencyBuckets()
        self.send_to_ack = LatencyBuckets()

    def collect(self) -> Iterable[Metric]:
        pushes = CounterMetricFamily(
            "wasmxds_xds_pushes", "xDS responses sent", labels=["type_url", "flavour"]
        )
        for key, count in sorted(self.pushes.items()):
            pushes.add_metric(list(key), count)
        yield pushes
        latency = HistogramMetricFamily(
            "wasmxds_xds_push_latency_seconds",
            "push latency: change seen → response sent (stage=change_to_send), "
            "response sent → ACK (stage=send_to_ack)",
            labels=["stage"],
        )
        for stage, buckets in (
            ("change_to_send", self.change_to_send),
            ("send_to_ack", self.send_to_ack),
        ):
            cumulative, total = [], 0
            for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), buckets.counts, strict=True):
                total += count
                cumulative.append((_bucket_label(bound), total))
            latency.add_metric([stage], cumulative, buckets.sum)
        yield latency


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    """Every metric wasmxds exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.push_figures = PushFigures()
        registry.register(self.push_figures)
        self.nacks = Counter(
            "wasmxds_xds_nacks",
            "responses proxies rejected",
            ["type_url", "resource"],
            registry=registry,
        )
        self.identity_refused = Counter(
            "wasmxds_xds_identity_refused",
            "xDS streams refused because the client certificate does not prove the node's"
            " namespace (--node-identity certificate), by reason",
            ["reason"],
            registry=registry,
        )
        self.module_fetches = Counter(
            "wasmxds_module_fetches",
            "module fetch attempts",
            ["result", "scheme"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "wasmxds_module_cache_lookups",
            "module resolutions answered from the cache (hit) or needing a fetch (miss)",
            ["result"],
            registry=registry,
        )
        self.debounce_merged = Counter(
            "wasmxds_debounce_merged_events", "change events merged into pushes", registry=registry
        )
        self.debounce_pushes = Counter(
            "wasmxds_debounce_pushes", "pushes after debouncing", registry=registry
        )
        self.reconcile_duration = Histogram(
            "wasmxds_reconcile_duration_seconds",
            "time to build and publish a snapshot",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.rollout_steps = Counter(
            "wasmxds_rollout_steps_advanced",
            "staged rollout steps advanced (a completed rollout counts its last step)",
            registry=registry,
        )
        self.rollout_rollbacks = Counter(
            "wasmxds_rollout_rollbacks",
            "staged rollouts rolled back, by reason: nack, health or abort",
            ["reason"],
            registry=registry,
        )
        self._live = _Live()
        registry.register(self._live)

    def live_gauge(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        """A gauge whose samples are read from ``read`` at every scrape."""
        self._live.add(name, documentation, labels, read)


class StreamMetrics:
    """The xDS server's stream events as metrics (``wasmxds.xds.events.StreamEvents``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        figures = metrics.push_figures
        self._pushes = figures.pushes
        self._send_to_ack = figures.send_to_ack
        self._change_to_send = figures.change_to_send

    def watch_streams(self, counts: Callable[[], Iterable[tuple[tuple[str, ...], float]]]) -> None:
        self._metrics.live_gauge(
            "wasmxds_xds_connected_proxies", "open xDS streams", ("flavour", "service"), counts
        )

    def on_push(self, type_url: str, flavour: str, since_change: float | None) -> None:
        key = (type_url, flavour)
        self._pushes[key] = self._pushes.get(key, 0) + 1
        if since_change is not None:
            self._change_to_send.observe(since_change)

    def on_ack(self, type_url: str, since_send: float) -> None:
        self._send_to_ack.observe(since_send)

    def on_nack(self, type_url: str, resources: Sequence[str]) -> None:
        for name in resources:
            self._metrics.nacks.labels(type_url, name).inc()

    def on_identity_refused(self, reason: str) -> None:
        self._metrics.identity_refused.labels(reason).inc()


class HealthMetrics:
    """The metrics service's events as metrics (``wasmxds.health.metrics_service.HealthEvents``).

    One per :class:`Metrics`: it registers its metrics on that registry.
    """

    def __init__(self, metrics: Metrics, open_streams: Callable[[], int]) -> None:
        registry = metrics.registry
        self._messages = Counter(
            "wasmxds_health_metrics_messages",
            "metrics service messages from proxies: accepted, or refused by reason (too_large,"
            " invalid, too_many_streams, no_xds_stream, identity_mismatch, ambiguous_node,"
            " implausible, certificate reasons)",
            ["result", "reason"],
            registry=registry,
        )
        self._samples = Counter(
            "wasmxds_health_samples",
            "health samples (Wasm failure, request and 5xx counters) read from accepted messages",
            registry=registry,
        )
        self._accepted = self._messages.labels("accepted", "")
        metrics.live_gauge(
            "wasmxds_health_metrics_streams",
            "open metrics service streams (Envoy stats sinks)",
            (),
            lambda: [((), float(open_streams()))],
        )

    def on_metrics_message(self, result: str, reason: str, samples: int) -> None:
        if result == "accepted":
            self._accepted.inc()
        else:
            self._messages.labels(result, reason).inc()
        if samples:
            self._samples.inc(samples)
