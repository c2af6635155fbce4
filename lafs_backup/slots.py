"""Slots: the project's one semaphore, which wakes each next waiter in a reactor turn of its own."""

from __future__ import annotations

import heapq
import itertools
from typing import Awaitable, Callable, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")
P = ParamSpec("P")


class _Waiter:
    """One acquire that found no free slot."""

    __slots__ = ("deferred", "wake", "cancelled")

    def __init__(self, cancel: Callable[[_Waiter], None]) -> None:
        self.deferred: Deferred[None] = Deferred(lambda _d: cancel(self))
        #: Set when a released slot was handed to this waiter: the call that fires ``deferred``.
        self.wake: IDelayedCall | None = None
        self.cancelled = False


class Slots:
    """At most ``limit`` holders at once; waiters are served by ``priority`` (lower first), then
    in order of arrival.

    Twisted's ``DeferredSemaphore.release()`` fires the next waiter's Deferred at once, so that
    waiter runs inside the stack of the task that released; when it finishes at once too (a small
    file read, a listing already at hand), it releases and the next runs deeper still, until
    hundreds deep the stack runs out and the run hangs.  Here :meth:`release` hands the slot to
    the next waiter at once (nobody else can take it meanwhile), but its Deferred fires from
    ``clock.callLater(0, ...)``: in a reactor turn of its own, never in the releaser's stack.

    An acquire that finds a free slot (and nobody waiting) fires at once.  Cancelling a waiting
    acquire (Ctrl-C cancels the running command) takes it out of the queue; cancelling one that
    was handed a slot but not yet woken passes that slot on.  Either way no slot is lost.
    """

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        if limit < 1:
            raise ValueError(f"a semaphore needs at least one slot, not {limit}")
        #: How many may hold a slot at once.
        self.limit = limit
        #: Slots free now (none while anyone waits).
        self.tokens = limit
        self._clock = clock
        self._queue: list[tuple[float, int, _Waiter]] = []  # a heap; cancelled waiters are dropped lazily
        self._order = itertools.count()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Acquires not yet handed a slot (cancelled ones not counted)."""
        return self._waiting

    def acquire(self, priority: float = 0.0) -> Deferred[None]:
        """A Deferred that fires with None once the caller holds a slot; the caller then calls
        :meth:`release` exactly once.  Cancel it to stop waiting (no slot is then held)."""
        if self.tokens > 0:
            self.tokens -= 1
            return succeed(None)
        w = _Waiter(self._cancel)
        heapq.heappush(self._queue, (priority, next(self._order), w))
        self._waiting += 1
        return w.deferred

    def release(self) -> None:
        """Give a slot back: to the next waiter, woken in a later reactor turn, or to the free ones.
        Raises RuntimeError when more slots are given back than were taken."""
        while self._queue:
            _, _, w = heapq.heappop(self._queue)
            if w.cancelled:
                continue
            self._waiting -= 1
            w.wake = self._clock.callLater(0, w.deferred.callback, None)
            return
        if self.tokens >= self.limit:
            raise RuntimeError("a slot was released that was not acquired")
        self.tokens += 1

    async def run(self, f: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """What ``f(*args, **kwargs)`` (a coroutine function, or one that returns a Deferred) gives,
        awaited while holding a slot, which is given back however it ends."""
        await self.acquire()
        try:
            return await f(*args, **kwargs)
        finally:
            self.release()

    def _cancel(self, w: _Waiter) -> None:
        # (The Deferred then fails with CancelledError: this canceller does not fire it.)
        if w.wake is None:
            if not w.cancelled:
                w.cancelled = True
                self._waiting -= 1
                if len(self._queue) > 2 * self._waiting + 64:  # mostly cancelled ones: drop them now
                    self._queue = [e for e in self._queue if not e[2].cancelled]
                    heapq.heapify(self._queue)
        elif w.wake.active():  # handed a slot but not yet woken: the slot goes on to the next
            w.wake.cancel()
            self.release()
