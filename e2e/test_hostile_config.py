"""Hostile config files against the real ``wasmxds serve``: bounded, reported, served around.

A few KB of YAML aliases can expand to gigabytes. The server must read such a
file off the event loop and give up at its input limits, so admin and xDS keep
answering; it must say which file and line passed which limit; and the plugin
the file defined before must stay served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from e2e.harness.modules import ModuleServer
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import plugin_yaml

ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
GOOD = "default.good"
MARKER = "served-before-the-bomb"
DOCUMENTS = 10


def alias_bomb(anchor: str, indent: str = "") -> str:
    """Lines of YAML whose last key expands to 10**6 strings from ~500 bytes."""
    lines = [f"{indent}{anchor}0: &{anchor}0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 6):
        refs = ", ".join([f"*{anchor}{level - 1}"] * 10)
        lines.append(f"{indent}{anchor}{level}: &{anchor}{level} [{refs}]")
    return "\n".join(lines) + "\n"


def multi_document_bomb(documents: int) -> str:
    """Documents that are not WasmPlugins, each past the old per-document cap of 10**6 values."""
    parts = []
    for index in range(documents):
        parts.append(
            f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb-{index}\n"
            f"data:\n{alias_bomb('b', '  ')}"
        )
    return "".join(parts)


def plugin_with_bomb(url: str) -> str:
    """The good plugin edited so that its pluginConfig is an alias bomb."""
    return (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        "metadata:\n  name: good\n  namespace: default\n"
        f"spec:\n  url: {url}\n  pluginConfig:\n{alias_bomb('p', '    ')}"
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def ads_response(channel: grpc.aio.Channel) -> discovery_pb2.DiscoveryResponse:
    """Open a fresh ADS stream, ask for the good plugin, return the first response."""
    node = base_pb2.Node(id="probe", cluster="probe")
    request = discovery_pb2.DiscoveryRequest(node=node, type_url=ECDS, resource_names=[GOOD])
    stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield request
        await asyncio.Event().wait()  # keep the stream open until cancelled

    call: Any = stream(requests())
    try:
        response: discovery_pb2.DiscoveryResponse = await call.read()
        return response
    finally:
        call.cancel()


class Prober:
    """Polls /healthz and opens ADS streams back to back, keeping the slowest answer of each."""

    def __init__(self, admin: str, channel: grpc.aio.Channel) -> None:
        self.admin = admin
        self.channel = channel
        self.worst = {"admin": 0.0, "xds": 0.0}
        self.count = {"admin": 0, "xds": 0}
        self.stop = asyncio.Event()

    async def _probe(self, name: str, action: Any) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            await action()
            elapsed = time.perf_counter() - started
            self.worst[name] = max(self.worst[name], elapsed)
            self.count[name] += 1
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:

            async def health() -> None:
                (await client.get(f"http://{self.admin}/healthz")).raise_for_status()

            async def xds() -> None:
                response = await ads_response(self.channel)
                assert [r.name for r in _configs(response)] == [GOOD]

            await asyncio.gather(self._probe("admin", health), self._probe("xds", xds))


def _configs(response: discovery_pb2.DiscoveryResponse) -> list[Any]:
    configs = []
    for resource in response.resources:
        config = extension_pb2.TypedExtensionConfig()
        resource.Unpack(config)
        configs.append(config)
    return configs


async def problems(client: httpx.AsyncClient, admin: str) -> list[dict[str, Any]]:
    response = await client.get(f"http://{admin}/debug/problems")
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


async def wait_for_problems(
    client: httpx.AsyncClient, admin: str, paths: set[str], timeout: float = 60.0
) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            found = await problems(client, admin)
            if paths <= {p["path"] for p in found if p["severity"] == "error"}:
                return found
            await asyncio.sleep(0.05)


async def test_bombs_are_bounded_reported_and_served_around(
    tmp_path: Path, modules: ModuleServer
) -> None:
    """While alias bombs are read, admin and ADS answer within 1 s; both files are reported
    at path:line and the plugin the edited file defined before stays served."""
    config = tmp_path / "config"
    config.mkdir()
    url = modules.url("header-filter.wasm")
    good = config / "good.yaml"
    good.write_text(plugin_yaml("good", url, {"marker": MARKER}))
    async with running_wasmxds([config], tmp_path / "cache") as wasmxds:
        xds_port = await wasmxds.port_of("xds.listening")
        admin = f"127.0.0.1:{await wasmxds.port_of('admin.listening')}"
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}") as channel,
            httpx.AsyncClient(timeout=120) as client,
        ):
            before = await served_config(channel)
            assert MARKER in before
            rss_before = rss_mib(wasmxds.proc.pid)

            prober = Prober(admin, channel)
            probing = asyncio.create_task(prober.run())
            await asyncio.sleep(0.3)  # the probes are answering before the bombs land
            bomb = config / "bomb.yaml"
            bomb.write_text(multi_document_bomb(DOCUMENTS))
            good.write_text(plugin_with_bomb(url))
            try:
                found = await wait_for_problems(client, admin, {str(bomb), str(good)})
            except TimeoutError:
                found = []
            await asyncio.sleep(1.0)  # any wrong removal of the plugin would be pushed by now
            prober.stop.set()
            await probing
            rss_after = rss_mib(wasmxds.proc.pid)

            print(
                f"\nbomb file {bomb.stat().st_size} bytes ({DOCUMENTS} documents),"
                f" edited plugin file {good.stat().st_size} bytes;"
                f" worst /healthz {prober.worst['admin'] * 1000:.0f} ms"
                f" over {prober.count['admin']} requests,"
                f" worst new ADS stream {prober.worst['xds'] * 1000:.0f} ms"
                f" over {prober.count['xds']} streams;"
                f" RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
            )
            assert found, "the bombs were not reported in /debug/problems"
            assert prober.worst["admin"] < 1.0, prober.worst
            assert prober.worst["xds"] < 1.0, prober.worst
            assert_reported(found, bomb, good)
            assert await served_config(channel) == before
            await log_names_file(wasmxds, good)


async def served_config(channel: grpc.aio.Channel) -> str:
    """The good plugin's filter as served, as text (its pluginConfig is inside)."""
    (config,) = _configs(await ads_response(channel))
    assert config.name == GOOD
    return str(config.typed_config.value)


def assert_reported(found: list[dict[str, Any]], bomb: Path, good: Path) -> None:
    by_path = {p["path"]: p for p in found if p["severity"] == "error"}
    # Each at the line where the aliases that passed the limit are used.
    for path, line in ((bomb, 12), (good, 14)):
        problem = by_path[str(path)]
        assert problem["line"] == line, problem
        assert "expands to more than 250000 values" in problem["message"], problem
    kept = [p for p in found if p["path"] == str(good) and p["severity"] == "warning"]
    assert any("keeping the last valid version" in p["message"] for p in kept), found


async def log_names_file(wasmxds: WasmxdsProcess, path: Path) -> None:
    event = await wasmxds.wait_event("source.problem", lambda e: e.get("path") == str(path))
    assert "expands to more than" in event["message"]
    assert event["line"] == 14
