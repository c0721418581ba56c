"""Status write-back: the Ready condition, and patches only when it changes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from structlog.testing import capture_logs

from tests.sources.kube.fakeapi import running_fake_kube, wasmplugin
from tests.sources.test_kubernetes import KEY, eventually, plugin, running_source
from wasmxds.api.objects import ObjectKey, Problem
from wasmxds.reconcile.kubestatus import (
    ModuleReadiness,
    ObservedObject,
    PluginReport,
    StatusWriter,
    desired_status,
)
from wasmxds.sources.kube.protocol import KubeApiError


def condition_of(patch: dict[str, Any]) -> dict[str, Any]:
    condition: dict[str, Any] = patch["status"]["conditions"][-1]
    return condition


def test_conditions():
    """Each module state maps to a status, a reason and a message with the proxy count."""
    observed = ObservedObject(KEY, generation=3)
    cases = [
        (PluginReport(ModuleReadiness.FETCHED, proxies=2), "True", "ModuleFetched", "2 proxies"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "HTTP 404", 1), "False", "ModuleUnavailable",
         "404"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "HTTP 404", 1), "False", "ModuleUnavailable",
         "1 proxy gets the failStrategy stand-in"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "HTTP 404", 2, last_good=True), "False",
         "ModuleUnavailable", "2 proxies keep running the last good version"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "not signed", 1, reason="signature_invalid"),
         "False", "SignatureInvalid", "module unavailable: not signed"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "refused", 2, last_good=True,
                      reason="module_access_denied"),
         "False", "ModuleAccessDenied", "2 proxies keep running the last good version"),
        (PluginReport(ModuleReadiness.UNAVAILABLE, "HTTP 401", 1, reason="auth_failed"), "False",
         "ModuleUnavailable", "HTTP 401"),
        (PluginReport(ModuleReadiness.PENDING, proxies=1, last_good=True), "Unknown", "Pending",
         "1 proxy runs the previous version"),
        (PluginReport(ModuleReadiness.PENDING), "Unknown", "Pending", "not served until"),
        (PluginReport(ModuleReadiness.PENDING), "Unknown", "Pending", "fetching"),
        (None, "Unknown", "Pending", "not reconciled"),
    ]  # fmt: skip
    for report, status, reason, text in cases:
        patch, _ = desired_status(observed, report)
        condition = condition_of(patch)
        assert (condition["status"], condition["reason"]) == (status, reason)
        assert text in condition["message"]
        assert condition["observedGeneration"] == 3
        assert condition["type"] == "Ready"
        assert patch["status"]["proxies"] == (report.proxies if report else 0)


def test_condition_says_what_proxies_get_while_pending_or_stuck():
    """Pending with a stand-in says so; a module nothing retries says what to do instead."""
    observed = ObservedObject(KEY, generation=1)
    standin = PluginReport(ModuleReadiness.PENDING, proxies=2, standin=True)
    message = condition_of(desired_status(observed, standin)[0])["message"]
    assert message == (
        "fetching the module; 2 proxies get the failStrategy stand-in until it is fetched"
    )
    stuck = PluginReport(
        ModuleReadiness.UNAVAILABLE,
        "too large",
        1,
        last_good=True,
        action="raise --inline-max-size",
    )
    message = condition_of(desired_status(observed, stuck)[0])["message"]
    assert message == (
        "module unavailable: too large; 1 proxy keeps running the last good version"
        " (module and config); raise --inline-max-size"
    )
    assert "retried" not in message
    retried = PluginReport(ModuleReadiness.UNAVAILABLE, "HTTP 404", 1)
    message = condition_of(desired_status(observed, retried)[0])["message"]
    assert message.endswith("1 proxy gets the failStrategy stand-in while the fetch is retried")


def test_invalid_condition():
    """An invalid object says why, and whether its last valid version still runs."""
    problem = Problem("kubernetes:default/one", 0, "spec.phase: unknown value")
    observed = ObservedObject(KEY, generation=2, problems=(problem,), served=True)
    patch, _ = desired_status(observed, PluginReport(ModuleReadiness.FETCHED, proxies=1))
    condition = condition_of(patch)
    assert (condition["status"], condition["reason"]) == ("False", "Invalid")
    assert "spec.phase: unknown value" in condition["message"]
    assert "last valid version is still served" in condition["message"]


def test_transition_time_and_other_conditions():
    """The transition time moves only when the status value does; other conditions stay."""
    report = PluginReport(ModuleReadiness.FETCHED, proxies=1)
    foreign = {"type": "Reconciled", "status": "True"}
    first, _ = desired_status(ObservedObject(KEY, 1), report, now=lambda: "T1")
    stored = {"conditions": [foreign, condition_of(first)], "proxies": 1}
    again, _ = desired_status(
        ObservedObject(KEY, 1, status=stored),
        PluginReport(ModuleReadiness.FETCHED, proxies=5),
        now=lambda: "T2",
    )
    assert condition_of(again)["lastTransitionTime"] == "T1"
    assert again["status"]["conditions"][0] == foreign
    failed, _ = desired_status(
        ObservedObject(KEY, 1, status=stored),
        PluginReport(ModuleReadiness.UNAVAILABLE, "gone"),
        now=lambda: "T3",
    )
    assert condition_of(failed)["lastTransitionTime"] == "T3"


async def test_patches_only_on_change(tmp_path):
    """The writer patches /status with a merge patch once per change, and not after a restart."""
    async with running_fake_kube() as fake:
        fake.apply(plugin("one"))
        fake.apply(
            wasmplugin("bad", spec={"url": "http://modules.example/x.wasm", "phase": "LATER"})
        )
        reports = {KEY: PluginReport(ModuleReadiness.FETCHED, proxies=1)}
        async with running_source(fake, tmp_path) as running:
            source = running.source

            def writer() -> StatusWriter:
                return StatusWriter(
                    source.client, objects=source.observed, reports=lambda: reports, max_rate=1000
                )

            first = writer()
            assert await first.flush() == 2
            assert await first.flush() == 0
            patches = {p.name: p for p in fake.status_patches}
            assert {p.content_type for p in patches.values()} == {"application/merge-patch+json"}
            assert condition_of(patches["one"].body)["reason"] == "ModuleFetched"
            assert condition_of(patches["bad"].body)["reason"] == "Invalid"
            stored = fake.objects[("wasmplugins", "default", "one")]["status"]
            assert stored["proxies"] == 1

            reports[KEY] = PluginReport(ModuleReadiness.FETCHED, proxies=2)
            assert await first.flush() == 1
            assert await first.flush() == 0
            assert len(fake.status_patches) == 3

            # A restarted wasmxds reads what is stored and has nothing to write.
            await eventually(lambda: source.observed()[KEY].status.get("proxies") == 2)
            assert await writer().flush() == 0
            assert len(fake.status_patches) == 3


async def test_patch_failures():
    """A deleted object is skipped quietly; a refused patch is logged once, not every pass."""
    observed = {KEY: ObservedObject(KEY, 1), ObjectKey("default", "gone"): ObservedObject(KEY, 1)}

    class Refusing:
        calls = 0

        async def patch_status(self, key: ObjectKey, patch: Any) -> None:
            self.calls += 1
            status = 404 if key.name == "gone" else 403
            raise KubeApiError(f"patch status of WasmPlugin {key}", status, "forbidden")

    client = Refusing()
    writer = StatusWriter(cast(Any, client), objects=lambda: observed, reports=dict, max_rate=1000)
    with capture_logs() as logs:
        assert await writer.flush() == 0
        assert await writer.flush() == 0
    assert client.calls == 4  # retried every pass...
    warnings = [e for e in logs if e["event"] == "kubernetes.status_failed"]
    assert len(warnings) == 1  # ...but said once
    assert "RBAC" in warnings[0]["error"]


async def test_runs_on_trigger(tmp_path):
    """run() writes after a trigger, without waiting for the resync period."""
    async with running_fake_kube() as fake:
        fake.apply(plugin("one"))
        async with running_source(fake, tmp_path) as running:
            source = running.source
            writer = StatusWriter(
                source.client,
                objects=source.observed,
                reports=lambda: {KEY: PluginReport(ModuleReadiness.FETCHED, proxies=1)},
                interval=0.01,
                resync=3600,
            )
            task = asyncio.create_task(writer.run())
            try:
                writer.trigger()
                await fake.wait_for(lambda: len(fake.status_patches) == 1)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
