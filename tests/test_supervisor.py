"""The supervisor: which tasks may end, and what an early end does."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import structlog.testing

from wasmxds.supervisor import StageEnded, Supervisor


async def forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def returns_at_once() -> None:
    return None


async def test_a_task_allowed_to_end_ends_quietly():
    """A task started with may_end=True may return while the others keep running."""
    done = asyncio.Event()

    async def one_shot() -> None:
        done.set()

    async with Supervisor() as tasks:
        tasks.start("forever", forever())
        ended = tasks.start("one-shot", one_shot(), may_end=True)
        await done.wait()
        await asyncio.sleep(0)
        assert ended.done()
        assert not ended.cancelled()
        assert not tasks.stopping
        tasks.cancel()


async def test_an_early_end_fails_the_service_with_the_task_named():
    """A long-lived task that returns before stop is a failure naming it, logged as such."""

    async def serve() -> None:
        async with Supervisor() as tasks:
            tasks.start("forever", forever())
            tasks.start("sources.directory", returns_at_once())

    with structlog.testing.capture_logs() as logs, pytest.raises(ExceptionGroup) as failed:
        await serve()
    [error] = failed.value.exceptions
    assert isinstance(error, StageEnded)
    assert error.name == "sources.directory"
    assert str(error) == (
        "task sources.directory returned before stop; long-lived tasks must run until cancelled"
    )
    assert {"event": "service.task_ended", "task": "sources.directory"}.items() <= logs[0].items()


async def test_an_end_after_stop_is_the_stop_working():
    """Once stopping has begun, a task that returns (as the xDS server does) is fine."""
    stopped = asyncio.Event()

    async def returns_when_stopped() -> None:
        await stopped.wait()

    async with Supervisor() as tasks:
        running = asyncio.Event()
        tasks.start("forever", forever(running))
        server = tasks.start("xds", returns_when_stopped())
        await running.wait()
        tasks.begin_stop()
        stopped.set()
        await server
        assert not server.cancelled()
        tasks.cancel()


async def test_a_failing_task_takes_the_others_down():
    """An exception in one task cancels the rest and comes out of the group."""
    cancelled = asyncio.Event()

    async def watcher() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def breaks() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    async def serve() -> None:
        async with Supervisor() as tasks:
            tasks.start("watcher", watcher())
            tasks.start("broken", breaks())

    with pytest.raises(ExceptionGroup) as failed:
        await serve()
    assert [str(e) for e in failed.value.exceptions] == ["boom"]
    assert cancelled.is_set()


async def test_cancel_goes_in_the_order_given_then_the_rest():
    """cancel("xds") first, then cancel() for every task left: the fixed shutdown order."""
    order: list[str] = []

    async def recorded(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            order.append(name)
            raise

    async with Supervisor() as tasks:
        for name in ("sources", "debounce", "xds"):
            tasks.start(name, recorded(name))
        await asyncio.sleep(0)
        tasks.cancel("xds")
        await asyncio.sleep(0)
        tasks.cancel()
    assert order == ["xds", "sources", "debounce"]
    assert tasks.stopping


async def test_a_name_runs_once():
    """Starting a second task under a running name is refused (and the coroutine closed)."""
    async with Supervisor() as tasks:
        tasks.start("admin", forever())
        second = forever()
        with pytest.raises(ValueError, match="task admin is already running"):
            tasks.start("admin", second)
        # Closed, so it is not reported as never awaited.
        assert inspect.getcoroutinestate(second) == inspect.CORO_CLOSED
        tasks.cancel()
