"""Run named long-lived tasks together; a stage that ends early takes the service down.

Like kopf's ``guard``: each task is started with whether it may finish. A task
that may not (a source, the xDS server) and returns before :meth:`Supervisor.stop`
is a bug: it is logged with its name and ends the service, rather than leaving
a half-working control plane. Once stopping has begun, a task that returns
before its cancellation reaches it (the xDS server returns as soon as it is
stopped) is the stop doing its work. A task that raises fails the service as
in any :class:`asyncio.TaskGroup`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

import structlog

__all__ = ["StageEnded", "Supervisor"]

log = structlog.get_logger(__name__)


class StageEnded(Exception):
    """A task that must run until stopped returned while the service was running."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"task {self.name} returned before stop; long-lived tasks must run until cancelled"


class Supervisor:
    """An :class:`asyncio.TaskGroup` of named tasks that knows which of them may end."""

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._group.__aexit__(exc_type, exc, traceback)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(
        self, name: str, coro: Coroutine[Any, Any, None], *, may_end: bool = False
    ) -> asyncio.Task[None]:
        """Run ``coro`` as task ``name``; ``may_end`` says returning early is its job done."""
        if name in self._tasks:
            coro.close()
            raise ValueError(f"task {name} is already running")
        task = self._group.create_task(self._guard(name, coro, may_end), name=name)
        # Cancelled before its first step, the guard never awaits ``coro``: close it
        # so it is not reported as never awaited (closing a finished one does nothing).
        task.add_done_callback(lambda _: coro.close())
        self._tasks[name] = task
        return task

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None], may_end: bool) -> None:
        await coro
        if may_end or self._stopping:
            return
        log.error("service.task_ended", task=name, reason="returned before stop")
        raise StageEnded(name)

    def begin_stop(self) -> None:
        """From now on a task returning is part of the shutdown, not a failure."""
        self._stopping = True

    def cancel(self, *names: str) -> None:
        """Cancel these tasks (all that are left when none is named), in that order."""
        self.begin_stop()
        for name in names or tuple(self._tasks):
            self._tasks[name].cancel()
