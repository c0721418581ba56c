"""Is a plugin's new version healthy? The proxies' own counters decide.

Envoy reports its stats over the metrics service (:mod:`wasmxds.health.metrics_service`)
every flush interval, counters as deltas since the previous flush
(``report_counters_as_deltas``, which ``wasmxds bootstrap --stats-sink`` sets).
:class:`FleetHealth` keeps, per node id, only what a verdict needs, and only from
one proven identity (see :meth:`FleetHealth.bind_identities`):

- **Wasm failures**: when a Wasm failure counter rose, which, and by how much
  (:mod:`wasmxds.health.counters` says which Envoy stats those are; Envoy 1.40
  has them per plugin, and only under ``FAIL_RELOAD``).
- **Requests**: the listeners' downstream requests completed and those answered
  with 5xx, as running totals with checkpoints, so the rate since any moment
  in the kept history (30 minutes, to 10 s) can be read. A module that traps
  under the default failure policy shows here only: Envoy answers 503.

The rule (:meth:`FleetHealth.verdict`), for plugin ``P`` since time ``since``:

1. **Unhealthy** when a Wasm failure counter of ``P`` rose on any new-version
   proxy at or after ``since``.
2. **Unhealthy** when the new-version proxies completed at least
   :data:`MIN_REQUESTS` requests since ``since`` and their 5xx rate exceeds the
   baseline by more than :data:`MARGIN` (5 percentage points). The baseline is
   the median of the old-version proxies' own 5xx rates since ``since``, each
   proxy with at least :data:`MIN_NODE_REQUESTS` counting once (so one proxy
   reporting huge counters cannot set it); without any, the median of the new
   proxies' own rates before ``since`` (their previous version); else 0 (no
   evidence of errors before the change).

A flush claiming more than :data:`MAX_FLUSH_REQUESTS` requests, or counters
that are not finite, is implausible and ignored whole (:meth:`FleetHealth.observe`
returns False, for the caller to count).
3. **Healthy** otherwise.

**No data** (no new-version proxy has reported since ``since``, e.g. no stats
sink is configured) is ``HealthVerdict(healthy=True, reason="no metrics",
details={"reporting": 0, ...})``, and :attr:`HealthVerdict.known` is False: a
rollout goes on by ACKs alone, as it would without health signals, and shows
the health as unknown. One that wants metrics before advancing waits while
``known`` is False.

Envoy's 5xx counters name no plugin: with several plugins changing at once on
the same proxies, a 5xx rise counts against each of them. A flush is dated when
it arrives, so one arriving just after ``since`` also carries up to a flush
interval (5 s) from before it. Each wasmxds replica knows only the proxies whose
metrics stream reaches it (with certificate identity: whose xDS stream is on it
too); replicas may judge the same rollout on different figures.
"""

from __future__ import annotations

import math
import statistics
import time
from array import array
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from wasmxds.health.report import NodeReport, plugin_of

__all__ = [
    "HEALTH_WINDOW",
    "MARGIN",
    "MAX_FLUSH_REQUESTS",
    "MIN_NODE_REQUESTS",
    "MIN_REQUESTS",
    "FleetHealth",
    "HealthVerdict",
    "NodeReport",
]

MIN_REQUESTS = 20
"""Requests the new proxies need since ``since`` before their 5xx rate counts."""
MARGIN = 0.05
"""How far (as a fraction: 5 percentage points) the new 5xx rate may exceed the old."""
MIN_NODE_REQUESTS = 10
"""Requests a proxy needs in the period before its own 5xx rate counts towards a baseline."""
MAX_FLUSH_REQUESTS = 1e6
"""Requests one flush (5 s) may claim: 200k/s per proxy is beyond any Envoy; more is a lie."""
MAX_FAILURE_STAT = 400
"""Longest failure stat name kept: ``wasm.`` + a namespace (63) + ``.`` + a name (253) +
the suffix fits; a longer one names no plugin wasmxds serves."""
_FAILURE_STATS_KEPT = 8
"""Distinct failure stat names kept per node: a proxy has a few plugins."""

