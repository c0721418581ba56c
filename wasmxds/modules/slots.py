"""Download slots shared fairly between module hosts, so slow hosts cannot starve the others.

A plain semaphore hands its slots to whoever asked first: four URLs on hosts
that trickle bytes hold all four, and every other host's module waits for them
to time out (and then for their retries). :class:`PullSlots` keeps the global
limit (``--max-parallel-pulls``) and adds three rules:

- **Per-host cap, work-conserving**: while a pull of another host waits, one
  host gets no new slot beyond ``per_host`` (``--max-pulls-per-host``), so one
  bad host leaves the rest of the slots to the others. Slots nobody else asks
  for are not kept idle: a one-registry fleet uses them all. A host is never
  made to give back a slot it holds over its cap; the other host's pull gets
  the next slot that frees up (or is lent, below) first.
- **Fair turns**: when a slot frees up, first pulls go before retries and
  re-pulls, then the host that was served least recently goes first; within a
  host, first come first served.
- **Stalled transfers lend their slot**: a transfer that has received less
  than ``stall_rate`` bytes/s over the last ``lend_after`` seconds is doing
  nothing with its slot. When a pull is waiting, such a transfer stops counting
  against the global limit and carries on beside it (still under the
  minimum-rate rule and the total timeout). At most ``limit`` such transfers
  run at once, so connections stay bounded (twice ``limit``).
- **...and lose it when first pulls wait**: when a first pull waits and
  ``limit`` lent transfers already run, the one stalled longest is cancelled
  with :class:`SlotTakenBack` (retried later with the resolver's backoff, as a
  retry) and a stalled counted transfer is lent in its place. So a first pull
  waits about ``lend_after`` seconds, whatever the number of hostile hosts
  queued before it (each ``lend_after`` seconds up to ``limit`` of them are
  moved aside). A transfer is only taken back while it is stalled: one that
  has just finished downloading and is verifying a large module for more than
  ``lend_after`` looks stalled too and may be cut off and retried later.

Bytes are counted by the module-download transport for the task holding the
slot (:data:`wasmxds.modules.progress.transfer_observer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from wasmxds.modules.progress import RateWindow, transfer_observer

__all__ = ["DEFAULT_STALL_RATE", "STALLED_PULL_SECONDS", "PullSlots", "SlotTakenBack", "Ticket"]

log = structlog.get_logger(__name__)

# Below this a transfer is stalled: waiting for an answer, or trickling...
DEFAULT_STALL_RATE = 16 * 1024.0
# ...when it has been so for this long (what the server passes as ``lend_after``).
STALLED_PULL_SECONDS = 1.0
# How often a waiting pull looks for stalled transfers to take a slot from.
_TICK = 0.1


class SlotTakenBack(Exception):
    """A stalled transfer was cancelled so that a waiting first pull gets its slot."""

    def __init__(self, held_for: float) -> None:
        super().__init__(
            f"stalled while other modules waited for a download slot (held it {held_for:.0f} s);"
            " it is retried later"
        )
        self.held_for = held_for


class Ticket:
    """One granted slot: who holds it and how much it has received lately."""

    __slots__ = (
        "granted_at",
        "host",
        "kept",
        "lent",
        "recent",
        "scope",
        "stalled_since",
        "taken_back",
    )

    def __init__(self, host: str, recent: RateWindow, granted_at: float) -> None:
        self.host = host
        self.recent = recent
        self.granted_at = granted_at
        self.lent = False  # no longer counted against the global limit
        self.taken_back = False  # being cancelled: counted nowhere until it lets go
        self.stalled_since: float | None = None  # as last seen by a tick
        self.scope: asyncio.Timeout | None = None  # how the holder is cancelled
        self.kept = False

    def received(self, count: int) -> None:
        self.recent.add(count)

    def keep(self) -> None:
        """The download is done: what is left (storing it) is never taken back."""
        self.kept = True
        if self.taken_back and self.scope is not None and not self.scope.expired():
            self.scope.reschedule(None)  # too late to be of use: let it finish


@dataclass(slots=True)
class _Waiter:
    host: str
    retry: bool
    seq: int
    future: asyncio.Future[Ticket] = field(repr=False)


class PullSlots:
    """At most ``limit`` pulls at once, ``per_host`` per host, in fair turns.

    ``lend_after`` (seconds) turns on lending the slot of a stalled transfer to
    a waiting pull; None keeps a strict limit.
    """

    def __init__(
        self,
        limit: int,
        *,
        per_host: int | None = None,
        lend_after: float | None = None,
        stall_rate: float = DEFAULT_STALL_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"max_parallel must be at least 1, got {limit}")
        if per_host is not None and per_host < 1:
            raise ValueError(f"max pulls per host must be at least 1, got {per_host}")
        if lend_after is not None and lend_after <= 0:
            raise ValueError(f"lend_after must be positive, got {lend_after}")
        self.limit = limit
        self.per_host = min(per_host or limit, limit)
        self._lend_after = lend_after
        self._stall_rate = stall_rate
        self._clock = clock
        self._counted = 0  # granted and counted against ``limit``
        self._lent: list[Ticket] = []
        self._granted: list[Ticket] = []
        self._by_host: dict[str, int] = {}
        self._last_turn: dict[str, int] = {}
        self._turns = itertools.count()
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def active(self) -> int:
        """Pulls holding a slot, lent ones included."""
        return len(self._granted)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, host: str, *, retry: bool = False) -> AsyncIterator[Ticket]:
        """Hold a slot for ``host`` while the block runs; its bytes are counted meanwhile.

        If the slot is taken back for a waiting first pull, the block is cancelled and
        :class:`SlotTakenBack` is raised out of it.
        """
        ticket = await self._acquire(host, retry)
        token = transfer_observer.set(ticket.received)
        try:
            # A deadline that only ever fires when the slot is taken back.
            async with asyncio.timeout(None) as scope:
                ticket.scope = scope
                yield ticket
        except TimeoutError as exc:
            if ticket.taken_back and scope.expired():
                raise SlotTakenBack(self._clock() - ticket.granted_at) from exc
            raise
        finally:
            transfer_observer.reset(token)
            self._release(ticket)

    async def _acquire(self, host: str, retry: bool) -> Ticket:
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(host, retry, next(self._seq), future)
        self._waiting.append(waiter)
        self._dispatch()
        self._watch()
        try:
            await asyncio.wait([future])
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(future.result())  # granted as we were cancelled
            else:
                future.cancel()
                self._waiting.remove(waiter)
            raise
        return future.result()

    def _watch(self) -> None:
        """While pulls wait, look for stalled transfers every tick (one timer for all)."""
        if self._lend_after is None or self._timer is not None or not self._waiting:
            return
        self._timer = asyncio.get_running_loop().call_later(_TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._clock()
        for ticket in self._granted:
            if ticket.recent.shortfall() is None:
                ticket.stalled_since = None
            elif ticket.stalled_since is None:
                ticket.stalled_since = now
        if self._lend_stalled():
            self._dispatch()
        while self._take_back():
            self._lend_stalled()
            self._dispatch()
        self._watch()

    def _has_room(self, host: str) -> bool:
        return self._by_host.get(host, 0) < self.per_host

    def _dispatch(self) -> None:
        while self._counted < self.limit and self._waiting:
            candidates = [w for w in self._waiting if self._has_room(w.host)]
            if not candidates:
                # Work-conserving: no other host waits, so the cap would only keep slots idle.
                candidates = self._waiting
            chosen = min(
                candidates,
                key=lambda w: (
                    w.retry,
                    self._by_host.get(w.host, 0),
                    self._last_turn.get(w.host, -1),
                    w.seq,
                ),
            )
            self._waiting.remove(chosen)
            now = self._clock()
            recent = RateWindow(self._stall_rate, self._lend_after or 1.0, self._clock)
            ticket = Ticket(chosen.host, recent, now)
            self._counted += 1
            self._granted.append(ticket)
            self._by_host[chosen.host] = self._by_host.get(chosen.host, 0) + 1
            self._last_turn[chosen.host] = next(self._turns)
            chosen.future.set_result(ticket)

    def _lend_stalled(self) -> bool:
        """Stop counting stalled transfers while pulls wait that could use their slots."""
        wanted = sum(1 for w in self._waiting if self._has_room(w.host))
        lent = False
        for ticket in self._granted:
            if wanted <= 0 or len(self._lent) >= self.limit:
                break
            if ticket.lent or ticket.taken_back or ticket.recent.shortfall() is None:
                continue
            ticket.lent = True
            self._lent.append(ticket)
            self._counted -= 1
            wanted -= 1
            lent = True
            log.debug(
                "module.slot_lent",
                host=ticket.host,
                held_for=round(self._clock() - ticket.granted_at, 3),
            )
        return lent

    def _take_back(self) -> bool:
        """Cancel the lent transfer stalled longest, when a first pull waits and none can be lent.

        Only worth it if a counted stalled transfer can then be lent in its place;
        retries and re-pulls never take a slot back (they would only churn).
        """
        if len(self._lent) < self.limit:
            return False
        if not any(not w.retry and self._has_room(w.host) for w in self._waiting):
            return False
        if not any(
            not t.lent and not t.taken_back and t.recent.shortfall() is not None
            for t in self._granted
        ):
            return False
        stalled = [
            t
            for t in self._lent
            if t.stalled_since is not None and t.scope is not None and not t.kept
        ]
        if not stalled:
            return False
        victim = min(stalled, key=lambda t: t.stalled_since or 0.0)
        self._lent.remove(victim)
        victim.lent = False
        victim.taken_back = True
        assert victim.scope is not None
        victim.scope.reschedule(asyncio.get_running_loop().time())
        log.info(
            "module.slot_taken_back",
            host=victim.host,
            held_for=round(self._clock() - victim.granted_at, 3),
            waiting=len(self._waiting),
        )
        return True

    def _release(self, ticket: Ticket) -> None:
        self._granted.remove(ticket)
        if ticket.lent:
            self._lent.remove(ticket)
        elif not ticket.taken_back:
            self._counted -= 1
        left = self._by_host[ticket.host] - 1
        if left:
            self._by_host[ticket.host] = left
        else:
            del self._by_host[ticket.host]
            if not any(w.host == ticket.host for w in self._waiting):
                # Turns are only compared between hosts competing now.
                self._last_turn.pop(ticket.host, None)
        self._dispatch()
