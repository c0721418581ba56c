"""The admin HTTP server on loopback: module downloads for remote delivery, readiness, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
import structlog
import structlog.testing

import wasmxds.admin.downloads as downloads
import wasmxds.admin.server as admin_server
from tests.factories import WASM_HEADER, make_plugin
from tests.xds.helpers import snapshot_of
from wasmxds.admin.server import AdminServer, AdminState, Pulse
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import ObjectKey, Problem, Severity
from wasmxds.errors import FetchError
from wasmxds.log import configure_logging
from wasmxds.metrics import Metrics
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, Module, ModuleOutcome, Pending, Ready
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.settings import HostPort


@contextlib.asynccontextmanager
async def admin(
    tmp_path: Path,
    *,
    ready: bool = True,
    problems: Sequence[Problem] = (),
    plugins: Mapping[ObjectKey, PluginStatus] | None = None,
    index: ModuleIndex | None = None,
) -> AsyncIterator[tuple[str, ModuleStore, Pulse]]:
    """The admin server on loopback; ``plugins`` is read live, so a test may change it."""
    store, pulse = ModuleStore(tmp_path), Pulse()
    statuses = {} if plugins is None else plugins
    state = AdminState(
        readiness=lambda: Readiness(sources_loaded=True, first_push=ready, xds_listening=True),
        sessions=list,
        snapshot=snapshot_of,
        plugins=lambda: statuses,
        problems=lambda: problems,
        delivery="remote",
        store=store,
        metrics=Metrics(),
        module_arrived=pulse,
        index=index,
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
    """/modules/sha256/<hex> returns a module a plugin uses as application/wasm."""
    plugins: dict[ObjectKey, PluginStatus] = {}
    async with admin(tmp_path, plugins=plugins) as (base, store, _), httpx.AsyncClient() as client:
        module = await store.put(WASM_HEADER)
        plugins[ObjectKey("default", "a")] = status("a", Ready(module))
        response = await client.get(f"{base}/modules/sha256/{module.digest}")
        assert response.status_code == 200
        assert response.content == WASM_HEADER
        assert response.headers["content-type"] == "application/wasm"


def status(name: str, outcome: ModuleOutcome, sha256: str = "", url: str = "") -> PluginStatus:
    """Reconcile's word on a plugin whose module (pinned to ``sha256`` if given) is ``outcome``."""
    spec = {"sha256": sha256} if sha256 else {}
    plugin = make_plugin(name, url=url, **spec) if url else make_plugin(name, **spec)
    return PluginStatus(plugin, module_request(plugin), outcome, None)


WANTED = hashlib.sha256(WASM_HEADER).hexdigest()
FAILED = Failed(FetchError("http://modules.example/x.wasm: 404 Not Found"), 1, 1.0)
# Any wait that should not happen would outlast the client's 10 s timeout.
LONG_WAIT = 3600.0


async def test_module_download_waits_for_a_fetch_under_way(tmp_path):
    """A request for a module a plugin here is still fetching is answered when it lands."""
    plugins = {ObjectKey("default", "a"): status("a", Pending(), sha256=WANTED)}
    async with (
        admin(tmp_path, plugins=plugins) as (base, store, pulse),
        httpx.AsyncClient(timeout=10) as client,
    ):
        request = asyncio.create_task(client.get(f"{base}/modules/sha256/{WANTED}"))
        await asyncio.sleep(0.1)
        assert not request.done()
        await land(store, pulse, plugins, sha256=WANTED)
        response = await request
        assert response.status_code == 200


async def land(
    store: ModuleStore,
    pulse: Pulse,
    plugins: dict[ObjectKey, PluginStatus],
    *,
    sha256: str = "",
    url: str = "",
) -> None:
    """What a fetch that lands does: the module is stored, the resolver (on the next
    reconcile) says the plugin is ready, and the reconcile's pulse wakes waiters."""
    module = await store.put(WASM_HEADER)
    pulse.fire()  # the fetcher's own pulse: the plugin is not ready yet
    await asyncio.sleep(0.05)
    plugins[ObjectKey("default", "a")] = status("a", Ready(module), sha256=sha256, url=url)
    pulse.fire()


async def test_a_cached_module_is_not_served_to_a_plugin_still_waiting_for_its_check(
    tmp_path,
):
    """A pending plugin naming a digest that is cached already (its access or signature
    check is under way) does not open that module to its namespace's downloads."""
    plugins = {ObjectKey("default", "a"): status("a", Pending(), sha256=WANTED)}
    async with (
        admin(tmp_path, plugins=plugins) as (base, store, pulse),
        httpx.AsyncClient(timeout=10) as client,
    ):
        await store.put(WASM_HEADER)
        pulse.fire()
        response = await client.get(f"{base}/modules/sha256/{WANTED}")
        assert response.status_code == 404