_FAILURES_KEPT = 16
"""Failure events kept per node (the newest): a verdict needs one after ``since``."""
_CHECKPOINT_EVERY = 10.0
"""Seconds between kept request checkpoints: the precision of ``since`` for rates."""
_CHECKPOINTS_KEPT = 180
"""Request checkpoints kept per node: 30 minutes of history at one per 10 s."""
HEALTH_WINDOW = 300.0
"""Seconds a node's own health (debug pages) looks back."""


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """What the proxies say about a plugin's new version."""

    healthy: bool
    reason: str
    """One line a user can read: why unhealthy, or "no metrics", or "healthy"."""
    details: dict[str, Any] = field(default_factory=dict)
    """Figures behind the verdict: ``reporting`` (new proxies heard from since
    ``since``), ``failures`` (node id → {stat: count}), ``rates`` (requests and
    5xx of the new proxies and of the baseline, and which baseline)."""

    @property
    def known(self) -> bool:
        """False when no new-version proxy reported since ``since`` (healthy by default)."""
        return bool(self.details.get("reporting"))


class _Node:
    """What one node reported: failure events, and request totals with checkpoints."""

    __slots__ = ("checkpoints", "errors", "failures", "identity", "last_seen", "requests")

    def __init__(self, identity: str | None) -> None:
        self.identity = identity
        """The proven identity (SPIFFE ID) of whoever reported these figures; None: unproven."""
        self.failures: deque[tuple[float, str, float]] = deque(maxlen=_FAILURES_KEPT)
        self.requests = 0.0
        self.errors = 0.0
        # Flat (at, requests, errors) triples, oldest first: the totals as they stood
        # at that time. An array of doubles: 4 KiB per node when full.
        self.checkpoints = array("d")
        self.last_seen = 0.0

    def add(self, report: NodeReport, at: float) -> None:
        known = {stat for _, stat, _ in self.failures}
        for stat, delta in report.failures.items():
            if delta > 0 and len(stat) <= MAX_FAILURE_STAT:
                if stat not in known and len(known) >= _FAILURE_STATS_KEPT:
                    continue
                known.add(stat)
                self.failures.append((at, stat, delta))
        if not self.checkpoints or at - self.checkpoints[-3] >= _CHECKPOINT_EVERY:
            # The totals before this report are what held at the previous one.
            self.checkpoints.extend((self.last_seen or at, self.requests, self.errors))
            if len(self.checkpoints) > 3 * _CHECKPOINTS_KEPT:
                del self.checkpoints[:3]
        self.requests += max(report.requests, 0.0)
        self.errors += max(report.errors, 0.0)
        self.last_seen = at

    def failures_since(self, since: float, plugin: str | None = None) -> dict[str, float]:
        """Failure stats that rose at or after ``since`` (of ``plugin`` only, if given)."""
        counts: dict[str, float] = {}
        for at, stat, delta in self.failures:
            if at >= since and (plugin is None or plugin_of(stat) in (plugin, None)):
                counts[stat] = counts.get(stat, 0.0) + delta
        return counts

    def _totals_at(self, since: float) -> tuple[float, float]:
        """(requests, 5xx) as they stood at ``since``, to the checkpoints' precision."""
        points = self.checkpoints
        if since >= self.last_seen:
            return self.requests, self.errors
        if not points or points[0] > since:
            # Nothing kept from before: from the oldest kept (0 before the first report).
            return (points[1], points[2]) if points else (self.requests, self.errors)
        base = (0.0, 0.0)
        for i in range(0, len(points), 3):
            if points[i] > since:
                break
            base = (points[i + 1], points[i + 2])
        return base

    def requests_since(self, since: float) -> tuple[float, float]:
        """(requests, 5xx) reported after ``since``."""
        requests, errors = self._totals_at(since)
        return self.requests - requests, self.errors - errors

    def requests_before(self, since: float) -> tuple[float, float]:
        """(requests, 5xx) in the kept history before ``since``."""
        points = self.checkpoints
        if not points:
            return 0.0, 0.0
        requests, errors = self._totals_at(since)
        return requests - points[1], errors - points[2]


