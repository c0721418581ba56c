"""Module unavailable after an edit: the last good version (module and config) stays served."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from google.protobuf import wrappers_pb2
from prometheus_client import generate_latest

from tests.factories import make_plugin
from tests.modules.conftest import WASM, ModuleServer
from tests.reconcile.test_reconcile import NODE, Harness
from wasmxds.admin.views import plugins_view
from wasmxds.api.objects import ObjectKey, WasmPlugin
from wasmxds.backoff import Backoff
from wasmxds.cli.status import print_why
from wasmxds.errors import ChecksumMismatchError, FetchError
from wasmxds.metrics import Metrics
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.purge import CachePurger
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, Module, Pending, Ready
from wasmxds.reconcile import Reconciler, Serving
from wasmxds.reconcile.kubestatus import ModuleReadiness, ObservedObject, desired_status
from wasmxds.reconcile.reports import plugin_reports
from wasmxds.sources.state import SourceState
from wasmxds.translate.filters import StandIn
from wasmxds.translate.plugins import InlineDelivery, LocalDelivery
from wasmxds.translate.typeurls import HTTP_RBAC, HTTP_WASM
from wasmxds.xds.snapshot import Snapshot

GOOD = "http://m/good.wasm"
TYPO = "http://m/typo.wasm"
NOT_FOUND = Failed(FetchError(f"{TYPO}: HTTP 404 Not Found"), attempts=1, next_retry_in=0.5)


def version(tag: str, url: str = GOOD) -> WasmPlugin:
    return make_plugin("a", url=url, pluginConfig={"response_headers": {"x-v": tag}})


def collect(published: list[Snapshot]) -> Callable[[Snapshot], int]:
    def publish(snapshot: Snapshot) -> int:
        published.append(snapshot)
        return 0

    return publish


def served_wasm(h: Harness | Snapshot, name: str = "default.a") -> http_wasm_pb2.Wasm:
    """The Wasm filter the latest snapshot gives proxies for ``name``."""
    snapshot = h if isinstance(h, Snapshot) else h.snapshot
    resource = snapshot.ecds_for(NODE, name)
    assert resource is not None
    config = resource.message
    assert isinstance(config, extension_pb2.TypedExtensionConfig)
    assert config.typed_config.type_url == HTTP_WASM, config.typed_config.type_url
    wasm = http_wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    return wasm


def served_config(h: Harness | Snapshot) -> str:
    value = wrappers_pb2.StringValue()
    served_wasm(h).config.configuration.Unpack(value)
    return value.value


async def good_then_typo(h: Harness) -> Module:
    """Serve version v1 from GOOD, then edit it to v2 at TYPO, which 404s."""
    h.modules.ready(GOOD, "11" * 32)
    await h.reconciler.reconcile()
    h.set(version("v2", TYPO))
    h.modules.outcomes[TYPO] = NOT_FOUND
    await h.reconciler.reconcile()
    outcome = h.modules.outcomes[GOOD]
    assert isinstance(outcome, Ready)
    assert isinstance(outcome.module, Module)
    return outcome.module


async def test_failed_edit_keeps_serving_module_and_config_of_the_last_good_version():
    """An edit whose module 404s serves exactly the earlier resource, not the stand-in."""
    h = Harness(version("v1"))
    h.modules.ready(GOOD, "11" * 32)
    await h.reconciler.reconcile()
    before = h.snapshot.ecds["default.a"].active
    h.set(version("v2", TYPO))
    h.modules.outcomes[TYPO] = NOT_FOUND
    await h.reconciler.reconcile()
    assert h.snapshot.ecds["default.a"].active.message == before.message
    assert "1111" * 16 in served_wasm(h).config.vm_config.code.local.filename
    assert '"v1"' in served_config(h)
    status = h.reconciler.status[version("v2", TYPO).key]
    assert status.serving is Serving.LAST_GOOD
    assert status.outcome == NOT_FOUND
    assert status.served is not None
    assert status.served.plugin.spec.url == GOOD


async def test_last_good_module_stays_retained_while_served():
    """The resolver is told the last good module is in use, so the purge keeps it."""
    h = Harness(version("v1"))
    module = await good_then_typo(h)
    assert [r.url for r in h.modules.retained] == [TYPO]
    assert h.modules.in_use == [module]
    assert h.reconciler.status[version("v1").key].served_module == module


async def test_edit_applies_by_itself_once_its_module_is_good():
    """When the failing module becomes available, the edit (module and config) replaces it."""
    h = Harness(version("v1"))
    await good_then_typo(h)
    h.modules.ready(TYPO, "22" * 32)
    await h.reconciler.reconcile()
    assert "2222" * 16 in served_wasm(h).config.vm_config.code.local.filename
    assert '"v2"' in served_config(h)
    assert h.reconciler.status[version("v2").key].serving is Serving.FILTER


async def test_later_failing_edits_keep_the_same_last_good_version():
    """A pending edit, then two failed edits in a row, keep serving v1; a good edit replaces it."""
    h = Harness(version("v1"))
    h.modules.ready(GOOD, "11" * 32)
    await h.reconciler.reconcile()
    h.set(version("v2", "http://m/slow.wasm"))
    await h.reconciler.reconcile()  # pending
    assert '"v1"' in served_config(h)
    assert h.reconciler.status[version("v2").key].serving is Serving.LAST_GOOD
    h.modules.outcomes["http://m/slow.wasm"] = Failed(
        ChecksumMismatchError("sha256 mismatch"), attempts=1, next_retry_in=1.0
    )
    await h.reconciler.reconcile()
    assert '"v1"' in served_config(h)
    h.set(version("v3", TYPO))
    h.modules.outcomes[TYPO] = NOT_FOUND
    await h.reconciler.reconcile()
    assert '"v1"' in served_config(h)
    h.set(version("v4", GOOD))
    await h.reconciler.reconcile()
    assert '"v4"' in served_config(h)
    assert h.reconciler.status[version("v4").key].serving is Serving.FILTER


async def test_plugin_without_a_good_version_gets_the_standin():
    """A plugin that never had a good version is served the fail-strategy stand-in, as before."""
    h = Harness(version("v1", TYPO))
    h.modules.outcomes[TYPO] = NOT_FOUND
    await h.reconciler.reconcile()
    resource = h.snapshot.ecds_for(NODE, "default.a")
    assert resource is not None
    assert isinstance(resource.message, extension_pb2.TypedExtensionConfig)
    assert resource.message.typed_config.type_url == HTTP_RBAC
    status = h.reconciler.status[version("v1").key]
    assert status.serving is Serving.STANDIN
    assert status.served is not None
    assert status.served.standin is StandIn.DENY_ALL


async def test_deleted_plugin_forgets_its_last_good_version():
    """Re-creating a deleted plugin after the grace with a bad module gives the stand-in."""
    now = [0.0]
    h = Harness(version("v1"), clock=lambda: now[0])
    h.modules.ready(GOOD, "11" * 32)
    await h.reconciler.reconcile()
    h.set()
    await h.reconciler.reconcile()
    now[0] = 61.0  # past the 60 s grace that covers moving a plugin between files
    h.set(version("v2", TYPO))
    h.modules.outcomes[TYPO] = NOT_FOUND
    await h.reconciler.reconcile()
    assert h.reconciler.status[version("v2").key].serving is Serving.STANDIN


async def test_failure_is_reported_with_what_is_served():
    """Debug view, status report, Ready condition and metrics all say: failed, last good served."""
    metrics = Metrics()
    h = Harness(version("v1"))
    h.reconciler = Reconciler(
        sources=[lambda: h.state],
        resolver=h.modules,
        delivery=LocalDelivery(Path("/cache"), Path("/cache")),
        runtime="envoy.wasm.runtime.v8",
        publish=collect(h.published),
        root_namespace="istio-system",
        metrics=metrics,
    )
    await good_then_typo(h)
    key = version("v2").key

    [view] = plugins_view(h.reconciler.status, h.snapshot, [], "local")
    assert (view["served"], view["module"]["state"]) == ("last_good", "failed")
    assert "404" in view["module"]["error"]
    assert view["standin"] is None
    assert view["last_good"] == {
        "url": GOOD,
        "digest": "11" * 32,
        "size": 8,
        "reason": str(NOT_FOUND.error),
    }

    report = plugin_reports(h.reconciler.status, [], h.snapshot)[key]
    assert (report.state, report.last_good) == (ModuleReadiness.UNAVAILABLE, True)
    patch, _ = desired_status(ObservedObject(key, generation=2), report)
    [condition] = patch["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "ModuleUnavailable")
    assert "404" in condition["message"]
    assert "last good version" in condition["message"]
    assert "stand-in" not in condition["message"]

    scraped = generate_latest(metrics.registry).decode()
    assert 'wasmxds_plugins{module="failed",served="last_good"} 1.0' in scraped


# ------------------------------------------------------- with the real resolver and purge


@contextlib.asynccontextmanager
async def real_modules(cache: Path) -> AsyncIterator[tuple[ModuleResolver, CachePurger]]:
    """A running ModuleResolver over a real HttpFetcher and store, and a purger that expires all."""
    store = ModuleStore(cache)
    index = ModuleIndex()
    settings = FetcherSettings(tries=1, backoff=Backoff(initial=0.001, max=0.001))
    async with HttpFetcher(store=store, settings=settings) as fetcher:
        resolver = ModuleResolver(
            store=store,
            fetchers={"http": fetcher},
            on_change=lambda: None,
            retry=Backoff(initial=0.01, factor=2.0, max=0.05),
            index=index,
        )
        purger = CachePurger(store=store, index=index, in_use=resolver.in_use, expiry=0.0)
        task = asyncio.create_task(resolver.run())
        try:
            yield resolver, purger
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def settle(reconciler: Reconciler, key: ObjectKey, outcome: type) -> None:
    """Reconcile until the plugin's module outcome is an ``outcome`` (guarded against hangs)."""
    async with asyncio.timeout(10):
        while True:
            await reconciler.reconcile()
            status = reconciler.status.get(key)
            if status is not None and isinstance(status.outcome, outcome):
                return
            await asyncio.sleep(0.01)


