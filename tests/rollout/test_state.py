"""Rollouts across a restart: resumed at their step and phase from <cache>/rollouts.json."""

from __future__ import annotations

import json
from pathlib import Path

from tests.rollout.harness import Fleet, resources, staged_plugin
from tests.xds.helpers import module_for
from wasmxds.rollout.engine import resource_version
from wasmxds.rollout.state import RolloutFile

NAME = "default.p"
V1 = staged_plugin(pluginConfig={"v": 1})
V2 = staged_plugin(pluginConfig={"v": 2})


def restarted(path: Path, previous: Fleet) -> Fleet:
    """A new engine on the same file, its proxies reconnecting, the stable version restored."""
    fleet = Fleet(len(previous.proxies), saved=RolloutFile.load(path))
    fleet.engine.restore(resources(V1), module_for(V1))
    fleet.now = previous.now + 30
    return fleet


async def test_restart_resumes_at_the_step_it_reached(tmp_path: Path):
    """A rollout at step 1 before the restart is at step 1 after it, its step baking anew."""
    path = tmp_path / "rollouts.json"
    fleet = Fleet(saved=RolloutFile(path))
    fleet.push(V1)
    fleet.push(V2)
    fleet.tick(10)
    assert fleet.engine.view("default/p")["step"] == 1
    await fleet.engine.flush()
    assert json.loads(path.read_text())["rollouts"][NAME]["step"] == 1

    again = restarted(path, fleet)
    again.push(V2)
    view = again.engine.view("default/p")
    assert (view["phase"], view["step"]) == ("Progressing", 1)
    assert [e["event"] for e in view["history"]] == ["started", "advanced"]
    new = resource_version(resources(V2))
    in_step = {p.node.id for p in again.proxies if p.node.cohort < 50}
    assert {p.node.id for p in again.holding(NAME, new)} == in_step
    again.tick(9)
    assert again.engine.view("default/p")["step"] == 1, "the step did not bake anew"
    again.tick(1)
    assert again.engine.view("default/p")["step"] == 2


async def test_restart_keeps_a_rollback(tmp_path: Path):
    """A rolled-back version stays rolled back after a restart: the old one is served."""
    path = tmp_path / "rollouts.json"
    fleet = Fleet(saved=RolloutFile(path))
    fleet.push(V1)
    fleet.push(V2)
    fleet.engine.abort("default/p")
    await fleet.engine.flush()

    again = restarted(path, fleet)
    again.push(V2)
    assert again.engine.view("default/p")["phase"] == "RolledBack"
    old = resource_version(resources(V1))
    assert len(again.holding(NAME, old)) == len(again.proxies)


async def test_changed_while_down_starts_over(tmp_path: Path):
    """A plugin changed while wasmxds was down: the saved rollout is dropped, not misapplied."""
    path = tmp_path / "rollouts.json"
    fleet = Fleet(saved=RolloutFile(path))
    fleet.push(V1)
    fleet.push(V2)
    fleet.tick(10)
    await fleet.engine.flush()
    again = restarted(path, fleet)
    again.push(staged_plugin(pluginConfig={"v": 3}))
    view = again.engine.view("default/p")
    assert (view["phase"], view["step"]) == ("Progressing", 0)
    assert [e["event"] for e in view["history"]] == ["started"]


def unrestored(path: Path, previous: Fleet) -> Fleet:
    """A new engine on the same file whose stable version could not be restored."""
    fleet = Fleet(len(previous.proxies), saved=RolloutFile.load(path))
    fleet.now = previous.now + 30
    return fleet


async def test_unrestored_previous_keeps_a_rollback_off_every_proxy(tmp_path: Path):
    """A rolled-back version is not served after a restart that lost the previous version."""
    path = tmp_path / "rollouts.json"
    new = resource_version(resources(V2))
    fleet = Fleet(20, saved=RolloutFile(path))
    for proxy in fleet.proxies:
        proxy.reject = {new}
    fleet.push(V1)
    fleet.push(V2)
    assert fleet.engine.view("default/p")["phase"] == "RolledBack"
    await fleet.engine.flush()

    again = unrestored(path, fleet)
    again.push(V2)
    view = again.engine.view("default/p")
    assert view["phase"] == "RolledBack"
    assert "could not be restored after a restart" in view["reason"]
    assert again.holding(NAME, new) == []
    assert all(p.holds(NAME) is not None for p in again.proxies), "the stand-in is served"
    again.push(V2)  # a later pass holds it too
    assert again.holding(NAME, new) == []
    await again.engine.flush()
    saved = json.loads(path.read_text())["rollouts"][NAME]
    assert (saved["phase"], saved["new"]) == ("RolledBack", new)

    # The spec changes: the next version goes everywhere (nothing to stage against).
    v3 = staged_plugin(pluginConfig={"v": 3})
    again.push(v3)
    assert len(again.holding(NAME, resource_version(resources(v3)))) == 20


async def test_unrestored_previous_holds_a_rollout_paused(tmp_path: Path):
    """A rollout under way whose previous version was lost is held Paused, not finished."""
    path = tmp_path / "rollouts.json"
    fleet = Fleet(saved=RolloutFile(path))
    fleet.push(V1)
    fleet.push(V2)
    fleet.tick(10)
    await fleet.engine.flush()

    again = unrestored(path, fleet)
    again.push(V2)
    view = again.engine.view("default/p")
    assert (view["phase"], view["step"]) == ("Paused", 1)
    assert "promote or abort" in view["reason"]
    new = resource_version(resources(V2))
    in_step = {p.node.id for p in again.proxies if p.node.cohort < 50}
    assert {p.node.id for p in again.holding(NAME, new)} == in_step
    again.tick(3600)
    assert again.engine.view("default/p")["phase"] == "Paused"
    again.engine.promote("default/p")
    again.push(V2)
    assert len(again.holding(NAME, new)) == len(again.proxies)


def test_a_corrupt_file_is_ignored(tmp_path: Path):
    """An unreadable rollouts file is logged and ignored: nothing is resumed, nothing fails."""
    path = tmp_path / "rollouts.json"
    path.write_text("{not json")
    saved = RolloutFile.load(path)
    assert saved.document() == {"version": 1, "rollouts": {}}
