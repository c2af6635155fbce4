"""Token buckets for ``operation.rate_limit``: bytes and requests per interval, on an injected clock."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater



class TokenBucket:
    """One token every ``interval`` seconds, at most ``burst`` saved.

    :meth:`take` waits until enough tokens are there.  A request larger than
    the burst waits for a full bucket and then leaves it in debt, so the
    long-run rate holds for any request size.
    """

    def __init__(self, interval: float, burst: float, clock: IReactorTime) -> None:
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) / self.interval)
        self._stamp = now

    async def take(self, n: float) -> None:
        need = min(n, self.burst)
        while True:
            self._refill()
            if self._tokens >= need:
                self._tokens -= n
                return
            wait = (need - self._tokens) * self.interval
            await deferLater(self._clock, wait, lambda: None)


def make(rate: tuple[float, float] | None, clock: IReactorTime) -> TokenBucket | None:
    """A bucket for a parsed ``operation.rate_limit`` value (see ``config.parse_rate``), or None."""
    if rate is None:
        return None
    return TokenBucket(rate[0], rate[1], clock)