async def test_purge_keeps_the_last_good_module_and_a_retry_applies_the_edit(tmp_path):
    """Real fetches: a 404 edit keeps v1 served and on disk through a purge; a retry applies v2."""
    server = ModuleServer()
    await server.start()
    try:
        await _purge_keeps_the_last_good_module(tmp_path, server)
    finally:
        await server.stop()


async def _purge_keeps_the_last_good_module(tmp_path: Path, server: ModuleServer) -> None:
    good_url = server.serve("/good.wasm", WASM)
    typo_url = server.url("/typo.wasm")
    state = SourceState({})
    published: list[Snapshot] = []
    async with real_modules(tmp_path / "cache") as (resolver, purger):
        reconciler = Reconciler(
            sources=[lambda: state],
            resolver=resolver,
            delivery=LocalDelivery(tmp_path / "cache", tmp_path / "cache"),
            runtime="envoy.wasm.runtime.v8",
            publish=collect(published),
            root_namespace="istio-system",
        )
        v1 = version("v1", good_url)
        state = SourceState({v1.key: v1})
        await settle(reconciler, v1.key, Ready)
        served = reconciler.status[v1.key].served_module
        assert served is not None
        assert served.digest == hashlib.sha256(WASM).hexdigest()

        v2 = version("v2", typo_url)
        state = SourceState({v2.key: v2})
        await settle(reconciler, v2.key, Failed)
        report = await purger.purge()
        assert served.path.exists(), f"purged the served module: {report}"
        assert reconciler.status[v2.key].serving is Serving.LAST_GOOD

        attempts = server.hits["/typo.wasm"]
        server.serve("/typo.wasm", WASM + b"\x00\x00")
        await settle(reconciler, v2.key, Ready)
        assert server.hits["/typo.wasm"] > attempts
        assert reconciler.status[v2.key].serving is Serving.FILTER
        assert '"v2"' in served_config(published[-1])
        await purger.purge()
        assert not served.path.exists()  # no longer served: expired at once (expiry 0)


