"""Staged rollouts with the real ``wasmxds serve``: simulated ADS proxies (SotW and delta)
and real Envoys, in cohorts by node id.

A change reaches the first cohort only, then the next after the interval, then
everyone; a change the first cohort NACKs is rolled back everywhere and the
other proxies (the Envoy among them) never receive it; a change whose module
traps in a real Envoy of the first cohort is rolled back by that Envoy's own
failure counters (metrics service), and the other cohort never receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from google.rpc import status_pb2

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import running_envoy
from e2e.harness.listeners import (
    cluster_template,
    free_port,
    http_listener_template,
    listeners_bootstrap,
    write_templates,
)
from e2e.harness.modules import ModuleServer
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasm import build_trap_module
from e2e.harness.wasmxds import WasmxdsProcess, run_cli, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml

pytestmark = pytest.mark.envoy

ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
NAME = "default.header-filter"
STEPS = (25, 50, 100)
INTERVAL = "2s"
# Simulated proxies per band of cohort points: [0, 25), [25, 50), [50, 100).
PER_BAND = (6, 6, 12)


def cohort_point(node_id: str) -> float:
    """The documented cohort: the first 8 bytes of sha256(node id) as a point in [0, 100)."""
    head = hashlib.sha256(node_id.encode()).digest()[:8]
    return int.from_bytes(head, "big") * 100.0 / 2**64


def node_ids(prefix: str, per_band: tuple[int, ...]) -> list[list[str]]:
    """Node ids whose cohort points fill each band (cohorts are a hash: pick, don't guess)."""
    bands: list[list[str]] = [[] for _ in per_band]
    bounds = (0, *STEPS)
    index = 0
    while any(len(band) < want for band, want in zip(bands, per_band, strict=True)):
        node_id = f"{prefix}-{index}"
        index += 1
        point = cohort_point(node_id)
        for band, low, high in zip(range(len(bands)), bounds, bounds[1:], strict=False):
            if low <= point < high and len(bands[band]) < per_band[band]:
                bands[band].append(node_id)
    return bands


def header_of(config_json: str) -> str:
    """The demo header value a plugin configuration sets (what tells versions apart)."""
    value = json.loads(config_json).get("response_headers", {}).get(HEADER, "")
    return str(value)


def plugin_config(resource: Any) -> str:
    """The pluginConfig JSON inside an ECDS resource ("" for a stand-in or no-op)."""
    config = extension_pb2.TypedExtensionConfig()
    resource.Unpack(config)
    if not config.typed_config.Is(wasm_pb2.Wasm.DESCRIPTOR):
        return ""
    wasm = wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    text = wrappers_pb2.StringValue()
    wasm.config.configuration.Unpack(text)
    return text.value


@dataclass
class SimProxy:
    """A real gRPC ADS client: subscribes to the plugin, ACKs, NACKs what ``reject`` says."""

    node_id: str
    delta: bool
    reject: Callable[[str], bool] = lambda config: False
    name: str = NAME
    label: Callable[[str], str] = header_of
    """What tells versions apart in a configuration (the demo header by default)."""
    received: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, demo header) of every version sent to it."""
    holds: str = ""
    """The demo header of the version it accepted last."""
    nacks: int = 0

    def node(self) -> base_pb2.Node:
        metadata = struct_pb2.Struct()
        metadata.update({"NAMESPACE": "default", "LABELS": {"app": "sim"}})
        return base_pb2.Node(id=self.node_id, cluster="sim", metadata=metadata)

    def first(self, header: str) -> float | None:
        return next((at for at, got in self.received if got == header), None)

    def arrival(self, header: str) -> float:
        """When ``header``'s version first arrived (the test has seen that it did)."""
        at = self.first(header)
        assert at is not None, f"{self.node_id} never received {header}"
        return at

    async def run(self, channel: grpc.aio.Channel) -> None:
        outbox: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield await outbox.get()

        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if self.delta:
            call: Any = stub.DeltaAggregatedResources(requests())
            await outbox.put(
                discovery_pb2.DeltaDiscoveryRequest(
                    node=self.node(), type_url=ECDS, resource_names_subscribe=[self.name]
                )
            )
        else:
            call = stub.StreamAggregatedResources(requests())
            await outbox.put(
                discovery_pb2.DiscoveryRequest(
                    node=self.node(), type_url=ECDS, resource_names=[self.name]
                )
            )
        accepted_version = ""
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if self.delta:
                configs = [plugin_config(r.resource) for r in response.resources]
            else:
                configs = [plugin_config(r) for r in response.resources]
            now = time.monotonic()
            self.received.extend((now, self.label(c) if c else "") for c in configs)
            bad = [c for c in configs if c and self.reject(c)]
            error = (
                status_pb2.Status(code=3, message="sim: plugin configuration refused")
                if bad
                else None
            )
            if not bad and configs:
                self.holds = self.label(configs[-1]) if configs[-1] else ""
                accepted_version = getattr(response, "version_info", "")
            if bad:
                self.nacks += 1
            if self.delta:
                ack = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=ECDS, response_nonce=response.nonce
                )
            else:
                ack = discovery_pb2.DiscoveryRequest(
                    type_url=ECDS,
                    resource_names=[self.name],
                    response_nonce=response.nonce,
                    version_info=accepted_version,
                )
            if error is not None:
                ack.error_detail.CopyFrom(error)
            await outbox.put(ack)


