"""The last good version survives a restart: ``<cache>/last-good.json`` (and its limits)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog.testing

from tests.factories import make_plugin
from tests.modules.conftest import WASM
from tests.reconcile.test_last_good import GOOD, NOT_FOUND, TYPO, collect, served_config, version
from tests.reconcile.test_last_good import served_wasm as served_wasm_of
from tests.reconcile.test_reconcile import FakeModules
from wasmxds.api.objects import WasmPlugin
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.purge import CachePurger
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, Module, Pending, Ready
from wasmxds.reconcile import Reconciler, Serving
from wasmxds.reconcile.last_good import LAST_GOOD_FILE, LastGoodFile
from wasmxds.sources.state import SourceState
from wasmxds.translate.filters import StandIn
from wasmxds.translate.plugins import Delivery, InlineDelivery, LocalDelivery
from wasmxds.translate.typeurls import TYPED_EXTENSION_CONFIG
from wasmxds.xds.snapshot import Snapshot

DIGEST = hashlib.sha256(WASM).hexdigest()


class Replica:
    """One server process over ``cache``: a Reconciler with the persisted file and the store."""

    def __init__(
        self,
        cache: Path,
        *plugins: WasmPlugin,
        delivery: Delivery | None = None,
        loaded: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.cache = cache
        self.store = ModuleStore(cache)
        self.modules = FakeModules()
        self.state = SourceState({p.key: p for p in plugins})
        self.published: list[Snapshot] = []
        self.saved = LastGoodFile.load(cache / LAST_GOOD_FILE)
        self.reconciler = Reconciler(
            sources=[lambda: self.state],
            resolver=self.modules,
            delivery=delivery or LocalDelivery(cache, cache),
            runtime="envoy.wasm.runtime.v8",
            publish=collect(self.published),
            root_namespace="istio-system",
            saved=self.saved,
            find_module=self.store.get,
            sources_loaded=loaded,
            clock=clock,
        )

    def set(self, *plugins: WasmPlugin) -> None:
        self.state = SourceState({p.key: p for p in plugins})

    def serving(self, plugin: WasmPlugin) -> Serving:
        return self.reconciler.status[plugin.key].serving

    @property
    def snapshot(self) -> Snapshot:
        return self.published[-1]


async def store_module(cache: Path, data: bytes = WASM) -> Module:
    return await ModuleStore(cache).put(data)


async def served_v1_then_failing_v2(cache: Path, **kwargs: object) -> Module:
    """A first process serves v1 from GOOD, then the edit to v2 at TYPO 404s."""
    module = await store_module(cache)
    first = Replica(cache, version("v1"), **kwargs)  # type: ignore[arg-type]
    first.modules.outcomes[GOOD] = Ready(module)
    await first.reconciler.reconcile()
    first.set(version("v2", TYPO))
    first.modules.outcomes[TYPO] = NOT_FOUND
    await first.reconciler.reconcile()
    assert first.serving(version("v2")) is Serving.LAST_GOOD
    return module


def saved_entries(cache: Path) -> dict[str, dict[str, object]]:
    document = json.loads((cache / LAST_GOOD_FILE).read_text())
    plugins: dict[str, dict[str, object]] = document["plugins"]
    return plugins


async def test_restart_with_a_failing_edit_serves_the_persisted_last_good_version(tmp_path):
    """A new Reconciler over the same cache serves v1 (module and config), not the stand-in."""
    module = await served_v1_then_failing_v2(tmp_path)
    entry = saved_entries(tmp_path)["default.a"]
    assert (entry["module"], entry["url"]) == (DIGEST, GOOD)

    restarted = Replica(tmp_path, version("v2", TYPO))
    restarted.modules.outcomes[TYPO] = NOT_FOUND
    await restarted.reconciler.reconcile()
    assert restarted.serving(version("v2")) is Serving.LAST_GOOD
    assert served_wasm_of(restarted.snapshot).config.vm_config.code.local.filename == str(
        module.path
    )
    assert '"v1"' in served_config(restarted.snapshot)
    status = restarted.reconciler.status[version("v2").key]
    assert status.served_module == module
    assert "404" in status.unavailable
    # The restarted process tells the resolver the module is in use, so the purge keeps it.
    assert [m.digest for m in restarted.modules.in_use] == [DIGEST]


async def test_new_replica_serves_what_the_others_serve_while_its_module_is_pending(tmp_path):
    """Restart while the edit's fetch is still pending: v1 is served at once (make before break)."""
    await served_v1_then_failing_v2(tmp_path)
    restarted = Replica(tmp_path, version("v2", TYPO))
    restarted.modules.outcomes[TYPO] = Pending()
    await restarted.reconciler.reconcile()
    assert restarted.serving(version("v2")) is Serving.LAST_GOOD
    assert '"v1"' in served_config(restarted.snapshot)
    assert not restarted.snapshot.is_pending(TYPED_EXTENSION_CONFIG, "default.a")


