"""The staging benchmark still works on a tiny fleet (figures printed, no timing asserted)."""

from __future__ import annotations

from benchmarks import rollout


def test_staging_benchmark_runs_and_stages_only_the_first_cohort():
    """Unstaged, every stream gets the change; staged at 25%, about a quarter of them does."""
    everywhere = rollout.measure(400, 4, 3, staged=False)
    staged = rollout.measure(400, 4, 3, staged=True)
    print(everywhere, staged)
    assert everywhere["responses"] == 400
    assert 50 < staged["responses"] < 150
    assert staged["memos"] == 2 * everywhere["memos"]
