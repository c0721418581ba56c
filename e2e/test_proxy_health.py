"""Proxy health from Envoy's own stats: a real Envoy streams them to the real ``wasmxds serve``.

Envoy is bootstrapped by ``wasmxds bootstrap --stats-sink``; its plugin is a module
built from e2e/harness/wasm/trap.c, which traps in ``proxy_on_request_headers``
when its configuration says so. What Envoy 1.40 counts for the trap is read
from Envoy's /stats and compared with what wasmxds received over the metrics
service, shown per proxy in ``/debug/syncz`` (``FleetHealth`` for that node alone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from e2e.harness.envoy import Envoy, running_envoy
from e2e.harness.listeners import free_port
from e2e.harness.modules import ModuleServer
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasm import build_trap_module
from e2e.harness.wasmxds import run_cli, running_wasmxds
from e2e.test_core import plugin_yaml
from e2e.test_listener_mode import until

pytestmark = pytest.mark.envoy

REQUESTS = 30
# Envoy flushes stats every 5 s (--stats-sink): a verdict needs a flush or two.
FLUSH_WAIT = 20.0


@pytest.fixture(name="trap_wasm", scope="module")
def _trap_wasm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_trap_module(tmp_path_factory.mktemp("wasm-build")).read_bytes()


@asynccontextmanager
async def proxy(
    tmp_path: Path,
    upstream: EchoUpstream,
    modules: ModuleServer,
    trap_wasm: bytes,
    config: dict[str, Any],
    *,
    fail_strategy: str = "",
) -> AsyncIterator[tuple[Envoy, httpx.AsyncClient, str]]:
    """wasmxds serving plugin default.trap, and one Envoy bootstrapped with --stats-sink."""
    modules.files["trap.wasm"] = trap_wasm
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    extra = f"failStrategy: {fail_strategy}\n" if fail_strategy else ""
    (config_dir / "trap.yaml").write_text(
        plugin_yaml("trap", modules.url("trap.wasm"), config, extra=extra)
    )
    admin = f"127.0.0.1:{free_port()}"
    async with AsyncExitStack() as stack:
        wasmxds = await stack.enter_async_context(
            running_wasmxds([config_dir], tmp_path / "cache", extra_args=("--admin-address", admin))
        )
        xds_port = await wasmxds.port_of("xds.listening")
        code, out, err = await run_cli(
            "bootstrap",
            "--node-id", "edge-1",
            "--xds-address", f"127.0.0.1:{xds_port}",
            "--filter", "default.trap",
            "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream.port}",
            "--stats-sink",
        )  # fmt: skip
        assert code == 0, err
        bootstrap = yaml.safe_load(out)
        envoy = await stack.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        await until(lambda: _synced(client, admin), what="plugin ACKed by Envoy")
        yield envoy, client, admin


async def _syncz(client: httpx.AsyncClient, admin: str) -> list[dict[str, Any]]:
    response = await client.get(f"http://{admin}/debug/syncz")
    response.raise_for_status()
    proxies: list[dict[str, Any]] = response.json()
    return proxies


async def _synced(client: httpx.AsyncClient, admin: str) -> bool:
    proxies = await _syncz(client, admin)
    return bool(proxies) and proxies[0]["types"].get("ECDS", {}).get("state") == "SYNCED"


async def _send(envoy: Envoy, client: httpx.AsyncClient) -> list[int]:
    port = await envoy.wait_listener_port("ingress")
    return [(await client.get(f"http://127.0.0.1:{port}/")).status_code for _ in range(REQUESTS)]


async def _health_after(client: httpx.AsyncClient, admin: str, requests: int) -> dict[str, Any]:
    """edge-1's health once wasmxds has received at least ``requests`` of its requests."""

    async def reported() -> dict[str, Any] | None:
        (entry,) = await _syncz(client, admin)
        health: dict[str, Any] | None = entry["health"]
        return health if health is not None and health["requests"] >= requests else None

    found: dict[str, Any] = await until(reported, timeout=FLUSH_WAIT, what="health reported")
    return found


async def _envoy_stats(envoy: Envoy) -> dict[str, int]:
    stats = await envoy.stats(r"^(wasm\.|http\.ingress\.)")
    return {name: value for name, value in stats.items() if value}


async def test_trapping_module_makes_the_proxy_unhealthy(tmp_path, upstream, modules, trap_wasm):
    """A trap under the default FAIL_CLOSE: Envoy answers 503, wasmxds sees the 5xx rate."""
    async with proxy(tmp_path, upstream, modules, trap_wasm, {"trap": True}) as (
        envoy,
        client,
        admin,
    ):
        assert await _send(envoy, client) == [503] * REQUESTS
        health = await _health_after(client, admin, REQUESTS)
        stats = await _envoy_stats(envoy)
        print("envoy stats:", stats)
        print("wasmxds health:", health)
        # What Envoy counts is what arrived over the metrics service...
        assert stats["http.ingress.downstream_rq_5xx"] == REQUESTS
        assert (health["requests"], health["errors_5xx"]) == (REQUESTS, REQUESTS)
        # ...and no Wasm stat counts a trap under FAIL_CLOSE (only VM lifecycle figures).
        assert not [name for name in stats if "reload" in name or "fail" in name]
        assert health["wasm_failures"] == {}
        assert health["healthy"] is False
        assert "5xx rate" in health["reason"]


async def test_trap_under_fail_reload_shows_in_the_plugins_failure_counters(
    tmp_path, upstream, modules, trap_wasm
):
    """Under FAIL_RELOAD Envoy counts wasm.<plugin>.vm_reload_*: unhealthy by Wasm failures."""
    async with proxy(
        tmp_path, upstream, modules, trap_wasm, {"trap": True}, fail_strategy="FAIL_RELOAD"
    ) as (envoy, client, admin):
        codes = await _send(envoy, client)
        assert 503 in codes
        health = await _health_after(client, admin, REQUESTS)
        stats = await _envoy_stats(envoy)
        print("envoy stats:", stats)
        print("wasmxds health:", health)
        reload_stats = {
            name: value for name, value in stats.items() if name.startswith("wasm.default.trap.")
        }
        assert reload_stats, stats
        assert set(health["wasm_failures"]) <= set(reload_stats)
        assert health["wasm_failures"]
        assert health["healthy"] is False
        assert "Wasm failures" in health["reason"]


async def test_healthy_module_keeps_the_proxy_healthy(tmp_path, upstream, modules, trap_wasm):
    """The same module configured not to trap: 200s, no failures, healthy."""
    async with proxy(tmp_path, upstream, modules, trap_wasm, {"mode": "ok"}) as (
        envoy,
        client,
        admin,
    ):
        assert await _send(envoy, client) == [200] * REQUESTS
        health = await _health_after(client, admin, REQUESTS)
        print("wasmxds health:", health)
        assert (health["requests"], health["errors_5xx"]) == (REQUESTS, 0)
        assert health["wasm_failures"] == {}
        assert health["healthy"] is True
