"""Kubernetes status of a staged rollout: a RolloutProgressing or RolledBack condition."""

from __future__ import annotations

from typing import Any

from tests.rollout.harness import Fleet, staged_plugin
from wasmxds.api.objects import ObjectKey
from wasmxds.reconcile.kubestatus import (
    ModuleReadiness,
    PluginReport,
    RolloutCondition,
    _stored_signature,
    desired_status,
)
from wasmxds.reconcile.staging import Staging
from wasmxds.sources.kube.objects import ObservedObject

KEY = ObjectKey("default", "p")


def conditions(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["status"]["conditions"]}


def test_rollout_condition_sits_beside_ready_and_replaces_its_predecessor():
    """Progressing, then RolledBack: one rollout condition at a time, Ready kept, others kept."""
    progressing = RolloutCondition("RolloutProgressing", "True", "Progressing", "at step 1/3")
    report = PluginReport(ModuleReadiness.FETCHED, proxies=4, rollout=progressing)
    foreign = {"type": "Other", "status": "True"}
    first, signature = desired_status(
        ObservedObject(KEY, 2, status={"conditions": [foreign]}), report, now=lambda: "T1"
    )
    found = conditions(first)
    assert set(found) == {"Other", "Ready", "RolloutProgressing"}
    assert found["RolloutProgressing"]["reason"] == "Progressing"
    assert found["RolloutProgressing"]["observedGeneration"] == 2
    stored = ObservedObject(KEY, 2, status=first["status"])
    assert _stored_signature(stored) == signature, "an unchanged rollout would be patched again"

    back = RolloutCondition("RolledBack", "True", "Nack", "rolled back: proxy 'a' rejected it")
    second, changed = desired_status(
        stored, PluginReport(ModuleReadiness.FETCHED, proxies=4, rollout=back), now=lambda: "T2"
    )
    found = conditions(second)
    assert set(found) == {"Other", "Ready", "RolledBack"}
    assert found["RolledBack"]["lastTransitionTime"] == "T2"
    assert found["Ready"]["lastTransitionTime"] == "T1"
    assert changed != signature


def test_staging_describes_each_phase():
    """The engine's phases become the documented condition types and reasons."""
    fleet = Fleet()
    staging = Staging(fleet.engine)
    fleet.push(staged_plugin(pluginConfig={"v": 1}))
    assert staging.condition(KEY) is None
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    progressing = staging.condition(KEY)
    assert progressing is not None
    assert (progressing.type, progressing.status, progressing.reason) == (
        "RolloutProgressing",
        "True",
        "Progressing",
    )
    assert "step 1/3 (25%)" in progressing.message
    fleet.engine.abort("default/p")
    rolled = staging.condition(KEY)
    assert rolled is not None
    assert (rolled.type, rolled.status, rolled.reason) == ("RolledBack", "True", "Abort")
    assert "aborted by an operator" in rolled.message
