"""The health verdict's rules: Wasm failures, 5xx rate against a baseline, and no data."""

from __future__ import annotations

import tracemalloc

from wasmxds.health.report import NodeReport, plugin_of
from wasmxds.health.verdict import (
    MARGIN,
    MAX_FLUSH_REQUESTS,
    MIN_NODE_REQUESTS,
    MIN_REQUESTS,
    FleetHealth,
)

PLUGIN = "default.trap"
T0 = 1_000_000.0


def traffic(health: FleetHealth, node: str, *, at: float, requests: float, errors: float) -> None:
    health.observe(node, NodeReport(requests=requests, errors=errors), at=at)


def test_no_reports_is_healthy_but_unknown():
    """Without any report from the new proxies the verdict is healthy, "no metrics", not known."""
    health = FleetHealth()
    verdict = health.verdict(["new-1"], ["old-1"], since=T0, plugin=PLUGIN)
    assert verdict.healthy
    assert verdict.reason == "no metrics"
    assert not verdict.known
    assert verdict.details["reporting"] == 0


def test_reports_from_before_since_do_not_count_as_reporting():
    """A proxy last heard from before ``since`` has not reported on the new version yet."""
    health = FleetHealth()
    traffic(health, "new-1", at=T0 - 30, requests=100, errors=100)
    verdict = health.verdict(["new-1"], [], since=T0, plugin=PLUGIN)
    assert verdict.healthy
    assert not verdict.known


def test_quiet_new_proxies_are_healthy_and_known():
    """New proxies that report no failures and no errors are healthy, and the verdict is known."""
    health = FleetHealth()
    traffic(health, "new-1", at=T0 + 5, requests=50, errors=0)
    traffic(health, "old-1", at=T0 + 5, requests=50, errors=0)
    verdict = health.verdict(["new-1"], ["old-1"], since=T0, plugin=PLUGIN)
    assert verdict.healthy
    assert verdict.known
    assert verdict.reason == "healthy"


def test_a_wasm_failure_of_the_plugin_on_a_new_proxy_is_unhealthy():
    """One vm_reload_backoff of the plugin on a new proxy after ``since`` makes it unhealthy."""
    health = FleetHealth()
    stat = f"wasm.{PLUGIN}.vm_reload_backoff"
    health.observe("new-1", NodeReport(failures={stat: 3}), at=T0 + 5)
    verdict = health.verdict(["new-1", "new-2"], ["old-1"], since=T0, plugin=PLUGIN)
    assert not verdict.healthy
    assert "new-1" in verdict.reason
    assert stat in verdict.reason
    assert verdict.details["failures"] == {"new-1": {stat: 3}}


def test_plugin_may_be_named_as_namespace_slash_name():
    """The object key "default/trap" names the plugin whose stats say wasm.default.trap.*."""
    health = FleetHealth()
    health.observe("new-1", NodeReport(failures={f"wasm.{PLUGIN}.vm_reload": 1}), at=T0 + 5)
    assert not health.verdict(["new-1"], [], since=T0, plugin="default/trap").healthy
    assert health.verdict(["new-1"], [], since=T0, plugin="default/other").healthy


def test_failures_before_since_or_of_other_plugins_or_old_proxies_do_not_count():
    """Failures before ``since``, of another plugin, or on old proxies leave the verdict healthy."""
    health = FleetHealth()
    health.observe("new-1", NodeReport(failures={f"wasm.{PLUGIN}.vm_reload": 1}), at=T0 - 5)
    health.observe("new-1", NodeReport(failures={"wasm.default.other.vm_reload": 1}), at=T0 + 5)
    health.observe("old-1", NodeReport(failures={f"wasm.{PLUGIN}.vm_reload": 1}), at=T0 + 5)
    verdict = health.verdict(["new-1"], ["old-1"], since=T0, plugin=PLUGIN)
    assert verdict.healthy, verdict.reason
    # The per-node view counts every plugin's failures.
    everyone = health.verdict(["new-1"], [], since=T0, plugin="")
    assert not everyone.healthy


def test_5xx_rate_clearly_above_the_old_versions_is_unhealthy():
    """New proxies at 50% 5xx against old ones at 1% (enough requests on both) are unhealthy."""
    health = FleetHealth()
    traffic(health, "new-1", at=T0 + 5, requests=40, errors=20)
    traffic(health, "old-1", at=T0 + 5, requests=100, errors=1)
    verdict = health.verdict(["new-1"], ["old-1"], since=T0, plugin=PLUGIN)
    assert not verdict.healthy
    assert "5xx rate" in verdict.reason
    assert "50.0%" in verdict.reason
    assert verdict.details["rates"]["baseline"] == "the old version since the change"


