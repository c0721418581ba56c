"""``wasmxds serve`` stops cleanly on SIGTERM and SIGINT: exit 0, no traceback, every time."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from e2e.harness.wasmxds import running_wasmxds
from e2e.test_core import plugin_yaml

STOPS = 20
AT_ONCE = 5
# Seconds after the moment below; 0 is "at once".
DELAYS = (0.0, 0.0, 0.05, 0.2, 0.5, 1.0, 0.1, 0.0, 0.3, 0.02)
# Without a pending fetch, the log event the delay counts from: from start-up
# (stages not yet running) to serving.
MOMENTS = ("modules.index_loaded", "xds.listening", "admin.listening", "reconcile.pushed")


class SilentHost:
    """A loopback host that accepts connections and never answers: a fetch stays pending."""

    def __init__(self) -> None:
        self.asked: set[str] = set()
        """Paths requested so far (the request is read, never answered)."""
        self.port = 0
        self._held: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        line = await reader.readline()
        parts = line.split()
        if len(parts) > 1:
            self.asked.add(parts[1].decode(errors="replace"))

    async def asked_for(self, path: str) -> None:
        async with asyncio.timeout(30):
            while path not in self.asked:
                await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentHost]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            for writer in self._held:
                writer.close()
            server.close()


async def one_stop(tmp_path: Path, index: int, silent: SilentHost) -> tuple[int, float, str]:
    """Start serve, stop it after a delay; returns (exit code, seconds to exit, stderr)."""
    sig = signal.SIGTERM if index % 2 == 0 else signal.SIGINT
    pending_fetch = index % 4 < 2
    config = tmp_path / f"config-{index}"
    config.mkdir()
    path = f"/never-{index}.wasm"
    if pending_fetch:
        url = f"http://127.0.0.1:{silent.port}{path}"
        (config / "plugin.yaml").write_text(plugin_yaml("pending", url))
    async with running_wasmxds([config], tmp_path / f"cache-{index}") as wasmxds:
        if pending_fetch:
            await wasmxds.wait_event("admin.listening", timeout=30)
            await silent.asked_for(path)
        else:
            await wasmxds.wait_event(MOMENTS[(index // 4 + index % 2) % len(MOMENTS)], timeout=30)
        await asyncio.sleep(DELAYS[index % len(DELAYS)])
        started = time.monotonic()
        code = await wasmxds.stop(sig, timeout=20)
        took = time.monotonic() - started
        return code, took, "\n".join(wasmxds.raw)


async def test_every_stop_exits_zero_without_a_traceback(tmp_path: Path) -> None:
    """20 stops by SIGTERM and SIGINT at varying moments, half with a fetch pending, all exit 0."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def stop(index: int) -> tuple[int, float, str]:
        async with gate:
            return await one_stop(tmp_path, index, silent)

    # A TaskGroup, not gather: when one stop fails the others are cancelled and
    # waited for here, so no wasmxds is left running past the test.
    async with SilentHost().running() as silent, asyncio.TaskGroup() as group:
        tasks = [group.create_task(stop(i)) for i in range(STOPS)]
    results = [task.result() for task in tasks]
    codes = [code for code, _, _ in results]
    times = " ".join(f"{took:.2f}" for _, took, _ in results)
    print(f"\nexit codes over {STOPS} stops: {codes}\nseconds from signal to exit: {times}")
    for index, (code, _, log) in enumerate(results):
        assert code == 0, f"stop {index} exited {code}:\n{log[-4000:]}"
        assert "Traceback" not in log, f"stop {index} printed a traceback:\n{log[-4000:]}"
    assert len(silent.asked) == sum(1 for i in range(STOPS) if i % 4 < 2)