class FleetHealth:
    """Per node id, the health figures its proxy reported; verdicts over groups of nodes.

    Bounded: at most ``max_nodes`` nodes are kept (the one heard from least
    recently is dropped first), each in about 8 KiB at most whatever it sends
    (node id up to 512 characters): 20,000 nodes in about 160 MB.
    """

    def __init__(self, *, max_nodes: int = 20_000, clock: Callable[[], float] = time.time) -> None:
        self._nodes: dict[str, _Node] = {}
        self._max_nodes = max_nodes
        self._clock = clock
        self._identity_of: Callable[[str], str | None] | None = None

    def bind_identities(self, identity_of: Callable[[str], str | None]) -> None:
        """Count a node's figures only while they come from ``identity_of(node_id)``.

        With certificate identity: the one SPIFFE ID all of the node id's live xDS
        streams carry (None when none, or several). A node id's figures reported
        under another identity are never read, so one namespace's proxy cannot
        speak for another's.
        """
        self._identity_of = identity_of

    def _node(self, node_id: str) -> _Node | None:
        node = self._nodes.get(node_id)
        if node is None or self._identity_of is None:
            return node
        return node if node.identity == self._identity_of(node_id) else None

    def __len__(self) -> int:
        return len(self._nodes)

    def observe(
        self,
        node_id: str,
        report: NodeReport,
        *,
        at: float | None = None,
        identity: str | None = None,
    ) -> bool:
        """Record one flush of ``node_id``'s proxy (``at``: when it arrived, default now),
        reported by ``identity`` (its proven SPIFFE ID). False when implausible: ignored."""
        if not _plausible(report):
            return False
        when = self._clock() if at is None else at
        node = self._nodes.pop(node_id, None)
        if node is not None and node.identity != identity:
            node = None  # figures count for (node id, identity): another's start afresh
        if node is None:
            node = _Node(identity)
            while len(self._nodes) >= self._max_nodes:
                del self._nodes[next(iter(self._nodes))]
        self._nodes[node_id] = node  # newest last: the dict's order is the LRU order
        node.add(report, when)
        return True

    def node_health(self, node_id: str, *, window: float = HEALTH_WINDOW) -> dict[str, Any] | None:
        """The verdict on ``node_id`` alone over the last ``window`` seconds, as the debug
        pages show it (any plugin); None when it never reported."""
        node = self._node(node_id)
        if node is None:
            return None
        since = self._clock() - window
        verdict = self.verdict([node_id], (), since=since, plugin="")
        requests, errors = node.requests_since(since)
        return {
            "healthy": verdict.healthy,
            "reason": verdict.reason,
            "window_seconds": window,
            "last_report": node.last_seen,
            "wasm_failures": node.failures_since(since),
            "requests": requests,
            "errors_5xx": errors,
        }

    def verdict(
        self,
        new_nodes: Collection[str],
        old_nodes: Collection[str],
        *,
        since: float,
        plugin: str,
    ) -> HealthVerdict:
        """Is ``plugin``'s new version, held by ``new_nodes`` since ``since``, healthy?

        ``plugin`` is ``<namespace>/<name>`` or the ECDS resource name
        ``<namespace>.<name>`` (Envoy's ``PluginConfig.name``, which its Wasm failure
        stats carry; a namespace has no dots, so both name one plugin); "" counts
        every plugin's failures. ``old_nodes`` hold the previous version. ``since`` is a
        ``time.time()`` value. See the module docstring for the rule.
        """
        reporting = [n for n in new_nodes if (node := self._node(n)) and node.last_seen >= since]
        resource = plugin.replace("/", ".", 1) or None
        failures = {
            n: counts
            for n in reporting
            if (counts := self._nodes[n].failures_since(since, resource))  # _node(n) checked
        }
        rates = self._rates(new_nodes, old_nodes, since)
        details: dict[str, Any] = {
            "plugin": plugin,
            "since": since,
            "new": len(new_nodes),
            "reporting": len(reporting),
            "failures": failures,
            "rates": rates,
        }
        subject = f"the new version of {plugin}" if plugin else "its plugins"
        if failures:
            first = sorted(failures)[0]
            stats = ", ".join(f"{stat} +{n:g}" for stat, n in sorted(failures[first].items()))
            more = f" (and {len(failures) - 1} more proxies)" if len(failures) > 1 else ""
            return HealthVerdict(
                False, f"Wasm failures on proxy {first!r}{more} running {subject}: {stats}", details
            )
        if rates["compared"] and rates["new_rate"] > rates["baseline_rate"] + MARGIN:
            return HealthVerdict(
                False,
                f"5xx rate of the proxies running {subject} is {100 * rates['new_rate']:.1f}%"
                f" ({rates['new_5xx']:g} of {rates['new_requests']:g} requests), more than"
                f" {100 * MARGIN:g} points above the baseline's {100 * rates['baseline_rate']:.1f}%"
                f" ({rates['baseline']})",
                details,
            )
        if not reporting:
            return HealthVerdict(True, "no metrics", details)
        return HealthVerdict(True, "healthy", details)

    def _rates(
        self, new_nodes: Collection[str], old_nodes: Collection[str], since: float
    ) -> dict[str, Any]:
        new = self._figures(new_nodes, since, before=False)
        old = self._figures(old_nodes, since, before=False)
        prior = self._figures(new_nodes, since, before=True)
        new_requests, new_errors = sum(r for r, _ in new), sum(e for _, e in new)
        rates: dict[str, Any] = {
            "new_requests": new_requests,
            "new_5xx": new_errors,
            "old_requests": sum(r for r, _ in old),
            "old_5xx": sum(e for _, e in old),
            "compared": new_requests >= MIN_REQUESTS,
        }
        old_rates = _node_rates(old)
        prior_rates = _node_rates(prior)
        if old_rates:
            rates["baseline"] = "the old version since the change"
            rates["baseline_rate"] = statistics.median(old_rates)
            rates["baseline_proxies"] = len(old_rates)
        elif prior_rates:
            rates["baseline"] = "the same proxies before the change"
            rates["baseline_rate"] = statistics.median(prior_rates)
            rates["baseline_proxies"] = len(prior_rates)
        else:
            rates["baseline"] = "no traffic to compare with: 0%"
            rates["baseline_rate"] = 0.0
        if rates["compared"]:
            rates["new_rate"] = new_errors / new_requests
        else:
            rates["why_not"] = f"5xx rates are compared from {MIN_REQUESTS} requests"
        return rates

    def _figures(
        self, nodes: Collection[str], since: float, *, before: bool
    ) -> list[tuple[float, float]]:
        """(requests, 5xx) of each of ``nodes`` heard from, after (or before) ``since``."""
        figures = []
        for n in nodes:
            node = self._node(n)
            if node is not None:
                figures.append(
                    node.requests_before(since) if before else node.requests_since(since)
                )
        return figures


def _node_rates(figures: list[tuple[float, float]]) -> list[float]:
    """Each node's own 5xx rate, of those with enough requests for one."""
    return [min(e / r, 1.0) for r, e in figures if r >= MIN_NODE_REQUESTS]


def _plausible(report: NodeReport) -> bool:
    counts = (report.requests, report.errors, *report.failures.values())
    return all(math.isfinite(c) for c in counts) and (
        report.requests <= MAX_FLUSH_REQUESTS and report.errors <= MAX_FLUSH_REQUESTS
    )
