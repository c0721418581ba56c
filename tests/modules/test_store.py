"""The content-addressed module store: layout, permissions, atomicity, idempotence."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.modules.conftest import WASM
from wasmxds.errors import CacheWriteError
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.modules.types import Module

DIGEST = hashlib.sha256(WASM).hexdigest()


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """Run with a umask that would make files private, to prove modes are set explicitly."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_put_writes_the_content_addressed_path(tmp_path: Path) -> None:
    """put() stores the bytes at <root>/modules/sha256/<hex>.wasm and describes them."""
    store = ModuleStore(tmp_path)
    module = await store.put(WASM)
    expected = tmp_path / "modules" / "sha256" / f"{DIGEST}.wasm"
    assert module == Module(digest=DIGEST, path=expected, size=len(WASM))
    assert expected.read_bytes() == WASM
    assert store.path_for(DIGEST) == expected


@pytest.mark.usefixtures("strict_umask")
async def test_files_are_world_readable_and_dirs_traversable(tmp_path: Path) -> None:
    """Envoy may run as another user: files are 0644 and created dirs 0755 despite the umask."""
    module = await ModuleStore(tmp_path).put(WASM)
    assert mode(module.path) == 0o644
    assert mode(module.path.parent) == 0o755
    assert mode(module.path.parent.parent) == 0o755


async def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    """The temp file used for the atomic write is renamed away, leaving only the module."""
    store = ModuleStore(tmp_path)
    await store.put(WASM)
    await store.put(WASM + b"\x01")
    names = sorted(p.name for p in (tmp_path / "modules" / "sha256").iterdir())
    assert all(name.endswith(".wasm") and not name.startswith(".") for name in names)
    assert len(names) == 2


async def test_putting_the_same_bytes_again_does_not_rewrite(tmp_path: Path) -> None:
    """A second put of identical bytes returns the same Module without touching the file."""
    store = ModuleStore(tmp_path)
    first = await store.put(WASM)
    before = first.path.stat()
    second = await store.put(WASM)
    after = second.path.stat()
    assert first == second
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


async def test_concurrent_puts_of_one_module_are_safe(tmp_path: Path) -> None:
    """Many concurrent writers of the same bytes agree and leave exactly one intact file."""
    store = ModuleStore(tmp_path)
    data = WASM + os.urandom(256 * 1024)
    modules = await asyncio.gather(*(store.put(data) for _ in range(16)))
    assert len(set(modules)) == 1
    assert modules[0].path.read_bytes() == data
    assert len(list(modules[0].path.parent.iterdir())) == 1


async def test_a_damaged_file_is_replaced(tmp_path: Path) -> None:
    """A file of the wrong size at the module's path (a crash elsewhere) is rewritten."""
    store = ModuleStore(tmp_path)
    path = store.path_for(DIGEST)
    path.parent.mkdir(parents=True)
    path.write_bytes(WASM[:3])
    module = await store.put(WASM)
    assert module.path.read_bytes() == WASM


async def test_get_reports_known_and_unknown_digests(tmp_path: Path) -> None:
    """get() stats the file: a stored digest gives its Module, an unknown one gives None."""
    store = ModuleStore(tmp_path)
    assert store.get(DIGEST) is None
    stored = await store.put(WASM)
    assert store.get(DIGEST) == stored
    assert store.get("0" * 64) is None


def test_malformed_digests_are_rejected(tmp_path: Path) -> None:
    """Only lowercase 64-hex digests name files, so paths cannot escape the store."""
    store = ModuleStore(tmp_path)
    assert is_digest(DIGEST)
    for bad in ("../../etc/passwd", DIGEST.upper(), DIGEST[:-1], ""):
        assert not is_digest(bad)
        with pytest.raises(ValueError, match="sha256"):
            store.path_for(bad)


async def test_write_failure_is_a_cache_write_error(tmp_path: Path) -> None:
    """A root that cannot hold directories fails with CacheWriteError naming the path."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file in the way")
    store = ModuleStore(blocker)
    with pytest.raises(CacheWriteError, match="not-a-dir"):
        await store.put(WASM)


def test_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths handed to Envoy are absolute even when the store root was given relative."""
    monkeypatch.chdir(tmp_path)
    store = ModuleStore(Path("cache"))
    assert store.path_for(DIGEST).is_absolute()
    assert store.root == tmp_path / "cache"