async def test_restart_without_the_file_gets_the_standin(tmp_path):
    """The control: the same restart with the file gone serves the deny-all stand-in."""
    await served_v1_then_failing_v2(tmp_path)
    (tmp_path / LAST_GOOD_FILE).unlink()
    restarted = Replica(tmp_path, version("v2", TYPO))
    restarted.modules.outcomes[TYPO] = NOT_FOUND
    await restarted.reconciler.reconcile()
    status = restarted.reconciler.status[version("v2").key]
    assert status.serving is Serving.STANDIN
    assert status.served is not None
    assert status.served.standin is StandIn.DENY_ALL


async def test_persisted_module_gone_from_the_cache_is_dropped_with_a_warning(tmp_path):
    """Someone emptied the cache: the stand-in is served, the entry leaves the file."""
    module = await served_v1_then_failing_v2(tmp_path)
    module.path.unlink()
    restarted = Replica(tmp_path, version("v2", TYPO))
    restarted.modules.outcomes[TYPO] = NOT_FOUND
    with structlog.testing.capture_logs() as logs:
        await restarted.reconciler.reconcile()
    assert restarted.serving(version("v2")) is Serving.STANDIN
    [missing] = [e for e in logs if e["event"] == "reconcile.last_good_module_missing"]
    assert (missing["plugin"], missing["digest"]) == ("default/a", DIGEST)
    assert saved_entries(tmp_path) == {}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b'{"version": 99, "plugins": {}}', b"[]", b'{"version": 1}'],
    ids=["syntax", "not-utf8", "version", "not-object", "no-plugins"],
)
async def test_corrupt_file_is_logged_and_ignored(tmp_path, content):
    """A corrupt file never stops the server: a warning, the stand-in, a good file written back."""
    await served_v1_then_failing_v2(tmp_path)
    (tmp_path / LAST_GOOD_FILE).write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        restarted = Replica(tmp_path, version("v1"))
        restarted.modules.outcomes[GOOD] = Ready(await store_module(tmp_path))
        await restarted.reconciler.reconcile()
    events = {e["event"] for e in logs}
    assert events & {"reconcile.last_good_corrupt", "reconcile.last_good_unreadable"}, events
    assert restarted.serving(version("v1")) is Serving.FILTER
    assert saved_entries(tmp_path)["default.a"]["module"] == DIGEST


async def test_bad_entry_is_skipped_and_the_others_kept(tmp_path):
    """One mangled entry is dropped with a warning; another plugin's entry still serves."""
    module = await store_module(tmp_path)
    other = make_plugin("b", url=GOOD, pluginConfig={"response_headers": {"x-v": "v1"}})
    first = Replica(tmp_path, version("v1"), other)
    first.modules.outcomes[GOOD] = Ready(module)
    await first.reconciler.reconcile()
    document = json.loads((tmp_path / LAST_GOOD_FILE).read_text())
    assert set(document["plugins"]) == {"default.a", "default.b"}
    document["plugins"]["default.a"]["spec"] = "%%% not base64"
    (tmp_path / LAST_GOOD_FILE).write_text(json.dumps(document))

    failing_b = make_plugin("b", url=TYPO, pluginConfig={"response_headers": {"x-v": "v2"}})
    with structlog.testing.capture_logs() as logs:
        restarted = Replica(tmp_path, version("v2", TYPO), failing_b)
    restarted.modules.outcomes[TYPO] = NOT_FOUND
    await restarted.reconciler.reconcile()
    [skipped] = [e for e in logs if e["event"] == "reconcile.last_good_entry_skipped"]
    assert skipped["resource"] == "default.a"
    assert restarted.serving(version("v2")) is Serving.STANDIN
    assert restarted.serving(failing_b) is Serving.LAST_GOOD