def test_5xx_rate_within_the_margin_is_healthy():
    """A new 5xx rate less than MARGIN above the old one is noise, not a verdict."""
    health = FleetHealth()
    old_rate = 0.10
    new_errors = (old_rate + MARGIN / 2) * 100
    traffic(health, "new-1", at=T0 + 5, requests=100, errors=new_errors)
    traffic(health, "old-1", at=T0 + 5, requests=100, errors=old_rate * 100)
    assert health.verdict(["new-1"], ["old-1"], since=T0, plugin=PLUGIN).healthy


def test_too_few_new_requests_are_not_compared():
    """Below MIN_REQUESTS on the new proxies, even 100% 5xx is not a verdict yet."""
    health = FleetHealth()
    few = MIN_REQUESTS - 1
    traffic(health, "new-1", at=T0 + 5, requests=few, errors=few)
    verdict = health.verdict(["new-1"], [], since=T0, plugin=PLUGIN)
    assert verdict.healthy
    assert not verdict.details["rates"]["compared"]
    traffic(health, "new-1", at=T0 + 20, requests=1, errors=1)
    assert not health.verdict(["new-1"], [], since=T0, plugin=PLUGIN).healthy


def test_without_old_traffic_the_same_proxies_before_the_change_are_the_baseline():
    """With no old-version traffic, the new proxies' own rate before ``since`` is the baseline."""
    health = FleetHealth()
    # The proxies always failed 30% (a bad upstream): the new version changes nothing.
    for i in range(10):
        traffic(health, "new-1", at=T0 - 100 + 10 * i, requests=10, errors=3)
    for i in range(5):
        traffic(health, "new-1", at=T0 + 10 + 10 * i, requests=10, errors=3)
    verdict = health.verdict(["new-1"], ["old-gone"], since=T0, plugin=PLUGIN)
    assert verdict.healthy, verdict.reason
    assert verdict.details["rates"]["baseline"] == "the same proxies before the change"
    # Against no baseline at all, 30% would be unhealthy.
    fresh = FleetHealth()
    for i in range(5):
        traffic(fresh, "new-1", at=T0 + 10 + 10 * i, requests=10, errors=3)
    assert not fresh.verdict(["new-1"], [], since=T0, plugin=PLUGIN).healthy


def test_requests_before_since_are_not_counted_as_new():
    """Errors reported before ``since`` do not weigh on the new version's rate."""
    health = FleetHealth()
    traffic(health, "new-1", at=T0 - 60, requests=100, errors=100)
    traffic(health, "new-1", at=T0 + 20, requests=100, errors=0)
    verdict = health.verdict(["new-1"], [], since=T0, plugin=PLUGIN)
    assert verdict.healthy, verdict.reason
    assert verdict.details["rates"]["new_requests"] == 100


def test_node_health_is_the_nodes_own_verdict_over_the_window():
    """The debug view of a node: unhealthy while its recent 5xx rate is high, None if unheard."""
    now = [T0]
    health = FleetHealth(clock=lambda: now[0])
    assert health.node_health("proxy-1") is None
    traffic(health, "proxy-1", at=T0, requests=30, errors=30)
    view = health.node_health("proxy-1")
    assert view is not None
    assert not view["healthy"]
    assert view["requests"] == 30
    assert view["errors_5xx"] == 30
    now[0] = T0 + 10_000  # long after: the window holds nothing
    traffic(health, "proxy-1", at=now[0], requests=30, errors=0)
    view = health.node_health("proxy-1")
    assert view is not None
    assert view["healthy"], view


def test_nodes_are_bounded_least_recently_heard_dropped():
    """Past max_nodes the node heard from least recently is forgotten."""
    health = FleetHealth(max_nodes=3)
    for i in range(5):
        traffic(health, f"n{i}", at=T0 + i, requests=1, errors=0)
    traffic(health, "n2", at=T0 + 9, requests=1, errors=0)
    traffic(health, "n5", at=T0 + 10, requests=1, errors=0)
    assert len(health) == 3
    assert health.node_health("n2") is not None
    assert health.node_health("n0") is None
    assert health.node_health("n3") is None


def test_a_node_stays_small_however_long_it_reports():
    """A day of 5 s reports with failures every time keeps a node within a few KiB."""
    health = FleetHealth()
    traffic(health, "warm-up", at=T0, requests=1, errors=0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(17_280):
        health.observe(
            "busy",
            NodeReport(failures={f"wasm.{PLUGIN}.vm_reload": 1}, requests=10, errors=1),
            at=T0 + 5 * i,
        )
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"one node after 17280 reports: {used} bytes")
    assert used < 64 * 1024


