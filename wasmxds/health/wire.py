"""The metrics service's messages, described here because ``xds-protos`` lacks them.

``xds-protos`` 1.85 ships neither ``envoy/service/metrics/v3/metrics_service.proto``
nor the Prometheus client model (``io/prometheus/client/metrics.proto``) it uses.
Both are small and stable, so the fields wasmxds reads are declared here, with
the upstream field numbers, in a private descriptor pool (no clash should a
later ``xds-protos`` bring the real ones) and parsed by the same upb runtime as
every other message. Fields not declared (histograms, summaries, exemplars,
timestamps) stay unknown fields: skipped bytes, never decoded into objects.

``Identifier.node`` is declared as bytes and decoded with the real
``envoy.config.core.v3.Node`` (the same bytes on the wire).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["COUNTER", "GAUGE", "METHOD", "SERVICE", "MetricFamily", "StreamMetricsMessage"]

SERVICE = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"

# io.prometheus.client.MetricType
COUNTER = 0
GAUGE = 1

_F = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str,
    number: int,
    kind: descriptor_pb2.FieldDescriptorProto.Type.ValueType,
    *,
    repeated: bool = False,
    type_name: str = "",
) -> descriptor_pb2.FieldDescriptorProto:
    field = _F(
        name=name,
        number=number,
        type=kind,
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    return field


def _message(name: str, *fields: Any) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _build() -> tuple[Any, Any]:
    prometheus = descriptor_pb2.FileDescriptorProto(
        name="wasmxds/health/io_prometheus_client_subset.proto",
        package="io.prometheus.client",
        syntax="proto2",
        message_type=[
            _message(
                "LabelPair",
                _field("name", 1, _F.TYPE_STRING),
                _field("value", 2, _F.TYPE_STRING),
            ),
            _message("Gauge", _field("value", 1, _F.TYPE_DOUBLE)),
            _message("Counter", _field("value", 1, _F.TYPE_DOUBLE)),
            _message(
                "Metric",
                _field(
                    "label",
                    1,
                    _F.TYPE_MESSAGE,
                    repeated=True,
                    type_name=".io.prometheus.client.LabelPair",
                ),
                _field("gauge", 2, _F.TYPE_MESSAGE, type_name=".io.prometheus.client.Gauge"),
                _field("counter", 3, _F.TYPE_MESSAGE, type_name=".io.prometheus.client.Counter"),
            ),
            _message(
                "MetricFamily",
                _field("name", 1, _F.TYPE_STRING),
                # The MetricType enum, as its number: an enum would need declaring too.
                _field("type", 3, _F.TYPE_INT32),
                _field(
                    "metric",
                    4,
                    _F.TYPE_MESSAGE,
                    repeated=True,
                    type_name=".io.prometheus.client.Metric",
                ),
            ),
        ],
    )
    service = descriptor_pb2.FileDescriptorProto(
        name="wasmxds/health/envoy_metrics_service_subset.proto",
        package="envoy.service.metrics.v3",
        syntax="proto3",
        dependency=[prometheus.name],
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="StreamMetricsMessage",
                field=[
                    _field(
                        "identifier",
                        1,
                        _F.TYPE_MESSAGE,
                        type_name=".envoy.service.metrics.v3.StreamMetricsMessage.Identifier",
                    ),
                    _field(
                        "envoy_metrics",
                        2,
                        _F.TYPE_MESSAGE,
                        repeated=True,
                        type_name=".io.prometheus.client.MetricFamily",
                    ),
                ],
                nested_type=[_message("Identifier", _field("node", 1, _F.TYPE_BYTES))],
            )
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(prometheus)
    pool.Add(service)

    def find(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return find("envoy.service.metrics.v3.StreamMetricsMessage"), find(
        "io.prometheus.client.MetricFamily"
    )


StreamMetricsMessage, MetricFamily = _build()
"""``envoy.service.metrics.v3.StreamMetricsMessage`` and ``io.prometheus.client.MetricFamily``
(the subsets wasmxds reads)."""