async def test_nothing_is_forgotten_before_the_sources_have_loaded(tmp_path):
    """A restart's first reconciles see no plugins yet: the file keeps every entry."""
    await served_v1_then_failing_v2(tmp_path)
    loaded = [False]
    restarted = Replica(tmp_path, loaded=lambda: loaded[0])
    for _ in range(3):
        await restarted.reconciler.reconcile()
    assert set(saved_entries(tmp_path)) == {"default.a"}
    loaded[0] = True
    restarted.set(version("v2", TYPO))
    restarted.modules.outcomes[TYPO] = NOT_FOUND
    await restarted.reconciler.reconcile()
    assert restarted.serving(version("v2")) is Serving.LAST_GOOD


async def test_plugin_moved_between_files_keeps_its_last_good_version(tmp_path):
    """Gone for one reconcile (cut from one file), back later (pasted in another): v1 stays."""
    now = [0.0]
    module = await store_module(tmp_path)
    replica = Replica(tmp_path, version("v1"), clock=lambda: now[0])
    replica.modules.outcomes[GOOD] = Ready(module)
    await replica.reconciler.reconcile()
    replica.set(version("v2", TYPO))
    replica.modules.outcomes[TYPO] = NOT_FOUND
    await replica.reconciler.reconcile()
    replica.set()  # removed from a.yaml ...
    await replica.reconciler.reconcile()
    assert set(saved_entries(tmp_path)) == {"default.a"}
    now[0] = 30.0
    replica.set(version("v2", TYPO))  # ... and added to b.yaml half a minute later
    await replica.reconciler.reconcile()
    assert replica.serving(version("v2")) is Serving.LAST_GOOD
    assert replica.reconciler.status[version("v2").key].served_module == module
    assert '"v1"' in served_config(replica.snapshot)


async def test_deleted_plugin_leaves_the_file_after_the_grace(tmp_path):
    """Only current plugins stay in the file: a deleted one is gone once the grace has passed."""
    now = [0.0]
    await served_v1_then_failing_v2(tmp_path, clock=lambda: now[0])
    replica = Replica(tmp_path, clock=lambda: now[0])
    await replica.reconciler.reconcile()
    assert set(saved_entries(tmp_path)) == {"default.a"}
    now[0] = 61.0
    await replica.reconciler.reconcile()
    assert saved_entries(tmp_path) == {}
    assert replica.reconciler.kept_modules() == set()
    replica.set(version("v2", TYPO))
    replica.modules.outcomes[TYPO] = NOT_FOUND
    await replica.reconciler.reconcile()
    assert replica.serving(version("v2")) is Serving.STANDIN


async def test_purge_keeps_persisted_modules_before_the_first_reconcile(tmp_path):
    """The purge (expiry 0) runs before any reconcile: the persisted last good module stays."""
    module = await served_v1_then_failing_v2(tmp_path)
    unused = await store_module(tmp_path, WASM + b"\x00")
    restarted = Replica(tmp_path)
    purger = CachePurger(
        store=ModuleStore(tmp_path),
        index=ModuleIndex(),
        in_use=restarted.reconciler.kept_modules,
        expiry=0.0,
    )
    report = await purger.purge()
    assert report.expired == (unused.digest,)
    assert module.path.exists()


async def test_inline_delivery_rebuilds_the_bytes_from_the_cache(tmp_path):
    """With inline delivery the restarted process reads the module back into the resource."""
    await served_v1_then_failing_v2(tmp_path, delivery=InlineDelivery(max_size=1024))
    restarted = Replica(tmp_path, version("v2", TYPO), delivery=InlineDelivery(max_size=1024))
    restarted.modules.outcomes[TYPO] = Failed(NOT_FOUND.error, attempts=3, next_retry_in=1.0)
    await restarted.reconciler.reconcile()
    assert restarted.serving(version("v2")) is Serving.LAST_GOOD
    assert served_wasm_of(restarted.snapshot).config.vm_config.code.local.inline_bytes == WASM


async def test_file_is_written_only_when_the_last_good_versions_change(tmp_path):
    """Reconciles that change nothing do not rewrite the file; it is private to the owner."""
    await served_v1_then_failing_v2(tmp_path)
    path = tmp_path / LAST_GOOD_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    path.touch()
    touched = path.stat().st_mtime_ns
    replica = Replica(tmp_path, version("v2", TYPO))
    replica.modules.outcomes[TYPO] = NOT_FOUND
    for _ in range(3):
        await replica.reconciler.reconcile()
    assert path.stat().st_mtime_ns == touched
