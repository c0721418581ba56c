"""State files (module index, last good plugins): replaced whole, owner-only, retried on failure."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import structlog

from wasmxds.statefile import StateFile, write_private


def test_write_private_replaces_the_file_owner_only(tmp_path: Path) -> None:
    """The new content replaces the old in one rename, readable by the owner only."""
    path = tmp_path / "cache" / "state.json"
    write_private(path, b"old", prefix=".state-")
    write_private(path, b"new", prefix=".state-")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_write_private_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    """A write that fails (here: the target is a directory) keeps the directory clean."""
    target = tmp_path / "state.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        write_private(target, b"data", prefix=".state-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


async def test_a_failed_flush_is_logged_and_retried(tmp_path: Path) -> None:
    """An unwritable path logs the owner's event and stays dirty; the next flush writes."""
    content = {"n": 1}
    blocker = tmp_path / "dir"
    blocker.write_text("a file where the directory should be")
    path = blocker / "state.json"
    file = StateFile(
        path,
        prefix=".state-",
        failed_event="test.state_write_failed",
        snapshot=lambda: dict(content),
        encode=lambda taken: repr(taken).encode(),
    )
    file.dirty = True
    with structlog.testing.capture_logs() as events:
        await file.flush()
    assert [event["event"] for event in events] == ["test.state_write_failed"]
    assert file.dirty
    blocker.unlink()
    content["n"] = 2
    await file.flush()
    assert not file.dirty
    assert path.read_bytes() == b"{'n': 2}"


async def test_a_clean_file_is_not_written(tmp_path: Path) -> None:
    """Nothing is written until the owner marks the content dirty."""
    path = tmp_path / "state.json"
    file = StateFile(path, prefix=".s-", failed_event="unused", snapshot=lambda: b"x", encode=bytes)
    await file.flush()
    file.flush_sync()
    assert not path.exists()
    file.dirty = True
    file.flush_sync()
    assert path.read_bytes() == b"x"
