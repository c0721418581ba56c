"""The staged-rollout engine: steps, ACK and bake gating, rollback on NACK and bad health,
operator controls, and staying rolled back until the version changes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.factories import make_plugin
from tests.rollout.harness import Fleet, default_policy, resources, staged_plugin
from tests.xds.helpers import request
from wasmxds.errors import RolloutError, RolloutNotFound
from wasmxds.rollout.engine import ack_deadline, resource_version
from wasmxds.rollout.engine import versions as rollout_versions

NAME = "default.p"


def versions(*plugins: Any) -> list[str]:
    return [resource_version(resources(p)) for p in plugins]


def start(fleet: Fleet) -> tuple[str, str]:
    """Serve v1 everywhere, then push v2 (a config change): returns (old, new) versions."""
    v1 = staged_plugin(pluginConfig={"v": 1})
    v2 = staged_plugin(pluginConfig={"v": 2})
    fleet.push(v1)
    fleet.push(v2)
    old, new = versions(v1, v2)
    return old, new


def cohort_below(fleet: Fleet, percent: float) -> set[str]:
    return {p.node.id for p in fleet.proxies if p.node.cohort < percent}


def test_first_version_goes_everywhere_at_once():
    """A plugin's first version is not staged: every proxy gets it in the first pass."""
    fleet = Fleet()
    plugin = staged_plugin()
    fleet.push(plugin)
    (version,) = versions(plugin)
    assert len(fleet.holding(NAME, version)) == len(fleet.proxies)
    assert fleet.engine.views() == []


def test_a_change_reaches_the_steps_in_order():
    """25% first, 50% after the interval, then everyone; proxies outside a step keep the old."""
    fleet = Fleet()
    old, new = start(fleet)
    assert {p.node.id for p in fleet.holding(NAME, new)} == cohort_below(fleet, 25)
    assert len(fleet.holding(NAME, old)) == len(fleet.proxies) - len(cohort_below(fleet, 25))
    fleet.tick(5)
    assert fleet.engine.view("default/p")["step"] == 0, "advanced before the interval"
    fleet.tick(5)
    view = fleet.engine.view("default/p")
    assert (view["step"], view["phase"]) == (1, "Progressing")
    assert "ACKed" in view["reason"]
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert {p.node.id for p in fleet.holding(NAME, new)} == cohort_below(fleet, 50)
    fleet.tick(10)
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert len(fleet.holding(NAME, new)) == len(fleet.proxies)
    fleet.tick(10)
    view = fleet.engine.view("default/p")
    assert view["phase"] == "Complete"
    assert [e["event"] for e in view["history"]] == ["started", "advanced", "advanced", "completed"]
    print("cohort sizes:", len(cohort_below(fleet, 25)), len(cohort_below(fleet, 50)))


def test_a_step_waits_for_every_ack():
    """A connected proxy of the step that has not ACKed the new version holds the step."""
    fleet = Fleet()
    _old, _new = start(fleet)
    late = next(p for p in fleet.proxies if p.node.cohort < 25)
    late.protocol.types.clear()  # it reconnects and has not synced yet
    late.protocol.handle(request(NAME))
    fleet.tick(60)
    view = fleet.engine.view("default/p")
    assert view["step"] == 0
    assert view["proxies"]["waiting"] == 1
    late.sync(fleet.snapshot)
    fleet.tick(0.5)
    assert fleet.engine.view("default/p")["step"] == 1


