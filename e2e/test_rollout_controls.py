"""Steering staged rollouts with the real ``wasmxds serve`` and the real ``wasmxds rollout(s)``
commands, over simulated ADS proxies (SotW and delta) in cohorts by node id.

Paused, a rollout does not advance (not across a restart either: ``Paused`` is
kept in the cache); resumed, it advances after the step's bake; promoted, every
proxy gets the new version at once; aborted, every proxy is back on the
previous version and the proxies outside the step never received the new one.
``wasmxds rollouts`` shows each of these, and the metrics count the abort.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx

from e2e.harness.modules import ModuleServer
from e2e.harness.wasmxds import WasmxdsProcess, run_cli, running_wasmxds
from e2e.test_rollouts import SimProxy, node_ids, until, write

PLUGIN = "default/header-filter"
# Long enough that a paused step would have advanced during the waits below.
INTERVAL = 4.0
# Simulated proxies per band of cohort points: [0, 25), [25, 50), [50, 100).
PER_BAND = (4, 4, 6)


def story(control: WasmxdsProcess) -> str:
    """The rollout events so far, for a failed assertion's message."""
    return "\n".join(
        json.dumps(e) for e in control.events if str(e.get("event", "")).startswith("rollout.")
    )


async def rollouts(control: WasmxdsProcess) -> dict[str, Any]:
    """``wasmxds rollouts -o json``'s view of the plugin (also checks the table prints it)."""
    address = f"127.0.0.1:{await control.port_of('admin.listening')}"
    code, out, err = await run_cli("rollouts", "--admin-address", address)
    assert code == 0, err
    assert PLUGIN in out, out
    code, out, err = await run_cli("rollouts", "--admin-address", address, "-o", "json")
    assert code == 0, err
    (view,) = [v for v in json.loads(out) if v["plugin"] == PLUGIN]
    return dict(view)


async def steer(control: WasmxdsProcess, action: str) -> tuple[int, str]:
    """``wasmxds rollout ACTION default/header-filter``: (exit code, what it printed)."""
    address = f"127.0.0.1:{await control.port_of('admin.listening')}"
    code, out, err = await run_cli("rollout", action, PLUGIN, "--admin-address", address)
    print(f"wasmxds rollout {action}: {(out or err).strip()}")
    return code, out or err


async def start_fleet(control: WasmxdsProcess, exits: AsyncExitStack) -> list[list[SimProxy]]:
    """The simulated proxies, connected to ``control``, per band of cohort points."""
    bands = node_ids("steer", PER_BAND)
    xds_port = await control.port_of("xds.listening")
    channel = await exits.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}"))
    ids = [node_id for band in bands for node_id in band]
    sims = [SimProxy(node_id, delta=i % 2 == 1) for i, node_id in enumerate(ids)]
    tasks = [asyncio.create_task(sim.run(channel)) for sim in sims]
    exits.callback(lambda: [t.cancel() for t in tasks])
    return [[s for s in sims if s.node_id in band] for band in bands]


def holding(band: list[SimProxy]) -> set[str]:
    """The versions (demo headers) the proxies of ``band`` hold."""
    return {s.holds for s in band}


async def paused_at_the_first_step(
    control: WasmxdsProcess, config_dir: Path, url: str, by_band: list[list[SimProxy]]
) -> None:
    """Change v1 to v2, pause the rollout once the first cohort has it, and see it hold."""
    sims = [s for band in by_band for s in band]
    await until(lambda: all(s.holds == "v1" for s in sims), "every sim on v1", control)
    write(config_dir, url, "v2", interval=f"{INTERVAL:g}s")
    await until(lambda: holding(by_band[0]) == {"v2"}, "first cohort on v2", control)
    code, out = await steer(control, "pause")
    assert code == 0
    assert out.startswith(f"{PLUGIN}: Paused at step 1/3 (25%)")
    await asyncio.sleep(INTERVAL + 1.5)
    assert holding(by_band[1]) == holding(by_band[2]) == {"v1"}, story(control)
    view = await rollouts(control)
    assert (view["phase"], view["step"]) == ("Paused", 0)
    assert view["history"][-1]["event"] == "paused"


