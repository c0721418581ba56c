"""Modules are written to the store as they arrive, not gathered in memory first.

The memory figures are Python allocations traced while one fetch runs (the
servers run in other processes, so only the fetching side is measured).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.modules.conftest import BIG, PEAK_BOUND, big_wasm, temporaries, traced_peak
from wasmxds.errors import ModuleTooLargeError
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``directory`` in a child process; yields its base URL."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            child.poll()
            assert child.returncode is None, "http.server exited"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(timeout=10)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    served = tmp_path / "served"
    served.mkdir()
    return served


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[HttpFetcher, ModuleStore]]:
    store = ModuleStore(tmp_path / "cache")
    settings = FetcherSettings(tries=1, max_size=64 << 20)
    async with HttpFetcher(store=store, settings=settings) as fetcher:
        yield fetcher, store


async def test_a_large_http_module_is_streamed_to_the_store(
    files: Path, http: tuple[HttpFetcher, ModuleStore]
) -> None:
    """A 48 MiB module reaches the store with its digest while the fetch allocates a few MiB."""
    fetcher, store = http
    big = big_wasm()
    (files / "big.wasm").write_bytes(big)
    digest = hashlib.sha256(big).hexdigest()
    del big  # not part of what the fetch holds
    with static_server(files) as base:
        request = ModuleRequest(url=f"{base}/big.wasm", sha256=digest)
        fetched, peak = await traced_peak(lambda: fetcher.fetch(request))
    print(f"\nhttp: {BIG >> 20} MiB module fetched with a peak of {peak / (1 << 20):.1f} MiB")
    assert fetched.module.digest == digest
    assert fetched.module.path == store.path_for(digest)
    assert fetched.module.size == BIG
    assert peak < PEAK_BOUND
    assert temporaries(store) == []


async def test_a_gzipped_http_module_is_still_unboxed_from_the_file(
    files: Path, http: tuple[HttpFetcher, ModuleStore]
) -> None:
    """A module published as .wasm.gz is inflated from the downloaded file and stored unboxed."""
    fetcher, store = http
    module = b"\0asm\x01\x00\x00\x00" + b"custom" * 1000
    (files / "m.wasm.gz").write_bytes(gzip.compress(module))
    with static_server(files) as base:
        fetched = await fetcher.fetch(ModuleRequest(url=f"{base}/m.wasm.gz"))
    assert fetched.module.path.read_bytes() == module
    assert temporaries(store) == []


async def test_a_gzip_bomb_is_refused_and_leaves_no_file(
    files: Path, http: tuple[HttpFetcher, ModuleStore]
) -> None:
    """A small gzip that inflates past the cap is refused, and its download is removed."""
    fetcher, store = http
    (files / "bomb.wasm.gz").write_bytes(gzip.compress(bytes(65 << 20)))
    with static_server(files) as base:
        url = f"{base}/bomb.wasm.gz"
        with pytest.raises(ModuleTooLargeError, match=r"^http://.*bomb\.wasm\.gz: gzip layer"):
            await fetcher.fetch(ModuleRequest(url=url))
    assert temporaries(store) == []


async def test_a_body_over_the_cap_leaves_no_file(
    files: Path, tmp_path: Path, http: tuple[HttpFetcher, ModuleStore]
) -> None:
    """A body refused part way (no Content-Length to refuse it up front) leaves no temporary."""
    _, store = http
    (files / "big.wasm").write_bytes(big_wasm())
    small = FetcherSettings(tries=1, max_size=1 << 20)
    async with HttpFetcher(store=store, settings=small) as fetcher:
        with static_server(files) as base, pytest.raises(ModuleTooLargeError, match="limit"):
            await fetcher.fetch(ModuleRequest(url=f"{base}/big.wasm"))
    assert temporaries(store) == []