def test_plugin_of_reads_the_plugin_name_from_failure_stats():
    """Failure stats name their plugin, dots included; other stats name none."""
    assert plugin_of("wasm.team-a.auth.vm_reload_failure") == "team-a.auth"
    assert plugin_of("wasm.default.trap.vm_reload") == "default.trap"
    assert plugin_of("wasm.envoy.wasm.runtime.v8.created") is None
    assert plugin_of("wasm.vm_reload") is None


def test_one_old_proxy_with_huge_counters_cannot_set_the_baseline():
    """The baseline is the median of old proxies' own rates: one liar cannot switch rollback off."""
    health = FleetHealth()
    for i in range(3):
        traffic(health, f"new-{i}", at=T0 + 5, requests=100, errors=100)
    traffic(health, "old-0", at=T0 + 5, requests=100, errors=0)
    traffic(health, "old-1", at=T0 + 5, requests=100, errors=1)
    traffic(health, "old-evil", at=T0 + 5, requests=900_000, errors=900_000)
    verdict = health.verdict(
        [f"new-{i}" for i in range(3)], ["old-0", "old-1", "old-evil"], since=T0, plugin=PLUGIN
    )
    print(verdict.details["rates"])
    assert not verdict.healthy
    assert verdict.details["rates"]["baseline_rate"] == 0.01


def test_a_quiet_old_proxy_does_not_count_towards_the_baseline():
    """An old proxy with too few requests for a rate of its own is left out of the median."""
    health = FleetHealth()
    traffic(health, "new-1", at=T0 + 5, requests=100, errors=100)
    traffic(
        health, "old-quiet", at=T0 + 5, requests=MIN_NODE_REQUESTS - 1, errors=MIN_NODE_REQUESTS - 1
    )
    traffic(health, "old-busy", at=T0 + 5, requests=100, errors=0)
    verdict = health.verdict(["new-1"], ["old-quiet", "old-busy"], since=T0, plugin=PLUGIN)
    assert not verdict.healthy
    assert verdict.details["rates"]["baseline_rate"] == 0.0


def test_an_implausible_flush_is_ignored_whole():
    """More than MAX_FLUSH_REQUESTS in one flush, or non-finite counters: observe refuses it."""
    health = FleetHealth()
    for report in (
        NodeReport(requests=MAX_FLUSH_REQUESTS + 1, errors=0),
        NodeReport(requests=float("nan"), errors=0),
        NodeReport(requests=10, errors=float("inf")),
    ):
        assert not health.observe("liar", report, at=T0)
    assert health.node_health("liar") is None
    assert health.observe("liar", NodeReport(requests=MAX_FLUSH_REQUESTS, errors=0), at=T0)


def test_figures_count_only_for_the_identity_bound_to_the_node():
    """Figures of a node id reported under another identity are never read, nor merged."""
    owner: dict[str, str | None] = {"edge-1": "spiffe://a"}
    health = FleetHealth()
    health.bind_identities(lambda node: owner.get(node))
    health.observe("edge-1", NodeReport(requests=100, errors=100), at=T0 + 5, identity="spiffe://b")
    assert health.node_health("edge-1") is None
    assert not health.verdict(["edge-1"], [], since=T0, plugin=PLUGIN).known
    health.observe("edge-1", NodeReport(requests=100, errors=0), at=T0 + 6, identity="spiffe://a")
    verdict = health.verdict(["edge-1"], [], since=T0, plugin=PLUGIN)
    assert verdict.healthy
    assert verdict.known
    assert verdict.details["rates"]["new_5xx"] == 0
    owner["edge-1"] = None  # two identities hold streams as edge-1 now: nobody's figures count
    assert not health.verdict(["edge-1"], [], since=T0, plugin=PLUGIN).known


def test_a_hostile_node_stays_small_whatever_names_it_sends():
    """Long node ids and a new failure stat name per flush keep a node within 9 KiB."""
    health = FleetHealth()
    traffic(health, "warm-up", at=T0, requests=1, errors=0)
    nodes = 300
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(nodes):
        node = f"node-{n:06d}-" + "x" * 500
        for k in range(200):
            stat = f"wasm.{'p' * 100}{n}-{k}.vm_reload"
            health.observe(node, NodeReport({stat: 1.0}, 1.0, 0.0), at=T0 + 11 * k)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_node = used / nodes
    print(f"{per_node / 1024:.1f} KiB per node; 20,000 nodes: {per_node * 20_000 / 1e6:.0f} MB")
    assert per_node < 9 * 1024
