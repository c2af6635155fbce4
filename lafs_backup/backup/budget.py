"""Budgets: how much (bytes, or entries in flight) phase two may hold at once, and what one task holds
of one until it gives it back."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


class Budget:
    """A count (bytes, or entries) that may be held at once; :meth:`take` waits for room (FIFO).

    ``starved`` is called whenever a taker has to wait (the packer seals its
    open pack then, so the memory it holds is freed once it is uploaded).
    """

    def __init__(self, size: int, starved: Callable[[], None] | None = None,
                 clock: IReactorTime | None = None) -> None:
        """``clock``: a taker given room is woken in a reactor turn of its own (as ``slots.Slots``
        does), never inside the stack of the task that gave it back: hundreds of members of one
        pack finishing at once each gave room to the next inside the one before, until the stack
        ran out (None: woken at once, for tests without a reactor)."""
        self.size = size
        self.free = size
        self._starved = starved
        self._clock = clock
        self._waiters: list[tuple[int, Deferred]] = []

    async def take(self, n: int) -> int:
        """Reserve ``n`` (at most the whole budget); returns what was reserved, to give back."""
        n = min(n, self.size)
        if self._waiters or self.free < n:
            d: Deferred = Deferred()
            self._waiters.append((n, d))
            if self._starved is not None:
                self._starved()
            await d
        else:
            self.free -= n
        return n

    def give(self, n: int) -> None:
        self.free += n
        while self._waiters and self._waiters[0][0] <= self.free:
            m, d = self._waiters.pop(0)
            self.free -= m
            if self._clock is not None:
                self._clock.callLater(0, d.callback, None)
            else:
                d.callback(None)
        if self._waiters and self._starved is not None:
            self._starved()  # still short: maybe nothing else will free room now


class Held:
    """What a run took from a budget, given back in parts as its files are done, the rest at the end."""

    def __init__(self, budget: Budget, n: int) -> None:
        self._budget = budget
        self.left = n

    def give(self, n: int) -> None:
        n = min(n, self.left)
        if n:
            self.left -= n
            self._budget.give(n)

    def rest(self) -> None:
        self.give(self.left)
