"""Token buckets for ``operation.rate_limit``: bytes and requests per interval, on an injected clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from .errors import ConfigError


def parse_spec(spec: str | float | int, key: str) -> tuple[float, float]:
    """Parse ``interval[:burst]``; ``interval`` may be ``a/b``.  Returns (seconds per token, burst)."""
    def num(text: str) -> float:
        if "/" in text:
            a, _, b = text.partition("/")
            return float(a) / float(b)
        return float(text)

    try:
        text = str(spec)
        head, _, tail = text.partition(":")
        interval = num(head)
        burst = num(tail) if tail else max(1.0, 1.0 / interval)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(source="configuration", key=key,
                          problem=f"expected 'interval[:burst]' such as '1/3e6:50e6', got {spec!r}")
    if interval <= 0 or burst <= 0:
        raise ConfigError(source="configuration", key=key, problem="interval and burst must be positive")
    return interval, burst


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


def make(spec: Any, key: str, clock: IReactorTime) -> TokenBucket | None:
    if spec is None:
        return None
    interval, burst = parse_spec(spec, key)
    return TokenBucket(interval, burst, clock)