def test_a_proxy_that_never_acks_pauses_the_rollout_and_is_named():
    """A step some proxy never ACKs pauses after its ACK deadline, naming the proxy."""
    fleet = Fleet(20)
    fleet.push(staged_plugin(pluginConfig={"v": 1}, steps="50,100", interval="10s"))
    silent = next(p for p in fleet.proxies if p.node.cohort < 50)
    silent.node = dataclasses.replace(silent.node, id="x" * 300)
    silent.sync = lambda snapshot: []  # type: ignore[method-assign]  # connected, never answers
    fleet.push(staged_plugin(pluginConfig={"v": 2}, steps="50,100", interval="10s"))
    fleet.tick(ack_deadline(10) - 1)
    view = fleet.engine.view("default/p")
    assert (view["phase"], view["step"]) == ("Progressing", 0)
    fleet.tick(1)
    view = fleet.engine.view("default/p")
    print("ack deadline for a 10s interval:", ack_deadline(10), "s")
    assert (view["phase"], view["step"]) == ("Paused", 0)
    assert view["reason"] == f"waiting for 1 proxies to ACK: {'x' * 200}…"
    assert view["proxies"]["waiting_nodes"] == ["x" * 200 + "…"]
    assert view["history"][-1]["event"] == "stalled"
    fleet.tick(3600)
    assert fleet.engine.view("default/p")["phase"] == "Paused", "it stays paused"
    fleet.engine.promote("default/p")
    assert fleet.engine.view("default/p")["phase"] == "Complete"


def test_nack_rolls_back_everywhere_and_the_rest_never_see_it():
    """A NACK of the new version puts every proxy back on the old; later cohorts never got it."""
    fleet = Fleet()
    v1 = staged_plugin(pluginConfig={"v": 1})
    v2 = staged_plugin(pluginConfig={"v": "bad"})
    old, new = versions(v1, v2)
    fleet.push(v1)
    rejecter = next(p for p in fleet.proxies if p.node.cohort < 25)
    rejecter.reject.add(new)
    fleet.push(v2)
    view = fleet.engine.view("default/p")
    assert view["phase"] == "RolledBack"
    assert rejecter.node.id in view["reason"]
    assert fleet.changes >= 1
    fleet.push(v2)  # the pass the rollback triggers
    assert len(fleet.holding(NAME, old)) == len(fleet.proxies)
    outside = [p for p in fleet.proxies if p.node.cohort >= 25]
    assert outside
    assert all(new not in p.received.get(NAME, []) for p in outside)
    fleet.tick(100)
    fleet.push(v2)
    assert fleet.engine.view("default/p")["phase"] == "RolledBack", "retried the same version"
    v3 = staged_plugin(pluginConfig={"v": 3})
    fleet.push(v3)
    assert fleet.engine.view("default/p")["phase"] == "Progressing"


@dataclass
class Verdict:
    healthy: bool
    reason: str = "healthy"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return True


@dataclass
class Health:
    """A test double of wasmxds.health.verdict.FleetHealth's verdict interface."""

    healthy: bool = True
    asked: list[tuple[frozenset[str], frozenset[str], float, str]] = field(default_factory=list)

    def verdict(self, new_nodes: Any, old_nodes: Any, *, since: float, plugin: str) -> Verdict:
        self.asked.append((frozenset(new_nodes), frozenset(old_nodes), since, plugin))
        if self.healthy:
            return Verdict(True)
        return Verdict(False, "wasm failures on 2 new-version proxies")


def test_unhealthy_verdict_rolls_back():
    """A bad verdict for the step's proxies rolls the plugin back, with the verdict's reason."""
    health = Health()
    fleet = Fleet(health=health)
    old, _new = start(fleet)
    fleet.tick(1)
    new_nodes, old_nodes, _since, plugin = health.asked[-1]
    assert new_nodes == cohort_below(fleet, 25)
    assert old_nodes == {p.node.id for p in fleet.proxies} - new_nodes
    assert plugin == "default/p"
    health.healthy = False
    fleet.tick(1)
    view = fleet.engine.view("default/p")
    assert view["phase"] == "RolledBack"
    assert "wasm failures" in view["reason"]
    assert view["health"]["healthy"] is False
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert len(fleet.holding(NAME, old)) == len(fleet.proxies)


def test_pause_resume_promote():
    """Paused does not advance; resumed advances after a fresh bake; promote completes at once."""
    fleet = Fleet()
    _old, new = start(fleet)
    fleet.engine.pause("default/p")
    fleet.tick(60)
    assert fleet.engine.view("default/p")["step"] == 0
    assert fleet.engine.resume("default/p")["phase"] == "Progressing"
    fleet.tick(9)
    assert fleet.engine.view("default/p")["step"] == 0
    fleet.tick(1)
    assert fleet.engine.view("default/p")["step"] == 1
    assert fleet.engine.promote("default/p")["phase"] == "Complete"
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert len(fleet.holding(NAME, new)) == len(fleet.proxies)
    with pytest.raises(RolloutError, match="Complete"):
        fleet.engine.pause("default/p")


