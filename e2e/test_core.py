"""The core path end to end: WasmPlugin YAML → wasmxds → ECDS → a real Envoy running the filter."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import Envoy, running_envoy
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import WasmxdsProcess, run_cli, running_wasmxds

pytestmark = pytest.mark.envoy


def plugin_yaml(
    name: str,
    url: str,
    config: Mapping[str, Any] | None = None,
    *,
    namespace: str = "default",
    extra: str = "",
) -> str:
    body = textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: {name}
          namespace: {namespace}
        spec:
          url: {url}
          pluginConfig: {json.dumps(dict(config or {}))}
        """
    )
    return body + textwrap.indent(textwrap.dedent(extra), "  ") if extra else body


@dataclass
class Stack:
    """wasmxds and Envoy running together; ``get`` sends a request through Envoy."""

    config_dir: Path
    wasmxds: WasmxdsProcess
    envoy: Envoy
    port: int
    client: httpx.AsyncClient

    async def get(self) -> httpx.Response:
        return await self.client.get(f"http://127.0.0.1:{self.port}/anything")

    async def eventually(
        self, check: Callable[[httpx.Response], bool], timeout: float = 10.0
    ) -> httpx.Response:
        """Poll through Envoy until ``check`` holds for a response."""
        last: httpx.Response | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await self.get()
                    if check(last):
                        return last
                    await asyncio.sleep(0.05)
        except TimeoutError:
            detail = (
                f"{last.status_code} {dict(last.headers)} {last.text[:300]}" if last else "none"
            )
            raise AssertionError(
                f"condition not met in {timeout}s; last response: {detail}\n"
                f"--- wasmxds ---\n{self.wasmxds.log_text()[-3000:]}\n"
                f"--- envoy ---\n{self.envoy.log_text()[-3000:]}"
            ) from None


def upstream_headers(response: httpx.Response, name: str) -> list[str]:
    return [value for key, value in response.json()["headers"] if key == name]


@asynccontextmanager
async def stack(
    tmp_path: Path,
    upstream: EchoUpstream,
    files: Mapping[str, str],
    *,
    filters: Sequence[str] = ("default.header-filter",),
    wasmxds_args: Sequence[str] = ("--fetch-retry-max", "500ms"),
    labels: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (config_dir / name).write_text(text)
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(
            running_wasmxds([config_dir], tmp_path / "cache", extra_args=wasmxds_args)
        )
        xds_port = await control.port_of("xds.listening")
        bootstrap = ecds_bootstrap(
            xds_port=xds_port, upstream_port=upstream.port, filters=filters, labels=labels
        )
        envoy = await exits.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        await envoy.wait_live()
        port = await envoy.wait_listener_port("ingress")
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=5.0))
        yield Stack(config_dir, control, envoy, port, client)


HEADER = "x-wasmxds-demo"


