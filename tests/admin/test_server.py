"""The admin HTTP server on loopback: module downloads for remote delivery, readiness, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

import wasmxds.admin.server as admin_server
from tests.factories import WASM_HEADER
from tests.xds.helpers import snapshot_of
from wasmxds.admin.server import AdminServer, AdminState, Pulse
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import Problem, Severity
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.settings import HostPort


@contextlib.asynccontextmanager
async def admin(
    tmp_path: Path, *, ready: bool = True, problems: Sequence[Problem] = ()
) -> AsyncIterator[tuple[str, ModuleStore, Pulse]]:
    store, pulse = ModuleStore(tmp_path), Pulse()
    state = AdminState(
        readiness=lambda: Readiness(sources_loaded=True, first_push=ready, xds_listening=True),
        sessions=list,
        snapshot=snapshot_of,
        plugins=dict,
        problems=lambda: problems,
        delivery="remote",
        store=store,
        metrics=Metrics(),
        module_arrived=pulse,
    )
    server = AdminServer(address=HostPort("127.0.0.1", 0), state=state)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    try:
        yield f"http://127.0.0.1:{server.port}", store, pulse
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_module_download_serves_cached_bytes(tmp_path):
    """/modules/sha256/<hex> returns the module's bytes as application/wasm."""
    async with admin(tmp_path) as (base, store, _), httpx.AsyncClient() as client:
        module = await store.put(WASM_HEADER)
        response = await client.get(f"{base}/modules/sha256/{module.digest}")
        assert response.status_code == 200
        assert response.content == WASM_HEADER
        assert response.headers["content-type"] == "application/wasm"


async def test_module_download_waits_for_a_fetch_under_way(tmp_path):
    """A request for a module this replica is still fetching is answered when it lands."""
    async with admin(tmp_path) as (base, store, pulse), httpx.AsyncClient(timeout=10) as client:
        digest = hashlib.sha256(WASM_HEADER).hexdigest()
        request = asyncio.create_task(client.get(f"{base}/modules/sha256/{digest}"))
        await asyncio.sleep(0.1)
        assert not request.done()
        await store.put(WASM_HEADER)
        pulse.fire()
        response = await request
        assert response.status_code == 200


async def test_unknown_module_is_a_404(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A digest nobody fetches is a 404 once the wait is over; junk paths are 404 at once."""
    monkeypatch.setattr(admin_server, "_MODULE_WAIT", 0.2)
    async with admin(tmp_path) as (base, _, _), httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/modules/sha256/{'0' * 64}")).status_code == 404
        assert (await client.get(f"{base}/modules/sha256/../../etc/passwd")).status_code == 404
        assert (await client.get(f"{base}/modules/sha256/ABC")).status_code == 404


async def test_readyz_reports_each_check(tmp_path):
    """/readyz is 503 with the failing check named until everything is ready."""
    async with admin(tmp_path, ready=False) as (base, _, _), httpx.AsyncClient() as client:
        response = await client.get(f"{base}/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "ready": False,
            "sources_loaded": True,
            "first_push": False,
            "xds_listening": True,
        }
        assert (await client.get(f"{base}/healthz")).text == "ok\n"


async def test_metrics_are_prometheus_text(tmp_path):
    """/metrics serves the registry in Prometheus' text format."""
    async with admin(tmp_path) as (base, _, _), httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "wasmxds_debounce_pushes_total 0.0" in response.text


async def test_problems_page_lists_what_the_sources_found(tmp_path):
    """/debug/problems shows each source problem with its file, line and severity."""
    found = [
        Problem("plugins/a.yaml", 7, "spec.sha256: must be 64 characters long"),
        Problem("plugins/a.yaml", 1, "keeping the last valid version", Severity.WARNING),
    ]
    async with admin(tmp_path, problems=found) as (base, _, _), httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/debug/problems")).json() == [
            {
                "path": "plugins/a.yaml",
                "line": 7,
                "severity": "error",
                "message": "spec.sha256: must be 64 characters long",
            },
            {
                "path": "plugins/a.yaml",
                "line": 1,
                "severity": "warning",
                "message": "keeping the last valid version",
            },
        ]