def test_abort_rolls_back_and_unknown_plugins_are_refused():
    """Abort puts everyone on the old version; an unknown plugin is a clear not-found."""
    fleet = Fleet()
    old, _new = start(fleet)
    view = fleet.engine.abort("default/p")
    assert (view["phase"], view["reason"]) == ("RolledBack", "aborted by an operator")
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert len(fleet.holding(NAME, old)) == len(fleet.proxies)
    with pytest.raises(RolloutNotFound, match="other/q"):
        fleet.engine.pause("other/q")


def test_without_steps_changes_go_everywhere():
    """With no annotation and the default policy, every change reaches every proxy at once."""
    fleet = Fleet(default=default_policy())
    fleet.push(make_plugin("p", pluginConfig={"v": 1}))
    fleet.push(make_plugin("p", pluginConfig={"v": 2}))
    (new,) = versions(make_plugin("p", pluginConfig={"v": 2}))
    assert len(fleet.holding(NAME, new)) == len(fleet.proxies)
    assert fleet.engine.views() == []


def test_server_default_policy_stages_unannotated_plugins():
    """--rollout-steps stages a plugin that has no annotation of its own."""
    fleet = Fleet(default=default_policy("50,100", 5.0))
    fleet.push(make_plugin("p", pluginConfig={"v": 1}))
    fleet.push(make_plugin("p", pluginConfig={"v": 2}))
    view = fleet.engine.view("default/p")
    assert (view["steps"], view["interval_seconds"]) == ([50.0, 100.0], 5.0)


def test_reverting_the_spec_ends_the_rollout():
    """Going back to the stable version mid-rollout drops the rollout: everyone is on it."""
    fleet = Fleet()
    old, _new = start(fleet)
    fleet.push(staged_plugin(pluginConfig={"v": 1}))
    assert fleet.engine.views() == []
    assert len(fleet.holding(NAME, old)) == len(fleet.proxies)


def _with_override(limit: int) -> Any:
    plugin = staged_plugin(pluginConfig={"v": 1}, steps="50,100", interval="10s")
    annotations = dict(plugin.annotations)
    annotations["scope.wasmxds.io/override.strict.routes"] = "checkout"
    annotations["scope.wasmxds.io/override.strict.config"] = json.dumps({"limit": limit})
    return dataclasses.replace(plugin, annotations=annotations)


def test_an_override_only_change_is_staged_and_its_nack_rolls_back():
    """A change of a per-route override's config alone rolls out in steps; its NACK rolls back."""
    override = "default.p~strict"
    fleet = Fleet(20, names=(NAME, override))
    fleet.push(_with_override(5))
    before = {p.holds(override) for p in fleet.proxies}
    assert len(before) == 1
    fleet.push(_with_override(1))
    view = fleet.engine.view("default/p")
    assert (view["phase"], view["step"]) == ("Progressing", 0)
    changed = {p.node.id for p in fleet.proxies if p.holds(override) not in before}
    assert changed == {p.node.id for p in fleet.proxies if p.node.cohort < 50}
    assert 0 < len(changed) < 20
    fleet.tick(10)
    assert fleet.engine.view("default/p")["step"] == 1

    again = Fleet(20, names=(NAME, override))
    again.push(_with_override(5))
    bad = {p.holds(override) for p in again.proxies}
    third = _with_override(9)
    _, ecds = rollout_versions(resources(third))
    for proxy in again.proxies:
        proxy.reject = {ecds[override]}
    again.push(third)
    view = again.engine.view("default/p")
    assert view["phase"] == "RolledBack", view["reason"]
    assert ecds[override] in view["reason"]
    again.push(third)  # the pass the rollback triggers
    assert {p.holds(override) for p in again.proxies} == bad
