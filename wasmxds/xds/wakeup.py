"""A stream writer's wake-up: what :class:`asyncio.Event` does for it, with less work.

Every push sets one per stream and every stream waits on one again, so at
10,000 streams its cost is paid 20,000 times a push. ``asyncio.Event`` keeps a
list of waiters, checks which loop it is bound to on every wait and needs a
separate ``clear()``; a writer is the only waiter and always clears, so this
keeps one future and clears itself when the wait returns.
"""

from __future__ import annotations

import asyncio

__all__ = ["Wakeup"]


class Wakeup:
    """Set from anywhere on the loop; one task waits, and the wait consumes the set."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        """Return once set (at once if it already is), leaving it clear."""
        if not self._set:
            future = self._future = asyncio.get_running_loop().create_future()
            try:
                await future
            finally:
                self._future = None
        self._set = False
