"""Project vs floor: the same simulated Envoy fleet against wasmxds and a bare grpc.aio server.

    python -m benchmarks.run                      # 1k, 5k, 10k nodes, SotW, one run each
    python -m benchmarks.run --quick              # 1k nodes, a couple of minutes
    make bench                                    # 2k and 10k, SotW and delta, 3 runs each

For each fleet size, case and server it starts the server as its own process
(so its memory and CPU are read from /proc), starts the client workers
(:mod:`benchmarks.loadgen`, separate processes sharing the same cores), and
measures:

- initial sync: from the first stream opening to the last node having ACKed a
  response for every type it subscribes to (clients ramp at ``--ramp`` new
  streams per second, so this is at least nodes / ramp);
- change → all ACKed: p50/p99/max over every node and round of (ACK sent -
  change published). wasmxds publishes after its debounce; the publish time is
  the timestamp of its ``reconcile.pushed`` log line (JSON log format), written
  right after the snapshot is handed to the streams and before any is written
  to, so the debounce and the file watch are excluded. The floor publishes
  when it is told to push;
- server RSS per connected proxy: (VmRSS once synced - VmRSS before any
  stream) / nodes;
- server CPU per push: utime+stime of the server process from just before the
  change to every node having ACKed it (for wasmxds this includes noticing the
  file change and building the snapshot, a few milliseconds);
- reconnect storm: every client connection is dropped at once while a change
  is published; nodes reconnect with Envoy's backoff and resubscribe with what
  they hold. Recovered = ACKed the new change; the time is from the drop to the
  last node recovering, and nodes still without it after ``--storm-timeout``
  are counted as never recovered.

Cases: ``basic`` (one plugin, one label class) and ``classes`` (50 plugins over
100 label classes; every node subscribes to all 50 names and the change is to a
plugin every node runs). ``staged`` and ``classes-staged`` are the same with the
changed plugin rolling out in steps (``rollout.wasmxds.io/steps: 25,50,100``,
1 s bake): a change then takes one push per step, and the per-node latency is
from the push that brought the change to that node (for an unstaged change,
the only push); the server CPU per push covers the whole rollout (every step,
the engine's ticks while it bakes, the completion), and "change→every node
ACKed" is the whole rollout. Run both to see what staging costs:

    python -m benchmarks.run --cases basic,staged --servers wasmxds --sizes 2000,10000 --no-storm

(the floor does not stage: against it the staged cases compare a rollout with
one push). Prints a table (project, floor, ratio), a staging table when a case
and its staged variant both ran, writes the figures as JSON and a plot (PNG).
Timing never fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from benchmarks.floor import configuration
from benchmarks.loadgen import FleetConfig

__all__ = ["Case", "Result", "main"]

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
UVLOOP = "import uvloop; uvloop.install()"


def _python(prelude: str, module: str) -> list[str]:
    """The command running ``module``'s main(), after ``prelude`` (uvloop, GC experiments)."""
    if not prelude:
        return [sys.executable, "-m", module]
    entry = "wasmxds.cli" if module == "wasmxds" else module
    code = f"{prelude}\nimport sys\nfrom {entry} import main\nsys.exit(main())"
    return [sys.executable, "-c", code]


# -- cases ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """What the fleet runs: plugins, label classes, and which plugin a change edits."""

    name: str
    plugins: int
    label_classes: int
    steps: str = ""
    """The changed plugin's ``rollout.wasmxds.io/steps`` (empty: not staged)."""
    interval: float = 1.0
    """Its bake time per step (seconds)."""
    unstaged: str = ""
    """The case this one stages (what the staging table compares it with)."""

    @property
    def settle(self) -> float:
        """Seconds after every node has a change until its rollout is over (the last
        step's bake): the next change must not land in the middle of it."""
        return self.interval + 1.0 if self.steps else 0.0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{NAMESPACE}.plugin-{j}" for j in range(self.plugins))

    @property
    def pushed(self) -> str:
        return self.names[0]

    def selector(self, plugin: int) -> str | None:
        """Plugins 0-9 apply to every node; the others to one ``group`` (a tenth of the classes)."""
        return None if plugin < 10 else f"g{plugin % 10}"

    def plugin_yaml(self, plugin: int, mark: int, pad: int) -> str:
        config = json.loads(configuration(mark, pad))
        selector = self.selector(plugin)
        lines = [
            "apiVersion: extensions.istio.io/v1alpha1",
            "kind: WasmPlugin",
            f"metadata: {{name: plugin-{plugin}, namespace: {NAMESPACE}"
            f"{self._annotations(plugin)}}}",
            "spec:",
            f"  url: file:///var/lib/wasm/plugin-{plugin}.wasm",
            f"  pluginConfig: {json.dumps(config)}",
        ]
        if selector is not None:
            lines.append(f"  selector: {{matchLabels: {{group: {selector}}}}}")
        return "\n".join(lines) + "\n"

    def _annotations(self, plugin: int) -> str:
        if not self.steps or plugin != 0:
            return ""
        return (
            f', annotations: {{rollout.wasmxds.io/steps: "{self.steps}",'
            f' rollout.wasmxds.io/interval: "{self.interval:g}s"}}'
        )