async def test_a_stop_does_not_wait_for_module_downloads_still_waiting(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Stopping the admin server closes a download still waiting for its fetch (1 s grace)."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    plugins = {ObjectKey("default", "a"): status("a", Pending(), sha256=WANTED)}
    store, pulse = ModuleStore(tmp_path), Pulse()
    state = AdminState(
        readiness=lambda: Readiness(sources_loaded=True, first_push=True, xds_listening=True),
        sessions=list,
        snapshot=snapshot_of,
        plugins=lambda: plugins,
        problems=tuple,
        delivery="remote",
        store=store,
        metrics=Metrics(),
        module_arrived=pulse,
    )
    server = AdminServer(address=HostPort("127.0.0.1", 0), state=state)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    async with httpx.AsyncClient(timeout=30) as client:
        request = asyncio.create_task(
            client.get(f"http://127.0.0.1:{server.port}/modules/sha256/{WANTED}")
        )
        await asyncio.sleep(0.2)
        assert not request.done()
        begun = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        took = time.monotonic() - begun
        print(f"admin stop with a waiting download took {took:.2f} s")
        # aiohttp's default grace is 60 s and the wait here an hour.
        assert took < 15
        with contextlib.suppress(httpx.HTTPError):
            await request


async def test_module_download_waits_while_the_digest_to_come_is_unknown(tmp_path):
    """An unpinned or OCI fetch may store any digest, and before the first push nothing is known."""
    # An OCI sha256 may be the manifest's digest, so the module's own is unknown until fetched.
    oci = status("a", Pending(), sha256="cd" * 32, url="oci://registry.example/f:v1")
    cases = {
        "unpinned": (True, {ObjectKey("default", "a"): status("a", Pending())}),
        "oci": (True, {ObjectKey("default", "a"): oci}),
        "before-first-push": (False, {}),
    }
    for case, (ready, plugins) in cases.items():
        async with (
            admin(tmp_path / case, ready=ready, plugins=plugins) as (base, store, pulse),
            httpx.AsyncClient(timeout=10) as client,
        ):
            request = asyncio.create_task(client.get(f"{base}/modules/sha256/{WANTED}"))
            await asyncio.sleep(0.1)
            assert not request.done()
            module = await store.put(WASM_HEADER)
            pulse.fire()
            await asyncio.sleep(0.1)
            # Landed but no plugin shows it yet: served only once reconcile says one uses it.
            assert not request.done()
            plugins[ObjectKey("default", "a")] = status("a", Ready(module))
            pulse.fire()
            assert (await request).status_code == 200


async def test_digest_no_fetch_under_way_can_produce_is_a_404_at_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Ready, failed, other-digest and file:// plugins cannot store a digest: 404, no wait."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    module = Module("ab" * 32, tmp_path / "x.wasm", 8)
    plugins = {
        ObjectKey("default", "ready"): status("ready", Ready(module)),
        ObjectKey("default", "failed"): status("failed", FAILED),
        ObjectKey("default", "other"): status("other", Pending(), sha256="cd" * 32),
        ObjectKey("default", "local"): status("local", Pending(), url="file:///etc/f.wasm"),
    }
    async with (
        admin(tmp_path, plugins=plugins) as (base, _, _),
        httpx.AsyncClient(timeout=10) as client,
    ):
        for digest in (WANTED, "0" * 64):
            response = await client.get(f"{base}/modules/sha256/{digest}")
            assert response.status_code == 404
            assert response.text == f"module {digest} is not in the cache\n"


async def test_module_wait_ends_when_the_fetch_fails(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A waiter lets go with a 404 once the fetch it waits for has failed (no module lands)."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    key = ObjectKey("default", "a")
    plugins = {key: status("a", Pending(), sha256=WANTED)}
    async with (
        admin(tmp_path, plugins=plugins) as (base, _, pulse),
        httpx.AsyncClient(timeout=10) as client,
    ):
        request = asyncio.create_task(client.get(f"{base}/modules/sha256/{WANTED}"))
        await asyncio.sleep(0.1)
        assert not request.done()
        plugins[key] = status("a", FAILED, sha256=WANTED)
        pulse.fire()  # what the service does after every reconcile
        assert (await request).status_code == 404


OCI_TAG = "oci://registry.example/filters/f:v1"
OTHER = "0" * 64


def oci_pending(sha256: str = "", url: str = OCI_TAG) -> dict[ObjectKey, PluginStatus]:
    """One plugin whose OCI module is still being fetched for the first time."""
    return {ObjectKey("default", "a"): status("a", Pending(), sha256=sha256, url=url)}


async def test_digest_an_oci_fetch_is_known_to_bring_waits_and_others_are_a_404_at_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A pinned OCI manifest seen before names its module: that digest waits, any other is 404."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    monkeypatch.setattr(downloads, "_UNKNOWN_WAIT", LONG_WAIT)
    manifest = "cd" * 32
    index = ModuleIndex()
    index.record_manifest(manifest, WANTED, len(WASM_HEADER))
    async with (
        admin(tmp_path, plugins=(plugins := oci_pending(sha256=manifest)), index=index) as (
            base,
            store,
            pulse,
        ),
        httpx.AsyncClient(timeout=10) as client,
    ):
        started = time.perf_counter()
        response = await client.get(f"{base}/modules/sha256/{OTHER}")
        elapsed = time.perf_counter() - started
        print(f"unknown digest while a known OCI pull is under way: 404 in {elapsed:.3f} s")
        assert response.status_code == 404
        request = asyncio.create_task(client.get(f"{base}/modules/sha256/{WANTED}"))
        await asyncio.sleep(0.1)
        assert not request.done()
        await land(store, pulse, plugins, sha256=manifest, url=OCI_TAG)
        response = await request
        assert response.status_code == 200
        assert response.content == WASM_HEADER


async def test_digest_an_oci_tag_resolved_to_before_waits_past_the_waiter_cap(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """What a tag last resolved to is known to be coming: it waits even when the cap is full."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    monkeypatch.setattr(downloads, "_UNKNOWN_WAITERS", 0)
    index = ModuleIndex()
    plugins = oci_pending()
    request = plugins[ObjectKey("default", "a")].request
    index.record(request.url, request.sha256, WANTED, len(WASM_HEADER))
    async with (
        admin(tmp_path, plugins=plugins, index=index) as (base, store, pulse),
        httpx.AsyncClient(timeout=10) as client,
    ):
        assert (await client.get(f"{base}/modules/sha256/{OTHER}")).status_code == 404
        waiting = asyncio.create_task(client.get(f"{base}/modules/sha256/{WANTED}"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await land(store, pulse, plugins, url=OCI_TAG)
        assert (await waiting).content == WASM_HEADER


async def test_unknown_digests_wait_briefly_and_only_up_to_the_cap(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """While an OCI pull of unknown result is under way, only _UNKNOWN_WAITERS requests wait."""
    monkeypatch.setattr(downloads, "_UNKNOWN_WAIT", LONG_WAIT)
    monkeypatch.setattr(downloads, "_UNKNOWN_WAITERS", 3)
    plugins = oci_pending()
    digests = [f"{n:064x}" for n in range(1, 5)]
    async with (
        admin(tmp_path, plugins=plugins) as (base, _, pulse),
        httpx.AsyncClient(timeout=10) as client,
    ):
        waiting = [
            asyncio.create_task(client.get(f"{base}/modules/sha256/{d}")) for d in digests[:3]
        ]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in waiting)
        # The cap is full: one more is refused at once (the wait would outlast the client).
        assert (await client.get(f"{base}/modules/sha256/{digests[3]}")).status_code == 404
        # A module that lands wakes the waiters; theirs is still not here, so they wait on.
        pulse.fire()
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in waiting)
        # The pull ends (a reconcile saw it fail): nothing can bring them, all let go.
        plugins[ObjectKey("default", "a")] = status("a", FAILED, url=OCI_TAG)
        pulse.fire()
        for task in waiting:
            assert (await task).status_code == 404
        # Their places are free again.
        plugins[ObjectKey("default", "a")] = status("a", Pending(), url=OCI_TAG)
        pulse.fire()
        again = asyncio.create_task(client.get(f"{base}/modules/sha256/{digests[3]}"))
        await asyncio.sleep(0.1)
        assert not again.done()
        plugins[ObjectKey("default", "a")] = status("a", FAILED, url=OCI_TAG)
        pulse.fire()
        assert (await again).status_code == 404


async def test_unknown_digest_during_an_oci_pull_is_a_404_after_the_short_wait(tmp_path):
    """The reviewer's repro: an unknown digest during a pending OCI pull no longer takes 20 s."""
    async with (
        admin(tmp_path, plugins=oci_pending()) as (base, _, _),
        httpx.AsyncClient(timeout=30) as client,
    ):
        started = time.perf_counter()
        response = await client.get(f"{base}/modules/sha256/{'a' * 64}")
        elapsed = time.perf_counter() - started
        print(
            f"unknown digest during a pending OCI pull: {response.status_code} in {elapsed:.2f} s"
        )
        assert response.status_code == 404
        assert elapsed < downloads._MODULE_WAIT  # the old hold was the full 20 s


def bad_request_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "admin.bad_request" in line]


ATTACKS = [
    b"GE\x01T / HTTP/1.1\r\n\r\n",
    b"GET /\n\x1b[31mFAKE level=error event=forged HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\nforged: x\r\n\r\n",
]


async def send_raw(base: str, raw: bytes) -> bytes:
    """What the admin port answers to ``raw`` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_bad_request_reason_carries_no_control_characters(tmp_path):
    """A refused request's logged reason is one printable line, whatever bytes the client sent."""
    with structlog.testing.capture_logs() as events:
        async with admin(tmp_path) as (base, _, _):
            for raw in ATTACKS:
                assert (await send_raw(base, raw)).startswith(b"HTTP/1.0 400")
    reasons = [e["reason"] for e in events if e["event"] == "admin.bad_request"]
    print(reasons)
    assert len(reasons) == len(ATTACKS)
    for reason in reasons:
        assert reason.isprintable(), reason
    assert "GE\\x01T" in reasons[0]  # the offending bytes stay readable, escaped


async def test_bad_request_is_one_line_in_the_text_log(tmp_path, capsys):
    """Newlines and escape codes a client sends stay escaped: one text-log line per request."""
    configure_logging("info", "text")
    async with admin(tmp_path) as (base, _, _):
        for raw in ATTACKS:
            assert (await send_raw(base, raw)).startswith(b"HTTP/1.0 400")
    err = capsys.readouterr().err
    print(err)
    assert len(bad_request_lines(err)) == len(ATTACKS)
    assert "\x1b" not in err
    assert "\x01" not in err
    for line in err.splitlines():
        assert "admin.bad_request" in line or "admin.listening" in line, line


async def test_bad_request_log_is_rate_limited_with_a_count_of_the_rest(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A flood of bad requests logs _BAD_REQUEST_LINES lines, then one line counting the rest."""
    monkeypatch.setattr(admin_server, "_BAD_REQUEST_LINES", 5)
    monkeypatch.setattr(admin_server, "_BAD_REQUEST_WINDOW", 3.0)
    sent = 40
    with structlog.testing.capture_logs() as events:
        async with admin(tmp_path) as (base, _, _):
            await asyncio.gather(*(send_raw(base, ATTACKS[0]) for _ in range(sent)))
            for _ in range(100):  # the count comes when the window ends
                if any(e["event"] == "admin.bad_requests_not_logged" for e in events):
                    break
                await asyncio.sleep(0.1)
    logged = [e for e in events if e["event"] == "admin.bad_request"]
    summaries = [e for e in events if e["event"] == "admin.bad_requests_not_logged"]
    print(f"{sent} bad requests: {len(logged)} lines, summaries {[s['count'] for s in summaries]}")
    assert summaries
    assert len(logged) < sent
    assert len(logged) + sum(s["count"] for s in summaries) == sent


MALFORMED = {
    "trailing-newline": f"{WANTED}%0A",  # was a 500 with a traceback
    "trailing-crlf": f"{WANTED}%0D%0A",
    "trailing-nul": f"{WANTED}%00",
    "uppercase": WANTED.upper(),
    "63-hex": WANTED[:-1],
    "65-hex": f"{WANTED}0",
    "file-name": f"{WANTED}.wasm",
    "encoded-traversal": "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "encoded-slashes": "..%2F..%2F..%2Fetc%2Fpasswd",
    "not-hex": "g" * 64,
    "8000-chars": "a" * 8000,
}


@pytest.mark.parametrize("digest", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_digest_is_a_404_at_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch, digest: str
):
    """Anything but 64 lowercase hex is a 404 saying so, even while any digest could arrive."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", LONG_WAIT)
    plugins = {ObjectKey("default", "a"): status("a", Pending())}
    async with (
        admin(tmp_path, plugins=plugins) as (base, _, _),
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(f"{base}/modules/sha256/{digest}")
        assert response.status_code == 404
        assert response.text == "not a sha256 digest (64 lowercase hex characters)\n"


async def test_raw_traversal_and_oversized_request_lines_are_refused(tmp_path):
    """Unnormalised ../ paths reach no file, and a request line past aiohttp's limit is a 400."""
    secret = tmp_path / "secret.wasm"
    secret.write_bytes(WASM_HEADER)
    async with admin(tmp_path / "cache") as (base, _, _):
        port = int(base.rsplit(":", 1)[1])
        for target, expected in (
            ("/modules/sha256/../../../../../../../../etc/passwd", b"404"),
            (f"/modules/sha256/..%2F..%2F..%2F{secret}", b"404"),
            ("/modules/sha256/../../secret.wasm", b"404"),
            ("/modules/sha256/" + "a" * 20000, b"400"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.split(b" ", 2)[1] == expected, answer
            assert b"root:" not in answer
            assert WASM_HEADER not in answer


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
