"""The retry policy (pure): how often a gateway request is tried, the backoff between tries, and its
timeouts; read from the configuration (``config.retry_policy``), followed by the gateway client and
the store."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    delays: tuple[float, ...]
    #: Seconds an attempt may go with no byte moving in either direction (None: no limit).
    timeout: float | None
    #: Seconds to wait for the first answer byte once a request is sent (None: no limit).
    answer_timeout: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(self.delays[min(attempt - 1, len(self.delays) - 1)])
