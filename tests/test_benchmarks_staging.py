"""The staged cases of ``benchmarks.run``: what they write, how latency is counted, what prints."""

from __future__ import annotations

from benchmarks import run
from wasmxds.api.parse import parse_text
from wasmxds.api.rollout import NO_STAGING, rollout_policy


def test_staged_cases_stage_only_the_changed_plugin():
    """The staged case's changed plugin has valid rollout annotations; the others and the
    unstaged case have none."""
    for case_name, staged in (("staged", True), ("basic", False), ("classes-staged", True)):
        case = run.CASES[case_name]
        for plugin in (0, 1) if case.plugins > 1 else (0,):
            parsed = parse_text(case.plugin_yaml(plugin, 1, 16), f"plugin-{plugin}.yaml")
            assert not parsed.problems, parsed.problems
            (wasm_plugin,) = parsed.plugins
            policy = rollout_policy(wasm_plugin.annotations, NO_STAGING)
            expected = (25.0, 50.0, 100.0) if staged and plugin == 0 else NO_STAGING.steps
            assert policy.steps == expected, (case_name, plugin)
        assert case.settle == (2.0 if staged else 0.0)


def test_each_node_counts_from_the_push_that_brought_it_the_change():
    """A node is timed from the last push before it received the change; with no push
    known (the floor), from the change itself."""
    pushes = [10.0, 12.0, 14.0]
    assert run._push_before(pushes, 10.5, 10.0) == 10.0
    assert run._push_before(pushes, 12.2, 10.0) == 12.0
    assert run._push_before(pushes, 20.0, 10.0) == 14.0
    assert run._push_before([], 20.0, 10.0) == 10.0


def test_staging_table_compares_a_case_with_its_staged_variant():
    """The staging table puts the unstaged and staged figures side by side with ratios."""

    def result(case: str, cpu: float, all_acked: float) -> run.Result:
        return run.Result(
            server="wasmxds",
            case=case,
            flavour="sotw",
            nodes=2000,
            latency_p50_ms=50.0,
            latency_p99_ms=100.0,
            latency_max_ms=120.0,
            rounds_all_acked_ms=[all_acked],
            cpu_per_push_s=cpu,
        )

    text = run.staging_table([result("basic", 0.5, 120.0), result("staged", 1.0, 2200.0)])
    print(text)
    assert "staging cost: basic, sotw, 2000 nodes" in text
    cpu_row = next(line for line in text.splitlines() if line.startswith("server CPU"))
    assert cpu_row.split()[-3:] == ["0.500", "1.000", "2.00"]
    assert run.staging_table([result("basic", 0.5, 120.0)]) == ""
