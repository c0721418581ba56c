"""A failed fetch after an edit keeps the last good version serving traffic (real Envoy)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import signal
import time
from typing import Any

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import running_envoy
from e2e.harness.images import OrasPusher, artifact_image
from e2e.harness.listeners import free_port
from e2e.harness.modules import ModuleServer
from e2e.harness.registry import running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import run_cli, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until
from e2e.test_operability import admin_json, running

pytestmark = pytest.mark.envoy


def tagged(url: str, tag: str) -> str:
    return plugin_yaml("header-filter", url, {"response_headers": {HEADER: tag}})


async def header_is(client: httpx.AsyncClient, port: int, want: str) -> bool:
    response = await client.get(f"http://127.0.0.1:{port}/anything")
    return response.status_code == 200 and response.headers.get(HEADER) == want


async def plugin_view(client: httpx.AsyncClient, admin: str) -> dict[str, Any]:
    (plugin,) = await admin_json(client, admin, "/debug/plugins")
    view: dict[str, Any] = plugin
    return view


async def test_failed_edit_keeps_serving_the_last_good_version(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer, header_filter_wasm: bytes
) -> None:
    """Edit to a 404 URL: traffic keeps the v1 filter, the failure is reported; fixes apply live."""
    good = modules.url("header-filter.wasm")
    files = {"p.yaml": tagged(good, "v1")}
    async with running(tmp_path, upstream, files) as (wasmxds, envoy, client, admin):
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: header_is(client, port, "v1"), what="v1 filter running")
        config = tmp_path / "config" / "p.yaml"

        # 1. Edit: new config, URL with a typo (404).
        mark = len(wasmxds.events)
        config.write_text(tagged(modules.url("typo.wasm"), "v2"))
        edited = time.monotonic()
        # From the edit through several failed fetches (--fetch-retry-max 500ms), every
        # request still runs the v1 filter; today's main turned them into 403 within 0.2 s.
        seen: collections.Counter[tuple[int, str | None]] = collections.Counter()
        while modules.hits.get("typo.wasm", 0) < 4:
            response = await client.get(f"http://127.0.0.1:{port}/anything")
            seen[(response.status_code, response.headers.get(HEADER))] += 1
        window = time.monotonic() - edited
        print(f"\n{sum(seen.values())} requests in {window:.2f}s of failed fetches: {dict(seen)}")
        assert set(seen) == {(200, "v1")}, seen
        event = await wasmxds.wait_event(
            "reconcile.last_good", lambda e: "typo.wasm" in e["url"], after=mark
        )
        assert "404" in event["error"]

        view = await plugin_view(client, admin)
        assert (view["served"], view["module"]["state"]) == ("last_good", "failed")
        assert "404" in view["module"]["error"]
        assert view["standin"] is None
        assert view["last_good"]["url"] == good
        assert view["last_good"]["digest"] == hashlib.sha256(header_filter_wasm).hexdigest()
        assert view["proxies"] == ["edge-1"]
        code, out, _ = await run_cli("plugins", "--admin-address", admin)
        assert code == 0
        assert " last_good " in out
        assert "404" in out
        assert f"keep the last good version, {good}" in out
        metrics = (await client.get(f"http://{admin}/metrics")).text
        assert 'wasmxds_plugins{module="failed",served="last_good"} 1.0' in metrics

        # 2. The module appears at the edited URL: the edit applies by itself.
        modules.files["typo.wasm"] = header_filter_wasm
        await until(lambda: header_is(client, port, "v2"), what="v2 applied after the fix")
        assert (await plugin_view(client, admin))["served"] == "filter"

        # 3. Another bad edit keeps v2; fixing the URL in the file applies v3.
        mark = len(wasmxds.events)
        config.write_text(tagged(modules.url("typo-again.wasm"), "v3"))
        await wasmxds.wait_event(
            "reconcile.last_good", lambda e: "typo-again.wasm" in e["url"], after=mark
        )
        assert await header_is(client, port, "v2")
        config.write_text(tagged(good, "v3"))
        await until(lambda: header_is(client, port, "v3"), what="v3 applied after fixing the URL")
        view = await plugin_view(client, admin)
        assert (view["served"], view["module"]["state"], view["last_good"]) == (
            "filter",
            "ready",
            None,
        )


async def test_plugin_that_never_worked_gets_the_standin(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer, header_filter_wasm: bytes
) -> None:
    """No good version yet: the FAIL_CLOSE stand-in (403), then the filter once it is fetched."""
    files = {"p.yaml": tagged(modules.url("typo.wasm"), "v1")}
    async with running(tmp_path, upstream, files) as (wasmxds, envoy, client, admin):
        port = await envoy.wait_listener_port("ingress")
        await wasmxds.wait_event("reconcile.standin")

        async def denied() -> bool:
            response = await client.get(f"http://127.0.0.1:{port}/anything")
            return response.status_code == 403

        await until(denied, what="deny-all stand-in")
        view = await plugin_view(client, admin)
        assert (view["served"], view["last_good"]) == ("stand-in", None)
        assert view["standin"]["kind"] == "deny-all"
        modules.files["typo.wasm"] = header_filter_wasm
        await until(lambda: header_is(client, port, "v1"), what="filter after the module appears")


async def test_edit_to_a_registry_that_needs_a_flag_keeps_the_last_good_version(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer, header_filter_wasm: bytes
) -> None:
    """An edit to a plain-HTTP registry (no --insecure-registry) keeps v1 and names the flag."""
    async with running_registry(tmp_path / "registry") as registry:
        image = artifact_image(header_filter_wasm)
        await asyncio.to_thread(OrasPusher(registry.host).push, "filters/header", "v1", image)
        files = {"p.yaml": tagged(modules.url("header-filter.wasm"), "v1")}
        async with running(tmp_path, upstream, files) as (wasmxds, envoy, client, admin):
            port = await envoy.wait_listener_port("ingress")
            await until(lambda: header_is(client, port, "v1"), what="v1 filter running")
            mark = len(wasmxds.events)
            (tmp_path / "config" / "p.yaml").write_text(
                tagged(registry.url("filters/header"), "v2")
            )
            seen: collections.Counter[tuple[int, str | None]] = collections.Counter()
            while not any(
                e.get("event") == "module.fetch_failed" and e.get("attempt", 0) >= 2
                for e in wasmxds.events[mark:]
            ):
                response = await client.get(f"http://127.0.0.1:{port}/anything")
                seen[(response.status_code, response.headers.get(HEADER))] += 1
            print(f"\n{sum(seen.values())} requests while the registry fetch failed: {dict(seen)}")
            assert set(seen) == {(200, "v1")}, seen
            view = await plugin_view(client, admin)
            assert (view["served"], view["module"]["state"]) == ("last_good", "failed")
            assert "--insecure-registry" in view["module"]["error"]


async def test_restart_during_a_failing_edit_keeps_serving_the_last_good_version(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer, header_filter_wasm: bytes
) -> None:
    """Restart `wasmxds serve` (same --cache-dir) while an edit 404s: Envoy reconnects, keeps v1."""
    good = modules.url("header-filter.wasm")
    config = tmp_path / "config"
    config.mkdir()
    (config / "p.yaml").write_text(tagged(good, "v1"))
    cache = tmp_path / "cache"
    admin = f"127.0.0.1:{free_port()}"
    args = ("--admin-address", admin, "--fetch-retry-max", "500ms")
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_wasmxds([config], cache, extra_args=args))
        xds_port = await first.port_of("xds.listening")
        bootstrap = ecds_bootstrap(xds_port=xds_port, upstream_port=upstream.port, node_id="edge-1")
        envoy = await stack.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: header_is(client, port, "v1"), what="v1 filter running")

        (config / "p.yaml").write_text(tagged(modules.url("typo.wasm"), "v2"))
        await first.wait_event("reconcile.last_good", lambda e: "typo.wasm" in e["url"])
        assert await first.stop(signal.SIGTERM) == 0
        saved = json.loads((cache / "last-good.json").read_text())
        assert saved["plugins"]["default.header-filter"]["url"] == good

        # The edit still fails; a fresh process reads the config and the cache directory.
        async with running_wasmxds([config], cache, xds_port=xds_port, extra_args=args) as again:
            restarted = time.monotonic()
            event = await again.wait_event("reconcile.last_good")
            assert "typo.wasm" in event["url"]

            async def envoy_holds_what_is_served() -> dict[str, Any] | None:
                view = await plugin_view(client, admin)
                return view if view["proxies"] == ["edge-1"] else None

            view = await until(envoy_holds_what_is_served, what="Envoy reconnected and synced")
            synced = time.monotonic() - restarted
            assert (view["served"], view["module"]["state"]) == ("last_good", "failed")
            assert view["last_good"]["digest"] == hashlib.sha256(header_filter_wasm).hexdigest()
            # Every request, across the reconnect and several more failed fetches, runs v1;
            # before the last good version was persisted they got the deny-all stand-in (403).
            hits = modules.hits.get("typo.wasm", 0)
            seen: collections.Counter[tuple[int, str | None]] = collections.Counter()
            while modules.hits.get("typo.wasm", 0) < hits + 3:
                response = await client.get(f"http://127.0.0.1:{port}/anything")
                seen[(response.status_code, response.headers.get(HEADER))] += 1
            print(
                f"\nsynced {synced:.2f}s after the restart; {sum(seen.values())} requests:"
                f" {dict(seen)}"
            )
            assert set(seen) == {(200, "v1")}, seen

            # The fix still applies by itself.
            modules.files["typo.wasm"] = header_filter_wasm
            await until(lambda: header_is(client, port, "v2"), what="v2 applied after the fix")
