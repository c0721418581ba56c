"""The benchmarks still work: tiny fleets, real gRPC on loopback, no timing asserted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import fanout, micro, profiles, run
from benchmarks.floor import ADMISSION_OPTIONS, SERVER_OPTIONS, FloorServer
from benchmarks.loadgen import ECDS_TYPE, Backoff, FleetConfig, LoadGen, NodeSpec
from wasmxds.settings import HostPort
from wasmxds.xds import server as xds_server
from wasmxds.xds.server import XdsServer

NODES = 20


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_floor_uses_the_project_transport_options():
    """The comparison isolates the application layer only if gRPC is configured alike."""
    project = dict(xds_server._SERVER_OPTIONS)
    project["grpc.max_receive_message_length"] = xds_server.DEFAULT_MAX_RECEIVE_BYTES
    assert dict(SERVER_OPTIONS + ADMISSION_OPTIONS) == project


def test_backoff_is_envoys_jittered_exponential():
    backoff = Backoff(base=0.5, max=30.0)
    delays = [backoff.next() for _ in range(10)]
    caps = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert all(0 <= d < cap for d, cap in zip(delays, caps, strict=True))
    backoff.reset()
    assert backoff.next() < 0.5


def test_fleet_parts_cover_every_node_once():
    fleet = FleetConfig(nodes=10, label_classes=3, ecds_names=("bench.a",))
    ids = [spec.id for part in range(3) for spec in fleet.part(part, 3)]
    assert sorted(ids) == sorted(f"node-{i}" for i in range(10))
    assert FleetConfig.from_json(json.loads(json.dumps(fleet.to_json()))) == fleet
    assert {fleet.spec(i).labels for i in range(10)} == {fleet.spec(i).labels for i in range(3)}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_loadgen_against_the_floor(delta: bool):
    floor = FloorServer(names=["bench.a", "bench.b"], push_names=["bench.a"])
    port = await floor.start()
    specs = FleetConfig(nodes=NODES, ecds_names=("bench.a", "bench.b")).part(0, 1)
    gen = LoadGen(f"127.0.0.1:{port}", specs, delta=delta, streams_per_connection=3)
    try:
        await gen.ramp(1000)
        await _until(lambda: gen.counters.synced == NODES)
        floor.push(1)
        await _until(lambda: gen.counters.marks[1] == NODES)
        await _until(lambda: floor.status()["acked"] == NODES)
        assert gen.mark_times(1)["missing"] == 0
        await gen.kill()
        floor.push(2)
        await _until(lambda: gen.counters.marks[2] == NODES)
        assert gen.counters.attempts >= 2 * NODES
    finally:
        await gen.stop()
        await floor.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_loadgen_against_the_project_resumes_without_resend(delta: bool):
    """ACKs are right (the server answers the next change) and a reconnect resumes."""
    case = run.CASES["classes"]
    server = XdsServer(address=HostPort("127.0.0.1", 0), root_namespace="istio-system", grace=0.2)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    first = micro.snapshot_for(case, 0, 16, None)
    server.publish(first)
    specs = FleetConfig(
        nodes=NODES, namespaces=(run.NAMESPACE,), label_classes=7, ecds_names=case.names
    ).part(0, 1)
    gen = LoadGen(f"127.0.0.1:{server.port}", specs, delta=delta)
    try:
        await gen.ramp(1000)
        await _until(lambda: gen.counters.synced == NODES)
        server.publish(micro.snapshot_for(case, 1, 16, first))
        await _until(lambda: gen.counters.marks[1] == NODES)
        await _until(
            lambda: all(not s.protocol.types[ECDS_TYPE].in_flight for s in server.sessions)
        )
        responses = sum(node.responses for node in gen.nodes)
        await gen.kill()
        await _until(lambda: gen.counters.open == NODES and len(server.sessions) == NODES)
        await asyncio.sleep(0.2)
        assert sum(node.responses for node in gen.nodes) == responses, "resent on resume"
        assert not gen.counters.failures
    finally:
        await gen.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_node_spec_carries_namespace_and_labels():
    spec = NodeSpec("n", "bench", (("app", "x"),), ("bench.a",), lds_wildcard=True)
    node = spec.node_proto()
    assert node.metadata.fields["NAMESPACE"].string_value == "bench"
    assert node.metadata.fields["LABELS"].struct_value.fields["app"].string_value == "x"
    assert spec.type_urls[0].endswith("Listener")


def test_micro_benchmark_runs(capsys: pytest.CaptureFixture[str]):
    assert micro.main(["--nodes", "20", "--case", "classes"]) == 0
    assert micro.main(["--nodes", "20", "--delta"]) == 0
    assert "responses() push" in capsys.readouterr().out


def test_fanout_benchmark_runs(capsys: pytest.CaptureFixture[str]):
    """The socket-free push measurement drives both servers' real stream handlers."""
    assert fanout.main(["--nodes", "20", "--pushes", "2", "--case", "classes"]) == 0
    out = capsys.readouterr().out
    assert "floor" in out
    assert "wasmxds" in out


def test_profile_summary(tmp_path: Path):
    sample = tmp_path / "p.txt"
    sample.write_text(
        "main (x.py:1);XdsServer._send (wasmxds/xds/server.py:10) 3\n"
        "main (x.py:1);SotwStream.handle (wasmxds/xds/sotw.py:5);gc_collect_main (libpython) 1\n"
    )
    text = profiles.summarize(sample)
    assert "4 samples" in text
    assert profiles.GC in text


def test_runner_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Floor and wasmxds as processes, one client worker, a change and a storm; twice,
    interleaved, with the medians and each run's ratio reported."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--sizes", str(NODES), "--rounds", "1", "--workers", "1", "--cases", "basic"]
    argv += ["--repeat", "2"]
    argv += ["--ramp", "1000", "--storm-timeout", "30", "--json", str(out), "--plot", str(png)]
    assert run.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted((r["server"], r["repeat"]) for r in results) == [
        ("floor", 0),
        ("floor", 1),
        ("wasmxds", 0),
        ("wasmxds", 1),
    ]
    for result in results:
        assert result["sync_missing"] == result["push_missing"] == result["storm_never"] == 0
        # Measured (not NaN); /proc counts 10 ms ticks, so 20 streams may take "0".
        assert 0 <= result["sync_cpu_s"] < 60
    storms = {r["repeat"]: r["storm_s"] for r in results if r["server"] == "wasmxds"}
    assert storms[0] > 0  # the storm runs once, in the first repeat
    assert storms[1] != storms[1]  # NaN: not measured again
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "median of 2 runs" in printed
    assert "ratio per run, server CPU per push" in printed
    assert run.main(["--from-json", str(out), "--markdown"]) == 0
    tables = capsys.readouterr().out
    assert "| server CPU per push (s) |" in tables
    assert "| server CPU per push: ratio per run |" in tables
