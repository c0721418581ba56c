"""Cache purge: expiry, size-limited LRU eviction, and modules in use are never deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.modules.conftest import WASM
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.purge import CachePurger
from wasmxds.modules.store import ModuleStore

HOUR = 3600.0


async def stored(
    store: ModuleStore, index: ModuleIndex, count: int, *, size: int = 100
) -> list[str]:
    digests = []
    for i in range(count):
        module = await store.put(WASM + bytes([i]) * size)
        index.record(f"http://m/{i}.wasm", "", module.digest, module.size)
        digests.append(module.digest)
    return digests


async def test_expired_modules_go_but_used_ones_stay(tmp_path: Path) -> None:
    """Unused past the expiry is deleted; recently used and in-use modules stay."""
    now = [10 * HOUR]
    store, index = ModuleStore(tmp_path), ModuleIndex(clock=lambda: now[0])
    old, recent, protected = await stored(store, index, 3)
    now[0] += 25 * HOUR
    index.touch([(recent, 1)])  # a snapshot referenced it just now
    purger = CachePurger(
        store=store, index=index, in_use=lambda: {protected}, expiry=24 * HOUR, clock=lambda: now[0]
    )
    report = await purger.purge()
    assert report.expired == (old,)
    assert store.get(old) is None
    assert store.get(recent) is not None
    assert store.get(protected) is not None
    assert index.ref("http://m/0.wasm", "") is None


async def test_size_limit_evicts_least_recently_used(tmp_path: Path) -> None:
    """Over --cache-max-bytes, the least recently used go first; in-use ones never do."""
    clock = [0.0]
    store, index = ModuleStore(tmp_path), ModuleIndex(clock=lambda: clock[0])
    digests = []
    for i in range(4):
        clock[0] = 100.0 * (i + 1)
        digests += await stored(store, index, 1, size=100 + i)
    sizes = {d: store.get(d).size for d in digests}  # type: ignore[union-attr]
    limit = sizes[digests[2]] + sizes[digests[3]] + sizes[digests[0]]
    purger = CachePurger(
        store=store,
        index=index,
        in_use=lambda: {digests[0]},
        expiry=24 * HOUR,
        max_bytes=limit,
        clock=lambda: 1000.0,
    )
    report = await purger.purge()
    assert report.evicted == (digests[1],)
    assert [store.get(d) is not None for d in digests] == [True, False, True, True]
    assert report.kept_bytes <= limit


async def test_in_use_modules_survive_even_over_the_limit(tmp_path: Path) -> None:
    """When only referenced modules remain, the cache stays over the limit (and says so)."""
    store, index = ModuleStore(tmp_path), ModuleIndex()
    digests = await stored(store, index, 2)
    purger = CachePurger(
        store=store,
        index=index,
        in_use=lambda: set(digests),
        expiry=1.0,
        max_bytes=1,
        clock=lambda: time.time() + 10 * HOUR,
    )
    report = await purger.purge()
    assert report.evicted == report.expired == ()
    assert all(store.get(d) is not None for d in digests)


async def test_unindexed_files_age_by_mtime_and_temporaries_are_cleaned(tmp_path: Path) -> None:
    """A module the index never heard of ages from its file time; crash leftovers go."""
    store, index = ModuleStore(tmp_path), ModuleIndex()
    module = await store.put(WASM)
    old = time.time() - 48 * HOUR
    os.utime(module.path, (old, old))
    leftover = module.path.parent / ".tmp-crashed.wasm"
    leftover.write_bytes(b"partial")
    os.utime(leftover, (old, old))
    purger = CachePurger(store=store, index=index, in_use=set, expiry=24 * HOUR)
    report = await purger.purge()
    assert report.expired == (module.digest,)
    assert not leftover.exists()