async def test_pending_outcome_is_not_mistaken_for_a_failure():
    """A new plugin whose module is still pending is not served (no stand-in, no last good)."""
    h = Harness(version("v1"))
    h.modules.outcomes[GOOD] = Pending()
    await h.reconciler.reconcile()
    assert h.reconciler.status[version("v1").key].serving is Serving.NOT_YET


async def test_module_too_large_for_inline_delivery_keeps_the_last_good_version(tmp_path, capsys):
    """A fetched module the delivery mode cannot carry is unavailable too: v1 stays, with why."""
    small, large = tmp_path / "small.wasm", tmp_path / "large.wasm"
    small.write_bytes(WASM)
    large.write_bytes(WASM + bytes(200))
    h = Harness(version("v1"))
    h.reconciler = Reconciler(
        sources=[lambda: h.state],
        resolver=h.modules,
        delivery=InlineDelivery(max_size=100),
        runtime="envoy.wasm.runtime.v8",
        publish=collect(h.published),
        root_namespace="istio-system",
    )
    h.modules.outcomes[GOOD] = Ready(Module("11" * 32, small, len(WASM)))
    await h.reconciler.reconcile()
    h.set(version("v2", "http://m/large.wasm"))
    h.modules.outcomes["http://m/large.wasm"] = Ready(Module("22" * 32, large, 208))
    await h.reconciler.reconcile()
    assert served_wasm(h).config.vm_config.code.local.inline_bytes == WASM
    assert '"v1"' in served_config(h)
    status = h.reconciler.status[version("v2").key]
    assert status.serving is Serving.LAST_GOOD
    assert "inline delivery takes at most 100" in status.unavailable
    report = plugin_reports(h.reconciler.status, [], h.snapshot)[status.plugin.key]
    assert (report.state, report.last_good) == (ModuleReadiness.UNAVAILABLE, True)
    assert "inline delivery" in report.error
    # Nothing retries a module that is too large: the status says what to do instead.
    patch, _ = desired_status(ObservedObject(status.plugin.key, generation=2), report)
    [condition] = patch["status"]["conditions"]
    assert "--inline-max-size" in condition["message"]
    assert "retried" not in condition["message"]
    assert "until this one's module is fetched" not in condition["message"]
    # `wasmxds plugins` prints why, although the module itself is fetched (no module error).
    [view] = plugins_view(h.reconciler.status, h.snapshot, [], "inline")
    assert view["module"]["error"] is None
    capsys.readouterr()  # the reconciles' log lines
    print_why(view)
    line = capsys.readouterr().out
    assert line.startswith("default/a: module 222222222222 is 208 bytes; inline delivery takes")
    assert "proxies keep the last good version, http://m/good.wasm sha256:111111111111" in line
    assert "raise --inline-max-size" in line
