"""Cohort points: a stable hash of the node id, spread evenly over [0, 100)."""

from __future__ import annotations

import hashlib

from tests.factories import make_node
from wasmxds.xds.node import cohort_point


def test_cohort_is_the_first_eight_bytes_of_sha256():
    """The point is sha256(id)[:8] scaled to [0, 100): the same on every replica and restart."""
    head = hashlib.sha256(b"edge-7").digest()[:8]
    assert cohort_point("edge-7") == int.from_bytes(head, "big") * 100.0 / 2**64
    assert make_node("edge-7").cohort == cohort_point("edge-7")


def test_cohort_ignores_namespace_and_labels():
    """Only the node id decides the cohort: relabelling a proxy does not move it."""
    assert make_node("n", "a", app="x").cohort == make_node("n", "b", app="y").cohort


def test_cohorts_spread_evenly():
    """Of 4000 ids, each quarter of [0, 100) gets roughly a quarter (generous bound)."""
    points = [cohort_point(f"proxy-{i}") for i in range(4000)]
    assert all(0 <= p < 100 for p in points)
    quarters = [sum(1 for p in points if q * 25 <= p < (q + 1) * 25) for q in range(4)]
    print("ids per quarter:", quarters)
    assert all(800 < count < 1200 for count in quarters)
