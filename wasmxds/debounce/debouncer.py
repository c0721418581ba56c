"""Istio's push debounce (pilot/pkg/xds/discovery.go ``debounce``).

The first event opens a window. The push happens once ``after`` seconds pass
with no new event, or ``max_wait`` seconds after the window opened, whichever
comes first. Only one push runs at a time; events that arrive during a push
open the next window, which is checked as soon as the push returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from wasmxds.metrics import Metrics

__all__ = ["Clock", "Debouncer", "LoopClock"]

log = structlog.get_logger(__name__)


class Clock(Protocol):
    """Time as the debouncer sees it; tests substitute a manual clock."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Debouncer:
    """Merge ``trigger()`` calls into calls of ``push`` (see module docstring)."""

    def __init__(
        self,
        *,
        after: float,
        max_wait: float,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if after < 0 or max_wait < 0:
            raise ValueError("debounce durations cannot be negative")
        self.after = after
        self.max_wait = max_wait
        self._clock = clock or LoopClock()
        self._pending = asyncio.Event()
        self._first_at = 0.0
        self._last_at = 0.0
        self._merged = 0
        self.pushes = 0
        self.merged_events = 0
        self.window_opened_at: float | None = None
        """During a push: when (on this debouncer's clock) its first event arrived."""
        self._metrics = metrics

    def trigger(self) -> None:
        """Record one change event. Cheap and synchronous; safe to call from any task."""
        now = self._clock.now()
        if not self._pending.is_set():
            self._first_at = now
            self._pending.set()
        self._last_at = now
        self._merged += 1

    async def _window_closed(self) -> None:
        while True:
            now = self._clock.now()
            deadline = min(self._last_at + self.after, self._first_at + self.max_wait)
            if now >= deadline:
                return
            await self._clock.sleep(deadline - now)

    async def run(self, push: Callable[[], Awaitable[None]]) -> None:
        """Call ``push`` once per closed window, forever (until cancelled)."""
        while True:
            await self._pending.wait()
            await self._window_closed()
            merged, self._merged = self._merged, 0
            self._pending.clear()
            self.pushes += 1
            self.merged_events += merged
            if self._metrics is not None:
                self._metrics.debounce_pushes.inc()
                self._metrics.debounce_merged.inc(merged)
            log.debug("debounce.push", events=merged)
            self.window_opened_at = self._first_at
            try:
                await push()
            finally:
                self.window_opened_at = None