CASES = {
    "basic": Case("basic", plugins=1, label_classes=1),
    "classes": Case("classes", plugins=50, label_classes=100),
    "staged": Case("staged", plugins=1, label_classes=1, steps="25,50,100", unstaged="basic"),
    "classes-staged": Case(
        "classes-staged", plugins=50, label_classes=100, steps="25,50,100", unstaged="classes"
    ),
}


# -- /proc -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


# -- line-oriented JSON control of a child process -----------------------------


class _Controlled:
    """A child process answering one JSON line per JSON line."""

    proc: asyncio.subprocess.Process

    async def _spawn(self, *argv: str, stderr: Any = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            limit=1 << 26,
        )
        self._lock = asyncio.Lock()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process {self.proc.pid} exited ({self.proc.returncode})")
        data: dict[str, Any] = json.loads(line)
        return data

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read()

    async def close(self, timeout: float = 20.0) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self.call("stop")
                    await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# -- servers -------------------------------------------------------------------


class Server(Protocol):
    name: str
    port: int

    @property
    def pid(self) -> int: ...

    async def start(self) -> None: ...

    async def change(self, mark: int) -> float:
        """Publish change ``mark``; returns when it was published (wall clock)."""
        ...

    def push_times(self) -> list[float]:
        """When the server pushed a snapshot (wall clock), as far as it says."""
        ...

    async def stop(self) -> None: ...


class FloorProcess(_Controlled):
    name = "floor"

    def __init__(self, case: Case, pad: int, prelude: str, admission: bool = True) -> None:
        self.case, self.pad, self.prelude = case, pad, prelude
        self.admission = admission
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def start(self) -> None:
        argv = [*_python(self.prelude, "benchmarks.floor"), "--pad", str(self.pad)]
        argv += ["--names", *self.case.names, "--push-names", self.case.pushed]
        if not self.admission:
            argv.append("--no-admission")
        await self._spawn(*argv)
        self.port = int((await self.read())["port"])

    async def change(self, mark: int) -> float:
        at: float = (await self.call("push", mark=mark))["at"]
        return at

    def push_times(self) -> list[float]:
        return []  # one push per change: the change's own time

    async def stop(self) -> None:
        await self.close()