async def test_pause_resume_promote_and_abort(tmp_path: Path, modules: ModuleServer) -> None:
    """Pause holds the step, resume advances it, promote completes it, abort puts everyone
    back and the later cohorts never see the aborted version; the commands show each."""
    url = modules.url("header-filter.wasm")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    write(config_dir, url, "v1", interval=f"{INTERVAL:g}s")
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(running_wasmxds([config_dir], tmp_path / "cache"))
        by_band = await start_fleet(control, exits)
        sims = [s for band in by_band for s in band]
        await paused_at_the_first_step(control, config_dir, url, by_band)

        code, out = await steer(control, "resume")
        assert code == 0
        assert out.startswith(f"{PLUGIN}: Progressing at step 1/3 (25%)")
        await until(lambda: holding(by_band[1]) == {"v2"}, "second cohort on v2", control)
        assert holding(by_band[2]) == {"v1"}, story(control)
        code, out = await steer(control, "promote")
        assert code == 0, out
        assert out.startswith(f"{PLUGIN}: Complete")
        await until(lambda: all(s.holds == "v2" for s in sims), "every sim on v2", control)
        view = await rollouts(control)
        assert view["phase"] == "Complete"
        assert [h["event"] for h in view["history"]][-3:] == ["resumed", "advanced", "promoted"]

        # A new change, aborted at its first step: everyone back on v2.
        write(config_dir, url, "v3", interval=f"{INTERVAL:g}s")
        await until(lambda: holding(by_band[0]) == {"v3"}, "first cohort on v3", control)
        code, out = await steer(control, "abort")
        assert code == 0
        assert out.startswith(f"{PLUGIN}: RolledBack")
        await until(lambda: all(s.holds == "v2" for s in sims), "every sim back on v2", control)
        view = await rollouts(control)
        assert (view["phase"], view["reason"]) == ("RolledBack", "aborted by an operator")
        later = by_band[1] + by_band[2]
        assert not [s.node_id for s in later if s.first("v3") is not None]
        code, out = await steer(control, "resume")
        assert code == 1
        assert "it is RolledBack" in out
        admin = await control.port_of("admin.listening")
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{admin}/metrics")).text
            # GET on a steering path changes nothing.
            get = await client.get(f"http://127.0.0.1:{admin}/rollouts/{PLUGIN}/promote")
        assert get.status_code == 405
        rollbacks = [
            line for line in text.splitlines() if line.startswith("wasmxds_rollout_rollbacks_total")
        ]
        print("\n".join(rollbacks))
        assert any('reason="abort"' in line and line.endswith(" 1.0") for line in rollbacks)
        assert (await rollouts(control))["phase"] == "RolledBack"


async def test_a_paused_rollout_stays_paused_across_a_restart_then_goes_on_step_by_step(
    tmp_path: Path, modules: ModuleServer
) -> None:
    """Restarted on the same cache, a paused rollout is still paused at its step; resumed,
    it takes the next step only, then the last one."""
    url = modules.url("header-filter.wasm")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    write(config_dir, url, "v1", interval=f"{INTERVAL:g}s")
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(running_wasmxds([config_dir], tmp_path / "cache"))
        by_band = await start_fleet(control, exits)
        await paused_at_the_first_step(control, config_dir, url, by_band)

    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(running_wasmxds([config_dir], tmp_path / "cache"))
        event = await control.wait_event("rollout.resumed")
        assert (event["phase"], event["step"]) == ("Paused", 0)
        by_band = await start_fleet(control, exits)
        sims = [s for band in by_band for s in band]
        await until(lambda: all(s.holds for s in sims), "every sim served again", control)
        await asyncio.sleep(INTERVAL + 1.5)
        assert holding(by_band[0]) == {"v2"}
        assert holding(by_band[1]) == holding(by_band[2]) == {"v1"}, story(control)
        assert (await rollouts(control))["phase"] == "Paused"

        code, _ = await steer(control, "resume")
        assert code == 0
        await until(lambda: holding(by_band[1]) == {"v2"}, "second cohort on v2", control)
        # Only the second step: the rollout goes on from the state it kept.
        assert holding(by_band[2]) == {"v1"}, story(control)
        await until(lambda: all(s.holds == "v2" for s in sims), "every sim on v2", control)
        await control.wait_event("rollout.advanced", lambda e: e["phase"] == "Complete")
