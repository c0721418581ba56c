"""Run the real ``wasmxds serve`` command as a subprocess and read its JSON log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["WasmxdsProcess", "run_cli", "running_wasmxds"]

REPO = Path(__file__).resolve().parents[2]


class WasmxdsProcess:
    """A running ``wasmxds serve`` with its log events parsed as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        # Whatever it prints to stdout (nothing, normally): read so the pipe never fills.
        self.stdout: list[str] = []
        self._new_event = asyncio.Condition()
        self._reader = asyncio.create_task(self._read_log())
        self._stdout_reader = asyncio.create_task(self._read_stdout())

    async def _read_stdout(self) -> None:
        if self.proc.stdout is not None:
            async for line in self.proc.stdout:
                self.stdout.append(line.decode(errors="replace").rstrip())

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.raw.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            async with self._new_event:
                self.events.append(event)
                self._new_event.notify_all()
        async with self._new_event:
            self._new_event.notify_all()  # stderr closed: the process is gone

    async def wait_event(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda e: True,
        *,
        timeout: float = 15.0,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first ``name`` event (at index ≥ ``after``) for which ``predicate`` holds."""
        try:
            async with asyncio.timeout(timeout), self._new_event:
                while True:
                    for event in self.events[after:]:
                        if event.get("event") == name and predicate(event):
                            return event
                    if self._reader.done():
                        code = await self.proc.wait()
                        raise RuntimeError(f"wasmxds exited with {code}:\n{self.log_text()}")
                    await self._new_event.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {name!r} event in {timeout}s; log:\n{self.log_text()}"
            ) from None

    def log_text(self) -> str:
        return "\n".join(self.raw[-200:])

    async def port_of(self, event: str) -> int:
        listening = await self.wait_event(event)
        return int(str(listening["address"]).rsplit(":", 1)[1])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        # wait() rather than await: a cancelled reader must not swallow the
        # cancellation of the task that is stopping us (it would hang teardown).
        await asyncio.wait([self._reader, self._stdout_reader])
        return self.proc.returncode or 0


@contextlib.asynccontextmanager
async def running_wasmxds(
    config_dirs: Sequence[Path],
    cache_dir: Path,
    *,
    xds_port: int = 0,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[WasmxdsProcess]:
    """Start ``python -m wasmxds serve`` on loopback with a fast debounce; stop it on exit."""
    args = [sys.executable, "-m", "wasmxds", "serve"]
    for directory in config_dirs:
        args += ["--config-dir", str(directory)]
    args += [
        "--xds-address",
        f"127.0.0.1:{xds_port}",
        "--admin-address",
        "127.0.0.1:0",
        "--cache-dir",
        str(cache_dir),
        "--log-format",
        "json",
        "--log-level",
        "debug",
        *extra_args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    process = WasmxdsProcess(proc)
    try:
        yield process
    finally:
        await process.stop()


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run a one-shot ``wasmxds`` command; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wasmxds",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()
