"""`make demo`: wasmxds + a real Envoy + a small upstream, on loopback.

Starts:
  - an echo upstream on 127.0.0.1:8080 (returns the request it got as JSON),
  - a static file server for examples/header-filter/ on 127.0.0.1:18080
    (where examples/plugins/header-filter.yaml fetches its module from),
  - `wasmxds serve --config-dir examples/plugins` (xDS on 127.0.0.1:18000),
  - Envoy with envoy-configs/ecds-sotw.yaml, listening on 127.0.0.1:10000,
then sends one request through Envoy and shows what the filter did.
Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import httpx
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".demo"
ENVOY_PORT = 10000


async def _echo(request: web.Request) -> web.Response:
    body = {"path": request.path_qs, "headers": dict(request.headers)}
    return web.json_response(body)


async def _start_site(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        raise SystemExit(
            f"demo: port {port} is busy ({exc.strerror}); stop whatever uses it"
        ) from exc
    return runner


async def _wait_ready(url: str, what: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if proc.returncode is not None:
                raise SystemExit(f"demo: {what} exited; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"demo: {what} did not become ready; see {log}")


async def _show_request() -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{ENVOY_PORT}/hello")
    print(f"\n$ curl -i http://127.0.0.1:{ENVOY_PORT}/hello")
    print(f"HTTP/1.1 {response.status_code} {response.reason_phrase}")
    for name, value in response.headers.items():
        if name.startswith("x-wasmxds"):
            print(f"{name}: {value}")
    seen = {
        k: v for k, v in response.json()["headers"].items() if k.lower().startswith("x-wasmxds")
    }
    print(f"(the upstream saw: {json.dumps(seen)})")
    print(
        "\nThe x-wasmxds header above was added by the Wasm filter wasmxds streamed to Envoy.\n"
        "Now edit examples/plugins/header-filter.yaml (change a header value) and run:\n"
        f"    curl -i http://127.0.0.1:{ENVOY_PORT}/hello\n"
        "The change is live within a second. Logs: .demo/wasmxds.log, .demo/envoy.log\n"
        "Press Ctrl-C to stop."
    )


async def _stop(processes: list[asyncio.subprocess.Process]) -> None:
    for proc in processes:
        if proc.returncode is None:
            proc.terminate()
    for proc in processes:
        await proc.wait()


async def main() -> None:
    STATE.mkdir(exist_ok=True)
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", _echo)
    files = web.Application()
    files.router.add_static("/", REPO / "examples" / "header-filter")
    runners: list[web.AppRunner] = []
    processes: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        runners += [await _start_site(upstream, 8080), await _start_site(files, 18080)]
        with (STATE / "wasmxds.log").open("w") as wasmxds_log:
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "wasmxds", "serve",
                    "--config-dir", str(REPO / "examples" / "plugins"),
                    "--cache-dir", str(STATE / "cache"),
                    stderr=wasmxds_log, cwd=REPO,
                )
            )  # fmt: skip
        await _wait_ready(
            "http://127.0.0.1:18001/readyz", "wasmxds", processes[0], STATE / "wasmxds.log"
        )
        processes.insert(
            0,
            await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "envoy"),
                "-c", str(REPO / "envoy-configs" / "ecds-sotw.yaml"),
                "--use-dynamic-base-id", "--concurrency", "1",
                "--config-yaml",
                "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}",
                "--log-path", str(STATE / "envoy.log"),
                cwd=REPO,
            ),
        )  # fmt: skip
        await _wait_ready("http://127.0.0.1:9901/ready", "Envoy", processes[0], STATE / "envoy.log")
        await _show_request()
        await stop.wait()
        print("\nstopping...")
    finally:
        await _stop(processes)
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
