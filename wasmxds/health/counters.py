"""Which of Envoy's stats say a Wasm plugin or a listener is failing, and reading them.

Proved with a module that traps in ``proxy_on_request_headers`` in Envoy 1.40
(V8; e2e/test_proxy_health.py, e2e/harness/wasm/trap.c):

- A trap counts in **no** Wasm stat under ``failure_policy`` FAIL_CLOSED (the
  default, ``failStrategy: FAIL_CLOSE``) or FAIL_OPEN: Envoy logs
  ``Function: proxy_on_request_headers failed: Uncaught RuntimeError:
  unreachable`` and answers 503 (FAIL_CLOSED: that request and every later one
  on the failed VM; FAIL_OPEN: the trapping request only, later ones skip the
  plugin). ``wasm.envoy.wasm.runtime.v8.{created,active}`` and
  ``wasm.wasm_vm_count`` are VM lifecycle figures, not failures.
- Under FAIL_RELOAD the plugin's own counters rise:
  ``wasm.<plugin>.vm_reload_backoff`` (requests that met the failed VM while a
  reload waited), ``wasm.<plugin>.vm_reload`` (reloads),
  ``wasm.<plugin>.vm_reload_failure``; ``<plugin>`` is ``PluginConfig.name``,
  which wasmxds sets to the ECDS resource name ``<namespace>.<name>``, so these
  tell plugins apart.
- The listeners' HTTP connection managers count every answer:
  ``http.<stat_prefix>.downstream_rq_completed`` and
  ``http.<stat_prefix>.downstream_rq_5xx`` (with ``emit_tags_as_labels``:
  ``http.downstream_rq_completed`` and ``http.downstream_rq_xx`` labelled
  ``envoy.http_conn_manager_prefix`` and ``envoy.response_code_class``). The
  admin listener (prefix ``admin``) is left out.

So the 5xx rate is the signal for the default failure policy, and the reload
counters an early, per-plugin one under FAIL_RELOAD.

A flush of an Envoy with 100 clusters holds ~5,500 families, of which a
handful matter. Decoding them all costs ~4 ms per message in Python
(benchmarks/health.py); :func:`scan_families` instead finds the few wanted
family names in the raw bytes (a regular expression, at memory speed) and
decodes only those families: ~0.3 ms.
"""

from __future__ import annotations

import re
from typing import Any

from wasmxds.health.report import NodeReport, plugin_of
from wasmxds.health.wire import COUNTER, MetricFamily

__all__ = ["read_report", "scan_families"]

_WASM = "wasm."
_HTTP = "http."
_COMPLETED = ".downstream_rq_completed"
_5XX = ".downstream_rq_5xx"
_PREFIX_LABEL = "envoy.http_conn_manager_prefix"
_CLASS_LABEL = "envoy.response_code_class"
_ADMIN = "admin"


# A MetricFamily starts with its name (field 1: tag 0x0a, a one-byte length, the
# name), the wire order protobuf writers use. Only the names read_report wants.
_WANTED_NAME = re.compile(
    rb"\x0a([\x01-\x7f])((?:http|wasm)\.(?:[\x20-\x7e]{0,120}?\.)?"
    rb"(?:downstream_rq_completed|downstream_rq_5xx|downstream_rq_xx"
    rb"|vm_reload_backoff|vm_reload_failure|vm_reload))"
)
_FAMILY_TAG = 0x12  # StreamMetricsMessage.envoy_metrics: field 2, length-delimited


def _family_at(raw: bytes, start: int) -> bytes | None:
    """The MetricFamily whose encoding starts at ``start``, if ``raw`` frames one there
    (``0x12``, its length as a varint, then the family)."""
    for size in range(1, 5):
        tag_at = start - size - 1
        if tag_at < 0 or raw[tag_at] != _FAMILY_TAG:
            continue
        varint = raw[start - size : start]
        if varint[-1] & 0x80 or any(b < 0x80 for b in varint[:-1]):
            continue
        length = 0
        for shift, byte in enumerate(varint):
            length |= (byte & 0x7F) << (7 * shift)
        if start + length <= len(raw):
            return raw[start : start + length]
    return None


def scan_families(raw: bytes) -> list[Any]:
    """The MetricFamily messages of a serialized StreamMetricsMessage that
    :func:`read_report` reads, decoded; the others are never decoded."""
    families = []
    for match in _WANTED_NAME.finditer(raw):
        if raw[match.start() + 1] != len(match.group(2)):
            continue  # a longer name that merely starts like a wanted one
        family = _family_at(raw, match.start())
        if family is not None:
            families.append(MetricFamily.FromString(family))
    return families


def _labels(metric: Any) -> dict[str, str]:
    return {pair.name: pair.value for pair in metric.label}


def read_report(families: Any) -> tuple[NodeReport, int]:
    """The health figures in one message's ``envoy_metrics`` (counters as deltas), and
    how many samples were read; every other family is passed over undecoded."""
    failures: dict[str, float] = {}
    requests = errors = 0.0
    samples = 0
    for family in families:
        name: str = family.name
        if family.type != COUNTER:
            continue
        if name.startswith(_WASM):
            if plugin_of(name) is None:
                continue
            value = sum(metric.counter.value for metric in family.metric)
            samples += len(family.metric)
            if value > 0:
                failures[name] = failures.get(name, 0.0) + value
        elif name.startswith(_HTTP):
            if name == "http.downstream_rq_completed" or name == "http.downstream_rq_xx":
                # Tags as labels: the connection manager (and code class) are labels.
                for metric in family.metric:
                    labels = _labels(metric)
                    if labels.get(_PREFIX_LABEL) == _ADMIN:
                        continue
                    samples += 1
                    if name.endswith(_COMPLETED):
                        requests += metric.counter.value
                    elif labels.get(_CLASS_LABEL) == "5":
                        errors += metric.counter.value
            elif name.endswith((_COMPLETED, _5XX)):
                prefix = name[len(_HTTP) : name.rindex(".")]
                if prefix == _ADMIN:
                    continue
                value = sum(metric.counter.value for metric in family.metric)
                samples += len(family.metric)
                if name.endswith(_COMPLETED):
                    requests += value
                else:
                    errors += value
    return NodeReport(failures=failures, requests=requests, errors=errors), samples