async def until(
    check: Callable[[], Any], what: str, control: WasmxdsProcess, timeout: float = 30.0
) -> None:
    """Wait for ``check`` (a function, or one returning an awaitable) to hold."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"{what}: not within {timeout}s\n{control.log_text()[-4000:]}"
        ) from None


def write(
    config_dir: Path, url: str, header: str, *, interval: str = INTERVAL, **extra: Any
) -> None:
    """The plugin at version ``header``, with the rollout annotations."""
    text = plugin_yaml("header-filter", url, {"response_headers": {HEADER: header}, **extra})
    text = text.replace(
        "  namespace: default\n",
        "  namespace: default\n"
        "  annotations:\n"
        f'    rollout.wasmxds.io/steps: "{",".join(map(str, STEPS))}"\n'
        f'    rollout.wasmxds.io/interval: "{interval}"\n',
        1,
    )
    (config_dir / "plugin.yaml").write_text(text)


async def test_staged_change_then_a_nacked_change(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """Cohorts get a change in order; a NACKed change rolls back and never reaches the rest."""
    bands = node_ids("sim", PER_BAND)
    (envoy_id,) = node_ids("edge", (0, 1, 0))[1]
    first = set(bands[0])

    def rejects(config: str) -> bool:
        return "reject" in config

    def accepts(config: str) -> bool:
        return False

    sims = [
        SimProxy(node_id, delta=i % 2 == 1, reject=rejects if node_id in first else accepts)
        for i, node_id in enumerate(node_id for band in bands for node_id in band)
    ]
    by_band = [[s for s in sims if s.node_id in band] for band in bands]
    url = modules.url("header-filter.wasm")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    write(config_dir, url, "v1")
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(
            running_wasmxds(
                [config_dir], tmp_path / "cache", extra_args=["--fetch-retry-max", "500ms"]
            )
        )
        xds_port = await control.port_of("xds.listening")
        channel = await exits.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}")
        )
        tasks = [asyncio.create_task(sim.run(channel)) for sim in sims]
        exits.callback(lambda: [t.cancel() for t in tasks])
        bootstrap = ecds_bootstrap(xds_port=xds_port, upstream_port=upstream.port, node_id=envoy_id)
        envoy = await exits.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        await envoy.wait_live()
        port = await envoy.wait_listener_port("ingress")
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=5.0))

        async def envoy_header() -> str:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"http://127.0.0.1:{port}/anything")
                return str(response.headers.get(HEADER, ""))
            return ""

        async def envoy_says(header: str) -> bool:
            return await envoy_header() == header

        await until(lambda: all(s.holds == "v1" for s in sims), "every sim on v1", control)
        await until(lambda: envoy_says("v1"), "envoy on v1", control)

        # A staged change: 25%, then 50% after the interval, then everyone.
        started = time.monotonic()
        write(config_dir, url, "v2")
        await until(lambda: all(s.holds == "v2" for s in by_band[0]), "first cohort on v2", control)
        assert all(s.holds == "v1" for s in by_band[1] + by_band[2]), (
            "v2 went beyond the first step"
        )
        assert await envoy_header() == "v1"
        await until(lambda: all(s.holds == "v2" for s in sims), "every sim on v2", control, 40)
        await until(lambda: envoy_says("v2"), "envoy on v2", control)
        arrivals = [[s.arrival("v2") for s in band] for band in by_band]
        assert max(arrivals[0]) < min(arrivals[1]) <= max(arrivals[1]) < min(arrivals[2])
        print(
            "first v2 after the change, per cohort (s):",
            [round(min(a) - started, 2) for a in arrivals],
            [round(max(a) - started, 2) for a in arrivals],
        )
        await control.wait_event("rollout.advanced", lambda e: e["phase"] == "Complete")

        # A change the first cohort NACKs: rolled back, the others never see it.
        write(config_dir, url, "v3", reject=True)
        event = await control.wait_event("rollout.rolled_back", timeout=30)
        assert event["cause"] == "nack"
        assert any(s.nacks for s in by_band[0])
        await until(lambda: all(s.holds == "v2" for s in sims), "every sim back on v2", control)
        await asyncio.sleep(3.0)  # longer than a step's bake: nothing moves on
        others = by_band[1] + by_band[2]
        assert not [s.node_id for s in others if s.first("v3") is not None]
        assert all(s.holds == "v2" for s in sims)
        assert await envoy_header() == "v2"
        dump = await envoy.config_dump("ecds_filters")
        assert '"v3"' not in str(dump)


async def test_a_change_that_traps_in_envoy_is_rolled_back_by_health(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """A real Envoy of the first cohort traps on the new version: its own failure counters,
    streamed over the metrics service, roll the change back; the other cohort never gets it."""
    modules.files["trap.wasm"] = build_trap_module(tmp_path / "wasm-build").read_bytes()
    inside, _, outside = node_ids("trapsim", (4, 0, 8))
    (envoy_id,) = node_ids("trapedge", (1, 0, 0))[0]

    def mode(config: str) -> str:
        return "trap" if "trap" in config else "ok"

    sims = [
        SimProxy(node_id, delta=i % 2 == 1, name="default.trap", label=mode)
        for i, node_id in enumerate(inside + outside)
    ]
    config_dir = tmp_path / "config"
    config_dir.mkdir()

    def write_trap(config: dict[str, Any]) -> None:
        text = plugin_yaml(
            "trap", modules.url("trap.wasm"), config, extra="failStrategy: FAIL_RELOAD\n"
        )
        annotations = (
            "  annotations:\n"
            '    rollout.wasmxds.io/steps: "50,100"\n'
            '    rollout.wasmxds.io/interval: "1h"\n'
        )
        text = text.replace("  namespace: default\n", "  namespace: default\n" + annotations, 1)
        (config_dir / "trap.yaml").write_text(text)

    write_trap({"mode": "ok"})
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(
            running_wasmxds(
                [config_dir], tmp_path / "cache", extra_args=["--fetch-retry-max", "500ms"]
            )
        )
        xds_port = await control.port_of("xds.listening")
        channel = await exits.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}")
        )
        tasks = [asyncio.create_task(sim.run(channel)) for sim in sims]
        exits.callback(lambda: [t.cancel() for t in tasks])
        code, out, err = await run_cli(
            "bootstrap",
            "--node-id", envoy_id,
            "--xds-address", f"127.0.0.1:{xds_port}",
            "--filter", "default.trap",
            "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream.port}",
            "--stats-sink",
        )  # fmt: skip
        assert code == 0, err
        envoy = await exits.enter_async_context(
            running_envoy(yaml.safe_load(out), tmp_path / "envoy")
        )
        await envoy.wait_live()
        port = await envoy.wait_listener_port("ingress")
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=5.0))
        statuses: list[int] = []

        async def traffic() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    statuses.append((await client.get(f"http://127.0.0.1:{port}/")).status_code)
                await asyncio.sleep(0.05)

        await until(lambda: all(s.holds == "ok" for s in sims), "every sim on v1", control)
        sender = asyncio.create_task(traffic())
        exits.callback(sender.cancel)
        await until(lambda: statuses[-5:] == [200] * 5, "envoy serving v1", control)

        write_trap({"trap": True})
        event = await control.wait_event("rollout.rolled_back", timeout=60)
        assert event["cause"] == "health"
        print("rolled back:", event["reason"])
        assert 503 in statuses, "the new version never ran in Envoy"
        seen = len(statuses)
        await until(
            lambda: statuses[-5:] == [200] * 5 and len(statuses) > seen + 5,
            "envoy back on v1",
            control,
        )
        await until(lambda: all(s.holds == "ok" for s in sims), "every sim back on v1", control)
        sims_outside = [s for s in sims if s.node_id in outside]
        assert not [s.node_id for s in sims_outside if s.first("trap") is not None]
        assert all(s.first("trap") is not None for s in sims if s.node_id in inside)


async def test_a_restart_mid_rollout_resumes_it(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """Stopped at the first step and started again on the same cache, wasmxds resumes the
    rollout: the first cohort gets the new version, the rest still the old one."""
    inside, _, outside = node_ids("restart", (4, 0, 6))
    url = modules.url("header-filter.wasm")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    write(config_dir, url, "v1", interval="1h")

    async def fleet(control: WasmxdsProcess, exits: AsyncExitStack) -> list[SimProxy]:
        xds_port = await control.port_of("xds.listening")
        channel = await exits.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}")
        )
        sims = [SimProxy(node_id, delta=i % 2 == 1) for i, node_id in enumerate(inside + outside)]
        tasks = [asyncio.create_task(sim.run(channel)) for sim in sims]
        exits.callback(lambda: [t.cancel() for t in tasks])
        return sims

    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(running_wasmxds([config_dir], tmp_path / "cache"))
        sims = await fleet(control, exits)
        await until(lambda: all(s.holds == "v1" for s in sims), "every sim on v1", control)
        write(config_dir, url, "v2", interval="1h")
        await until(
            lambda: all(s.holds == "v2" for s in sims if s.node_id in inside), "step 0", control
        )
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(running_wasmxds([config_dir], tmp_path / "cache"))
        event = await control.wait_event("rollout.resumed")
        assert (event["phase"], event["step"]) == ("Progressing", 0)
        sims = await fleet(control, exits)
        await until(lambda: all(s.holds for s in sims), "every sim served", control)
        await asyncio.sleep(1.0)  # nothing more is coming: the step bakes for an hour
        assert {s.node_id for s in sims if s.holds == "v2"} == set(inside)
        assert all(s.first("v2") is None for s in sims if s.node_id in outside)


async def test_listener_mode_stages_across_real_envoys(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """In listener mode (LDS/CDS/ECDS, delta and SotW), a real Envoy of the first cohort runs
    the new version while one of the second still runs the old, until the step advances."""
    (first_id,), _, (second_id,) = node_ids("lds", (1, 0, 1))
    url = modules.url("header-filter.wasm")
    config_dir, template_dir = tmp_path / "config", tmp_path / "templates"
    config_dir.mkdir()
    port_a, port_b = free_port(), free_port()
    write_templates(
        template_dir,
        http_listener_template("main-a", port_a, labels={"app": "a"}),
        http_listener_template("main-b", port_b, labels={"app": "b"}),
        cluster_template("upstream", upstream.host, upstream.port),
    )
    write(config_dir, url, "v1", interval="3s")
    args = ("--listeners", str(template_dir), "--fetch-retry-max", "500ms")
    async with AsyncExitStack() as exits:
        control = await exits.enter_async_context(
            running_wasmxds([config_dir], tmp_path / "cache", extra_args=args)
        )
        xds_port = await control.port_of("xds.listening")
        for node_id, app, api in ((first_id, "a", "delta"), (second_id, "b", "sotw")):
            bootstrap = listeners_bootstrap(
                xds_port=xds_port, node_id=node_id, labels={"app": app}, api=api
            )
            envoy = await exits.enter_async_context(running_envoy(bootstrap, tmp_path / node_id))
            await envoy.wait_live()
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=5.0))

        async def header(port: int) -> str:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"http://127.0.0.1:{port}/anything")
                return str(response.headers.get(HEADER, ""))
            return ""

        async def both(want_a: str, want_b: str) -> bool:
            return (await header(port_a), await header(port_b)) == (want_a, want_b)

        await until(lambda: both("v1", "v1"), "both envoys on v1", control)
        write(config_dir, url, "v2", interval="3s")
        await until(lambda: header_is(header, port_a, "v2"), "first cohort on v2", control)
        assert await header(port_b) == "v1", "the second cohort got v2 with the first"
        await until(lambda: both("v2", "v2"), "both envoys on v2", control)
        event = await control.wait_event("rollout.advanced", lambda e: e["phase"] == "Complete")
        assert event["plugin"] == "default/header-filter"


async def header_is(header: Callable[[int], Any], port: int, want: str) -> bool:
    return bool(await header(port) == want)
