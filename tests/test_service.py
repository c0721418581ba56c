"""Service: built without touching the disk, opened from the cache, supervised while running."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.reconcile.last_good import LastGoodFile
from wasmxds.service import Service
from wasmxds.settings import HostPort, ServeSettings
from wasmxds.supervisor import StageEnded


def settings_for(tmp_path: Path) -> ServeSettings:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    return ServeSettings(
        config_dirs=(plugins,),
        cache_dir=tmp_path / "cache",
        xds_address=HostPort("127.0.0.1", 0),
        admin_address=HostPort("127.0.0.1", 0),
        initial_fetch_wait=0.0,
    )


async def test_constructing_reads_and_writes_nothing(tmp_path: Path):
    """Service(...) builds every stage from what it is given; the cache directory stays absent."""
    service = Service(settings_for(tmp_path), index=ModuleIndex(), last_good=LastGoodFile())
    assert not (tmp_path / "cache").exists()
    for stage in ("resolver", "purger", "source", "debouncer", "xds", "reconciler", "admin"):
        assert getattr(service, stage) is not None
    assert service.kubernetes is None
    assert service.templates is None
    await service.http.aclose()
    await service.oci.aclose()


async def test_open_creates_the_cache_and_reads_its_index(tmp_path: Path):
    """Service.open makes the cache directory and loads the index kept there."""
    service = await Service.open(settings_for(tmp_path))
    assert (tmp_path / "cache").is_dir()
    assert service.index.path == tmp_path / "cache" / INDEX_FILE
    await service.http.aclose()
    await service.oci.aclose()


async def test_a_stage_that_returns_early_stops_the_service(tmp_path: Path):
    """A long-lived stage returning before stop fails run() with the stage named."""
    service = await Service.open(settings_for(tmp_path))

    async def purge_returns() -> None:
        await service.admin_started.wait()

    service.purger.run = purge_returns  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup) as failed:
        await asyncio.wait_for(service.run(asyncio.Event()), timeout=30)
    [ended] = failed.value.exceptions
    assert isinstance(ended, StageEnded)
    assert ended.name == "modules.purge"


async def test_the_first_push_deadline_may_end_and_stop_ends_cleanly(tmp_path: Path):
    """With a zero start-up wait the deadline task ends at once; the service runs on until stop."""
    service = await Service.open(settings_for(tmp_path))
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.xds_started.wait(), timeout=30)
    await asyncio.wait_for(_until(lambda: service.reconciler.published), timeout=30)
    assert not running.done()
    stop.set()
    await asyncio.wait_for(running, timeout=30)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