async def test_plugin_config_reaches_the_filter_intact(tmp_path, upstream, modules):
    """pluginConfig arrives in the filter byte for byte, and its headers are applied."""
    config = {
        "config_header": "x-config",
        "request_headers": {"x-added": "yes"},
        "response_headers": {HEADER: 'héllo "quoted"'},
    }
    files = {"plugin.yaml": plugin_yaml("header-filter", modules.url("header-filter.wasm"), config)}
    async with stack(tmp_path, upstream, files) as s:
        response = await s.eventually(lambda r: HEADER in r.headers)
        expected = json.dumps(config, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        raw = {key.lower(): value for key, value in response.headers.raw}
        assert raw[b"x-config"].decode() == expected
        assert upstream_headers(response, "x-added") == ["yes"]


async def test_yaml_edit_reaches_envoy_within_two_seconds(tmp_path, upstream, modules):
    """Editing the YAML changes what Envoy does, live, in under 2 s."""
    url = modules.url("header-filter.wasm")
    files = {"plugin.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "v1"}})}
    async with stack(tmp_path, upstream, files) as s:
        await s.eventually(lambda r: r.headers.get(HEADER) == "v1")
        (s.config_dir / "plugin.yaml").write_text(
            plugin_yaml("header-filter", url, {"response_headers": {HEADER: "v2"}})
        )
        await s.eventually(lambda r: r.headers.get(HEADER) == "v2", timeout=2.0)


async def test_bad_sha256_fails_closed_with_403(tmp_path, upstream, modules):
    """A module whose sha256 does not match is replaced by deny-all: 403 (FAIL_CLOSE default)."""
    url = modules.url("header-filter.wasm")
    files = {"plugin.yaml": plugin_yaml("header-filter", url, extra=f"sha256: '{'0' * 64}'\n")}
    async with stack(tmp_path, upstream, files) as s:
        response = await s.eventually(lambda r: r.status_code == 403)
        assert "RBAC" in response.text
        event = await s.wasmxds.wait_event("reconcile.standin")
        assert "sha256" in event["error"] or "checksum" in event["error"]


async def test_fail_open_lets_traffic_through(tmp_path, upstream, modules):
    """With FAIL_OPEN an unusable module becomes allow-all: requests pass without the filter."""
    url = modules.url("header-filter.wasm")
    extra = f"sha256: '{'0' * 64}'\nfailStrategy: FAIL_OPEN\n"
    config = {"response_headers": {HEADER: "x"}}
    files = {"plugin.yaml": plugin_yaml("header-filter", url, config, extra=extra)}
    async with stack(tmp_path, upstream, files) as s:
        await s.wasmxds.wait_event("reconcile.standin")
        response = await s.eventually(lambda r: r.status_code == 200)
        assert HEADER not in response.headers


async def test_missing_module_recovers_without_yaml_change(tmp_path, upstream, modules):
    """A module that 404s is retried in the background; once published it is served."""
    url = modules.url("late.wasm")
    files = {
        "plugin.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "late"}})
    }
    async with stack(tmp_path, upstream, files) as s:
        await s.eventually(lambda r: r.status_code == 403)
        modules.files["late.wasm"] = modules.files["header-filter.wasm"]
        await s.eventually(lambda r: r.headers.get(HEADER) == "late", timeout=15.0)
        assert modules.hits["late.wasm"] >= 2


async def test_broken_yaml_keeps_the_running_config(tmp_path, upstream, modules):
    """A file that stops parsing changes nothing in Envoy; validate names the file and line."""
    url = modules.url("header-filter.wasm")
    files = {
        "plugin.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "good"}})
    }
    async with stack(tmp_path, upstream, files) as s:
        await s.eventually(lambda r: r.headers.get(HEADER) == "good")
        broken = s.config_dir / "plugin.yaml"
        broken.write_text(
            plugin_yaml("header-filter", url, {"response_headers": {HEADER: "bad"}}) + "  : [oops\n"
        )
        await s.wasmxds.wait_event("source.problem", lambda e: e["path"] == str(broken))
        await asyncio.sleep(0.5)  # give a wrong push every chance to happen
        assert (await s.get()).headers.get(HEADER) == "good"
        code, out, _ = await run_cli("validate", str(s.config_dir))
        assert code == 1
        assert out.startswith(f"{broken}:")


async def test_two_plugins_run_in_listed_order(tmp_path, upstream, modules):
    """Two plugins on one listener run in the order the listener lists them."""
    url = modules.url("header-filter.wasm")
    files = {
        "first.yaml": plugin_yaml("first", url, {"request_headers": {"x-order": "first"}}),
        "second.yaml": plugin_yaml("second", url, {"request_headers": {"x-order": "second"}}),
    }
    async with stack(tmp_path, upstream, files, filters=("default.first", "default.second")) as s:
        response = await s.eventually(lambda r: len(upstream_headers(r, "x-order")) == 2)
        assert upstream_headers(response, "x-order") == ["first", "second"]


async def test_selector_scopes_plugins_to_matching_proxies(tmp_path, upstream, modules):
    """A plugin whose selector does not match the proxy is served as a no-op."""
    url = modules.url("header-filter.wasm")
    extra = "selector:\n  matchLabels:\n    app: other\n"
    files = {
        "plugin.yaml": plugin_yaml(
            "header-filter", url, {"response_headers": {HEADER: "x"}}, extra=extra
        )
    }
    async with stack(tmp_path, upstream, files, labels={"app": "demo"}) as s:
        dump = await s.envoy.config_dump("ecds_filters")
        async with asyncio.timeout(10):
            while "wasmxds-not-selected" not in json.dumps(dump):
                await asyncio.sleep(0.1)
                dump = await s.envoy.config_dump("ecds_filters")
        response = await s.get()
        assert response.status_code == 200
        assert HEADER not in response.headers


async def test_envoy_keeps_filter_while_wasmxds_is_down_and_follows_after_restart(
    tmp_path, upstream, modules
):
    """Killing wasmxds leaves Envoy's filter in place; a restarted wasmxds pushes new edits."""
    url = modules.url("header-filter.wasm")
    plugin = tmp_path / "config" / "plugin.yaml"
    files = {
        "plugin.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "before"}})
    }
    async with stack(tmp_path, upstream, files) as s:
        await s.eventually(lambda r: r.headers.get(HEADER) == "before")
        xds_port = await s.wasmxds.port_of("xds.listening")
        await s.wasmxds.stop(signal.SIGKILL)
        for _ in range(5):
            assert (await s.get()).headers.get(HEADER) == "before"
        plugin.write_text(
            plugin_yaml("header-filter", url, {"response_headers": {HEADER: "after"}})
        )
        async with running_wasmxds([s.config_dir], tmp_path / "cache", xds_port=xds_port) as again:
            s.wasmxds = again
            await s.eventually(lambda r: r.headers.get(HEADER) == "after", timeout=40.0)


async def test_sigterm_closes_streams_and_exits_zero(tmp_path, upstream, modules):
    """SIGTERM stops wasmxds in order and exits 0; Envoy keeps serving its filter."""
    url = modules.url("header-filter.wasm")
    config = {"response_headers": {HEADER: "kept"}}
    files = {"plugin.yaml": plugin_yaml("header-filter", url, config)}
    async with stack(tmp_path, upstream, files) as s:
        await s.eventually(lambda r: r.headers.get(HEADER) == "kept")
        assert await s.wasmxds.stop(signal.SIGTERM) == 0
        names = [event["event"] for event in s.wasmxds.events]
        assert names.index("service.stopping") < names.index("xds.disconnected")
        assert names[-1] == "service.stopped"
        assert (await s.get()).headers.get(HEADER) == "kept"