class ProjectProcess:
    """``python -m wasmxds serve`` on a generated config dir; changes are YAML edits."""

    name = "wasmxds"

    def __init__(self, case: Case, pad: int, prelude: str, workdir: Path) -> None:
        self.case, self.pad, self.prelude = case, pad, prelude
        self.workdir = workdir
        self.config_dir = workdir / "plugins"
        self.log_path = workdir / "wasmxds.log"
        self.port = free_port()
        self.admin_port = free_port()
        self._log_offset = 0
        self.pushes: list[tuple[str, float]] = []
        """(snapshot version, wall-clock time) of every ``reconcile.pushed`` so far."""
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _write(self, plugin: int, mark: int) -> None:
        path = self.config_dir / f"plugin-{plugin}.yaml"
        path.write_text(self.case.plugin_yaml(plugin, mark, self.pad))

    async def start(self) -> None:
        self.config_dir.mkdir(parents=True)
        for plugin in range(self.case.plugins):
            self._write(plugin, 0)
        head = _python(self.prelude, "wasmxds")
        argv = [
            *head,
            "serve",
            "--config-dir",
            str(self.config_dir),
            "--xds-address",
            f"127.0.0.1:{self.port}",
            "--admin-address",
            f"127.0.0.1:{self.admin_port}",
            "--cache-dir",
            str(self.workdir / "cache"),
            # Debounce is excluded from the figures; keep it short so runs are quick.
            "--debounce-after",
            "10ms",
            "--debounce-max",
            "100ms",
            "--initial-fetch-wait",
            "0s",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ]
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO
            )
        async with asyncio.timeout(60):
            while not await asyncio.to_thread(self._ready):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"wasmxds exited: {self.log_path.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        await self._pushed(after=0)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _scan(self) -> None:
        """Read the log lines written since the last scan into :attr:`pushes`."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            chunk = log.read()
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for line in chunk[:end].splitlines():
            if b'"reconcile.pushed"' in line:
                event = json.loads(line)
                stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                self.pushes.append((str(event["version"]), stamp.timestamp()))

    async def _pushed(self, after: int, timeout: float = 30.0) -> float:
        """When the first push past the first ``after`` ones was made."""
        async with asyncio.timeout(timeout):
            while True:
                self._scan()
                if len(self.pushes) > after:
                    return self.pushes[after][1]
                await asyncio.sleep(0.01)

    async def change(self, mark: int) -> float:
        # Pushes of an earlier change (a rollout's later steps) are not this one's.
        self._scan()
        seen = len(self.pushes)
        self._write(0, mark)
        return await self._pushed(after=seen)

    def push_times(self) -> list[float]:
        self._scan()
        return [at for _, at in self.pushes]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- client workers --------------------------------------------------------------


class Worker(_Controlled):
    async def start(self) -> None:
        await self._spawn(sys.executable, "-m", "benchmarks.loadgen", "worker")


@dataclass(slots=True)
class FleetStatus:
    open: int = 0
    synced: int = 0
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    marks: Counter[int] = field(default_factory=Counter)


class Fleet:
    """Client worker processes holding one fleet between them."""

    def __init__(self, workers: int) -> None:
        self.workers = [Worker() for _ in range(workers)]

    async def start(
        self,
        target: str,
        fleet: FleetConfig,
        *,
        delta: bool,
        ramp: float,
        streams_per_connection: int,
        start_at: float,
    ) -> None:
        parts = len(self.workers)
        await asyncio.gather(
            *(
                w.call(
                    "start",
                    target=target,
                    fleet=fleet.to_json(),
                    part=i,
                    parts=parts,
                    delta=delta,
                    ramp_per_s=ramp / parts,
                    streams_per_connection=streams_per_connection,
                    start_at=start_at,
                )
                for i, w in enumerate(self.workers)
            )
        )

    async def spawn(self) -> None:
        """Start the processes and wait until each answers (its imports are done)."""
        await asyncio.gather(*(w.start() for w in self.workers))
        await self._all("status")

    async def _all(self, op: str, **fields: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.call(op, **fields) for w in self.workers)))

    async def status(self) -> FleetStatus:
        total = FleetStatus()
        for part in await self._all("status"):
            total.open += part["open"]
            total.synced += part["synced"]
            total.attempts += part["attempts"]
            total.failures.update(part["failures"])
            total.marks.update({int(k): v for k, v in part["marks"].items()})
        return total

    async def wait(
        self, done: Callable[[FleetStatus], bool], timeout: float, poll: float = 0.1
    ) -> FleetStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if done(status) or time.monotonic() > deadline:
                return status
            await asyncio.sleep(poll)

    async def sync_times(self) -> tuple[list[tuple[float, float]], int]:
        times: list[tuple[float, float]] = []
        missing = 0
        for part in await self._all("sync_times"):
            times += [(a, b) for a, b in part["times"]]
            missing += part["missing"]
        return times, missing

    async def mark_times(self, mark: int) -> tuple[list[tuple[float, float]], int]:
        times: list[tuple[float, float]] = []
        missing = 0
        for part in await self._all("mark_times", mark=mark):
            times += [(a, b) for a, b in part["times"]]
            missing += part["missing"]
        return times, missing

    async def kill(self) -> float:
        return min(float(part["at"]) for part in await self._all("kill"))

    def cpu(self) -> float:
        return sum(cpu_seconds(w.proc.pid) for w in self.workers)

    async def stop(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))


# -- one measurement ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(slots=True)
class Result:
    server: str
    case: str
    flavour: str
    nodes: int
    loop: str = "asyncio"
    repeat: int = 0
    """Which of ``--repeat`` interleaved runs this is (0 first)."""
    initial_sync_s: float = float("nan")
    sync_missing: int = 0
    sync_p99_s: float = float("nan")
    connect_cpu_ms: float = float("nan")
    """Server CPU per stream during the initial sync."""
    sync_cpu_s: float = float("nan")
    """Server CPU for the whole initial sync (every stream opened and synced)."""
    rss_idle_mib: float = 0.0
    rss_synced_mib: float = 0.0
    rss_per_proxy_kib: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    rounds_all_acked_ms: list[float] = field(default_factory=list)
    push_missing: int = 0
    cpu_per_push_s: float = float("nan")
    client_cpu_per_push_s: float = float("nan")
    storm_s: float = float("nan")
    storm_never: int = 0
    storm_failures: dict[str, int] = field(default_factory=dict)
    storm_attempts: int = 0
    open_failures: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Options:
    rounds: int
    workers: int
    ramp: float
    pad: int
    streams_per_connection: int
    push_timeout: float
    storm_timeout: float
    storm: bool
    prelude: str
    variant: str
    profile: Path | None
    native: bool = False
    floor_admission: bool = True


def _push_before(pushes: Sequence[float], received: float, published: float) -> float:
    """The last push made before a node received a change (``published`` if none was)."""
    return max((at for at in pushes if at <= received), default=published)


def _has_mark(mark: int, nodes: int) -> Callable[[FleetStatus], bool]:
    return lambda status: status.marks[mark] >= nodes


async def measure(
    server: Server, case: Case, nodes: int, delta: bool, opts: Options, repeat: int = 0
) -> Result:
    """One server, one fleet: sync, ``opts.rounds`` changes, and (first repeat only) a storm."""
    result = Result(
        server=server.name,
        case=case.name,
        flavour="delta" if delta else "sotw",
        nodes=nodes,
        loop=opts.variant,
        repeat=repeat,
    )
    await server.start()
    fleet = Fleet(opts.workers)
    profiler: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(0.5)
        pid = server.pid
        idle = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
        await fleet.spawn()
        profile = _profile_path(opts, server.name, case, delta, nodes)
        if profile is not None:
            profiler = await start_profiler(pid, profile("connect"), native=opts.native)
        start_at = time.time() + 0.1
        await fleet.start(
            f"127.0.0.1:{server.port}",
            FleetConfig(
                nodes=nodes,
                namespaces=(NAMESPACE,),
                label_classes=case.label_classes,
                ecds_names=case.names,
            ),
            delta=delta,
            ramp=opts.ramp,
            streams_per_connection=opts.streams_per_connection,
            start_at=start_at,
        )
        status = await fleet.wait(lambda s: s.synced >= nodes, timeout=nodes / opts.ramp + 60)
        result.open_failures = dict(status.failures)
        synced, result.sync_missing = await fleet.sync_times()
        if synced:
            result.initial_sync_s = max(s for _, s in synced) - start_at
            result.sync_p99_s = percentile([s - o for o, s in synced], 99)
        result.sync_cpu_s = cpu_seconds(pid) - cpu0
        result.connect_cpu_ms = result.sync_cpu_s / nodes * 1000
        if profiler is not None:
            await stop_profiler(profiler)
            profiler = None
        await asyncio.sleep(1.0)  # let allocations settle before reading memory
        synced_rss = rss_kib(pid)
        result.rss_idle_mib = idle / 1024
        result.rss_synced_mib = synced_rss / 1024
        result.rss_per_proxy_kib = (synced_rss - idle) / nodes

        if profile is not None:
            profiler = await start_profiler(pid, profile("push"), native=opts.native)
        latencies: list[float] = []
        cpu_total = client_total = 0.0
        mark = 0
        for _ in range(opts.rounds):
            mark += 1
            cpu_before, client_before = cpu_seconds(pid), fleet.cpu()
            published = await server.change(mark)
            await fleet.wait(_has_mark(mark, nodes), timeout=opts.push_timeout)
            # A staged change ends with its last step's bake: that CPU is the change's too.
            await asyncio.sleep(case.settle)
            cpu_total += cpu_seconds(pid) - cpu_before
            client_total += fleet.cpu() - client_before
            times, missing = await fleet.mark_times(mark)
            result.push_missing += missing
            # A staged change reaches each node with one of its steps' pushes.
            pushes = sorted(at for at in server.push_times() if at >= published)
            round_latencies = [
                acked - _push_before(pushes, received, published) for received, acked in times
            ]
            latencies += round_latencies
            whole = max((acked - published for _, acked in times), default=float("nan"))
            result.rounds_all_acked_ms.append(whole * 1000)
            await asyncio.sleep(0.3)
        if profiler is not None:
            await stop_profiler(profiler)
            profiler = None
        result.latency_p50_ms = percentile(latencies, 50) * 1000
        result.latency_p99_ms = percentile(latencies, 99) * 1000
        result.latency_max_ms = max(latencies, default=float("nan")) * 1000
        result.cpu_per_push_s = cpu_total / opts.rounds
        result.client_cpu_per_push_s = client_total / opts.rounds

        if opts.storm and repeat == 0:
            mark += 1
            before = await fleet.status()
            killed = await fleet.kill()
            await server.change(mark)
            after = await fleet.wait(_has_mark(mark, nodes), timeout=opts.storm_timeout)
            times, result.storm_never = await fleet.mark_times(mark)
            result.storm_s = max((acked - killed for _, acked in times), default=float("nan"))
            result.storm_failures = dict(after.failures - before.failures)
            result.storm_attempts = after.attempts - before.attempts
    finally:
        if profiler is not None:
            await stop_profiler(profiler)
        await fleet.stop()
        await server.stop()
    return result


def _profile_path(
    opts: Options, server: str, case: Case, delta: bool, nodes: int
) -> Callable[[str], Path] | None:
    if opts.profile is None:
        return None
    directory = opts.profile
    flavour = "delta" if delta else "sotw"
    return lambda phase: directory / f"{server}-{case.name}-{flavour}-{nodes}-{phase}.txt"


async def start_profiler(
    pid: int, output: Path, *, native: bool = False
) -> asyncio.subprocess.Process | None:
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.with_suffix(".log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            # Only samples holding the GIL: threads waiting for it are not using the CPU.
            "--gil",
            # Native unwinding (the GC, gRPC's Cython and C core) needs the process
            # paused for each sample; otherwise sample without stopping it.
            *(["--native"] if native else ["--nonblocking"]),
            "--output",
            str(output),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    await asyncio.sleep(1.0)  # py-spy attaches before the first push
    if proc.returncode is not None:
        print(f"py-spy failed: see {output.with_suffix('.log')}", file=sys.stderr)
    return proc


async def stop_profiler(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- report --------------------------------------------------------------------------


_ROWS: list[tuple[str, str, str]] = [
    # (label, Result field, format)
    ("initial sync (s)", "initial_sync_s", "{:.2f}"),
    ("  per node p99 (s)", "sync_p99_s", "{:.2f}"),
    ("  server CPU, whole sync (s)", "sync_cpu_s", "{:.2f}"),
    ("  server CPU per stream (ms)", "connect_cpu_ms", "{:.2f}"),
    ("change→all ACKed p50 (ms)", "latency_p50_ms", "{:.0f}"),
    ("change→all ACKed p99 (ms)", "latency_p99_ms", "{:.0f}"),
    ("change→all ACKed max (ms)", "latency_max_ms", "{:.0f}"),
    ("server RSS per proxy (KiB)", "rss_per_proxy_kib", "{:.1f}"),
    ("server RSS synced (MiB)", "rss_synced_mib", "{:.0f}"),
    ("server CPU per push (s)", "cpu_per_push_s", "{:.3f}"),
    ("  clients' CPU per push (s)", "client_cpu_per_push_s", "{:.3f}"),
    ("reconnect storm → synced (s)", "storm_s", "{:.2f}"),
    ("  nodes never recovered", "storm_never", "{}"),
]


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    return fmt.format(value)


# Figures whose wasmxds/floor ratio is listed per repeat (run-to-run spread).
_SPREAD = (
    ("server CPU per push", "cpu_per_push_s"),
    ("change→all ACKed p99", "latency_p99_ms"),
    ("server CPU, whole sync", "sync_cpu_s"),
)


def _median(values: Sequence[float]) -> float:
    kept = sorted(v for v in values if v == v)
    if not kept:
        return float("nan")
    middle = len(kept) // 2
    return kept[middle] if len(kept) % 2 else (kept[middle - 1] + kept[middle]) / 2


def _figure(runs: Sequence[Result], attr: str) -> Any:
    """``attr`` of one run, or its median over repeated runs."""
    values = [getattr(r, attr) for r in runs]
    if len(values) == 1 or not all(isinstance(v, float) for v in values):
        return values[0]
    return _median(values)


def _side_by_side(
    project: Sequence[Result], floor: Sequence[Result], attr: str
) -> tuple[Any, Any, str]:
    """``attr`` of each server (medians over runs; NaN with no run) and their ratio text."""
    p = _figure(project, attr) if project else float("nan")
    f = _figure(floor, attr) if floor else float("nan")
    ratio = "-"
    if isinstance(p, float) and isinstance(f, float) and f > 0 and p == p and f == f:
        ratio = f"{p / f:.2f}"
    return p, f, ratio


def _run_ratios(project: Sequence[Result], floor: Sequence[Result], attr: str) -> list[float]:
    """wasmxds/floor for ``attr``, one per repeat both servers ran."""
    pairs = {r.repeat: r for r in floor}
    return [
        getattr(r, attr) / getattr(pairs[r.repeat], attr)
        for r in project
        if r.repeat in pairs and getattr(pairs[r.repeat], attr) > 0
    ]


def collapse(results: Sequence[Result]) -> list[Result]:
    """One result per server and measurement: medians over repeated runs (plots, staging)."""
    groups: dict[tuple[str, str, str, int, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.case, r.flavour, r.nodes, r.loop), []).append(r)
    out = []
    for runs in groups.values():
        first = runs[0]
        merged = Result(**asdict(first))
        for name in first.__dataclass_fields__:
            if isinstance(getattr(first, name), float):
                setattr(merged, name, _figure(runs, name))
        out.append(merged)
    return out


def table(results: Sequence[Result]) -> str:
    """Project vs floor per (case, flavour, nodes), with project/floor ratios; over repeated
    runs the medians, and the ratio of each repeat for the figures in ``_SPREAD``."""
    out: list[str] = []
    groups: dict[tuple[str, str, int, str], dict[str, list[Result]]] = {}
    for r in results:
        groups.setdefault((r.case, r.flavour, r.nodes, r.loop), {}).setdefault(r.server, []).append(
            r
        )
    for (case, flavour, nodes, loop), by_server in groups.items():
        title = f"{CASES[case].plugins} plugin(s) x {CASES[case].label_classes} label class(es)"
        if CASES[case].steps:
            title += f", staged {CASES[case].steps}"
        runs = max(len(v) for v in by_server.values())
        median = f", median of {runs} runs" if runs > 1 else ""
        out.append(f"\n== {title}, {flavour}, {nodes} nodes, {loop}{median} ==")
        out.append(f"{'':32}{'wasmxds':>12}{'floor':>12}{'ratio':>8}")
        project, floor = by_server.get("wasmxds", []), by_server.get("floor", [])
        for label, attr, fmt in _ROWS:
            p, f, ratio = _side_by_side(project, floor, attr)
            out.append(f"{label:32}{_cell(p, fmt):>12}{_cell(f, fmt):>12}{ratio:>8}")
        if runs > 1 and project and floor:
            for label, attr in _SPREAD:
                shown = ", ".join(f"{x:.2f}" for x in _run_ratios(project, floor, attr))
                out.append(f"  ratio per run, {label}: {shown}")
        for r in (*project, *floor):
            notes = []
            if r.sync_missing or r.push_missing:
                notes.append(f"not synced {r.sync_missing}, pushes missing {r.push_missing}")
            if r.open_failures:
                notes.append(f"stream failures while connecting {r.open_failures}")
            if r.storm_failures:
                notes.append(f"storm stream failures {r.storm_failures}")
            if notes:
                out.append(f"  {r.server} (run {r.repeat + 1}): " + "; ".join(notes))
    return "\n".join(out)


def markdown(results: Sequence[Result]) -> str:
    """The figures as markdown tables, one per case and flavour, sizes side by side
    (medians over repeats, then each repeat's ratio for the figures in ``_SPREAD``)."""
    out: list[str] = []
    by_table: dict[tuple[str, str, str], dict[tuple[int, str], list[Result]]] = {}
    for r in results:
        key = (r.case, r.flavour, r.loop)
        by_table.setdefault(key, {}).setdefault((r.nodes, r.server), []).append(r)
    for (case, flavour, loop), cells in by_table.items():
        sizes = sorted({nodes for nodes, _ in cells})
        title = f"{CASES[case].plugins} plugin(s) x {CASES[case].label_classes} label class(es)"
        out.append(f"\n{title}, {flavour}, {loop}:\n")
        head = ["", *(f"{n:,} {s}" for n in sizes for s in ("wasmxds", "floor", "ratio"))]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for label, attr, fmt in _ROWS:
            row = [label.strip()]
            for nodes in sizes:
                p, f, ratio = _side_by_side(
                    cells.get((nodes, "wasmxds"), []), cells.get((nodes, "floor"), []), attr
                )
                row += [_cell(p, fmt), _cell(f, fmt), ratio]
            out.append("| " + " | ".join(row) + " |")
        for label, attr in _SPREAD:
            row = [f"{label}: ratio per run"]
            for nodes in sizes:
                ratios = _run_ratios(
                    cells.get((nodes, "wasmxds"), []), cells.get((nodes, "floor"), []), attr
                )
                row += ["", "", " / ".join(f"{x:.2f}" for x in ratios) or "-"]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


_STAGING_ROWS: list[tuple[str, Callable[[Result], float], str]] = [
    # (label, figure, format)
    ("server CPU per change (s)", lambda r: r.cpu_per_push_s, "{:.3f}"),
    ("push→ACKed p50 (ms)", lambda r: r.latency_p50_ms, "{:.0f}"),
    ("push→ACKed p99 (ms)", lambda r: r.latency_p99_ms, "{:.0f}"),
    ("push→ACKed max (ms)", lambda r: r.latency_max_ms, "{:.0f}"),
    ("change→every node ACKed (ms)", lambda r: percentile(r.rounds_all_acked_ms, 50), "{:.0f}"),
]


def staging_table(results: Sequence[Result]) -> str:
    """wasmxds with and without staging, per case that has a staged variant in ``results``."""
    out: list[str] = []
    ran = {
        (r.case, r.flavour, r.nodes, r.loop): r for r in collapse(results) if r.server == "wasmxds"
    }
    for (case, flavour, nodes, loop), staged in ran.items():
        plain = ran.get((CASES[case].unstaged, flavour, nodes, loop))
        if plain is None:
            continue
        steps = CASES[case].steps
        out.append(f"\n== staging cost: {plain.case}, {flavour}, {nodes} nodes, {loop} ==")
        out.append(f"{'':32}{'at once':>12}{'staged':>12}{'ratio':>8}")
        for label, figure, fmt in _STAGING_ROWS:
            a, b = figure(plain), figure(staged)
            ratio = f"{b / a:.2f}" if a > 0 and a == a and b == b else "-"
            out.append(f"{label:32}{_cell(a, fmt):>12}{_cell(b, fmt):>12}{ratio:>8}")
        out.append(
            f"  staged: steps {steps}, {CASES[case].interval:g} s bake per step; a change takes"
            " one push per step and the CPU covers the whole rollout"
        )
    return "\n".join(out)


def plot(results: Sequence[Result], path: Path) -> None:
    """Latency (p50, p99) and memory per proxy against fleet size, per server and case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {
        ("wasmxds", "basic"): "tab:blue",
        ("wasmxds", "classes"): "tab:orange",
        ("floor", "basic"): "dimgray",
        ("floor", "classes"): "darkgoldenrod",
    }
    sizes: set[int] = set()
    for (server, case, flavour), rows in _series(results).items():
        color = colors.get((server, case), "tab:red")
        dash = "-" if server == "wasmxds" else "--"
        label = f"{server}, {CASES[case].plugins}x{CASES[case].label_classes}, {flavour}"
        xs = [r.nodes for r in rows]
        sizes.update(xs)
        p99 = [r.latency_p99_ms for r in rows]
        p50 = [r.latency_p50_ms for r in rows]
        lat.plot(xs, p99, dash, color=color, marker="o", label=f"{label} p99")
        lat.plot(xs, p50, dash, color=color, marker="x", alpha=0.45, label=f"{label} p50")
        per_proxy = [r.rss_per_proxy_kib for r in rows]
        mem.plot(xs, per_proxy, dash, color=color, marker="o", label=label)
    lat.set(
        xlabel="simulated Envoy nodes", ylabel="ms", title="change → all ACKed (p50: x, p99: o)"
    )
    mem.set(xlabel="simulated Envoy nodes", ylabel="KiB", title="server RSS per connected proxy")
    mem.set_ylim(bottom=0)
    for axes in (lat, mem):
        axes.set_xticks(sorted(sizes))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(results: Iterable[Result]) -> dict[tuple[str, str, str], list[Result]]:
    series: dict[tuple[str, str, str], list[Result]] = {}
    for r in collapse(list(results)):
        series.setdefault((r.server, r.case, r.flavour), []).append(r)
    for rows in series.values():
        rows.sort(key=lambda r: r.nodes)
    return series


# -- main --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1k nodes only")
    parser.add_argument("--sizes", default="1000,5000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--cases", default="basic,classes", help="basic, classes")
    parser.add_argument("--flavours", default="sotw", help="sotw, delta")
    parser.add_argument("--servers", default="floor,wasmxds", help="floor, wasmxds")
    parser.add_argument("--rounds", type=int, default=5, help="changes per measurement")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every measurement N times, the servers interleaved, and report medians",
    )
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--ramp", type=float, default=2000.0, help="new streams per second")
    parser.add_argument("--streams-per-connection", type=int, default=1)
    parser.add_argument("--pad", type=int, default=256, help="plugin configuration bytes")
    parser.add_argument("--push-timeout", type=float, default=60.0)
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--no-storm", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run both servers on uvloop")
    parser.add_argument(
        "--prelude", default="", help="Python code both servers run first (experiments)"
    )
    parser.add_argument(
        "--floor-default-admission",
        action="store_true",
        help="run the floor with gRPC's default pending-call limits (to see bursts fail)",
    )
    parser.add_argument(
        "--native", action="store_true", help="with --profile: native frames (GC, gRPC core)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the project's pushes into DIR")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    parser.add_argument(
        "--from-json", type=Path, help="print the table and plot of an earlier --json, no run"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="with --from-json: markdown tables (docs)"
    )
    return parser


async def _run(args: argparse.Namespace) -> list[Result]:
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    opts = Options(
        rounds=3 if args.quick else args.rounds,
        workers=args.workers,
        ramp=args.ramp,
        pad=args.pad,
        streams_per_connection=args.streams_per_connection,
        push_timeout=args.push_timeout,
        storm_timeout=args.storm_timeout,
        storm=not args.no_storm,
        prelude="\n".join(p for p in (UVLOOP if args.uvloop else "", args.prelude) if p),
        variant="+".join(v for v in ("uvloop" if args.uvloop else "asyncio", args.prelude) if v),
        profile=args.profile,
        native=args.native,
        floor_admission=not args.floor_default_admission,
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="wasmxds-bench-") as tmp:
        for case_name in args.cases.split(","):
            case = CASES[case_name]
            for flavour in args.flavours.split(","):
                for nodes in sizes:
                    for repeat in range(args.repeat):
                        names = args.servers.split(",")
                        # Alternate who goes first, so drift in the machine favours neither.
                        for server_name in names if repeat % 2 == 0 else names[::-1]:
                            workdir = (
                                Path(tmp) / f"{case_name}-{flavour}-{nodes}-{server_name}-{repeat}"
                            )
                            server: Server = (
                                FloorProcess(case, opts.pad, opts.prelude, opts.floor_admission)
                                if server_name == "floor"
                                else ProjectProcess(case, opts.pad, opts.prelude, workdir)
                            )
                            print(
                                f"-- {server_name}: {case_name}, {flavour}, {nodes} nodes,"
                                f" run {repeat + 1}/{args.repeat}",
                                flush=True,
                            )
                            result = await measure(
                                server, case, nodes, flavour == "delta", opts, repeat
                            )
                            results.append(result)
                            print(table([result]), flush=True)
    return results


def load(path: Path) -> list[Result]:
    """Results written by ``--json``."""
    return [Result(**row) for row in json.loads(path.read_text())["results"]]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json is not None:
        results = load(args.from_json)
        if args.markdown:
            print(markdown(results))
            return 0
        print(table(results))
        print(staging_table(results))
        if args.plot is not None:
            plot(results, args.plot)
        return 0
    started = time.monotonic()
    results = asyncio.run(_run(args))
    print("\n# machine:", json.dumps(machine()))
    print(table(results))
    print(staging_table(results))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": sys.argv[1:],
                    "results": [asdict(r) for r in results],
                },
                indent=1,
            )
        )
    if args.plot is not None:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.profile is not None:
        from benchmarks.profiles import summarize

        print("\n# profiles (py-spy; the figures above are perturbed by the profiler)")
        for path in sorted(args.profile.glob("*.txt")):
            print(summarize(path, top=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
