"""What the engine runs on: the reactor, the reporter, the operation the manhole shows, and the
thread pool that keeps blocking work off the reactor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar, TypeVarTuple

from ..report import Operation, Reporter

if TYPE_CHECKING:
    from ..protocols import Reactor
    from .monitor import Monitor

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class Runtime:
    """The reactor (a test's memory reactor runs thread work inline), the reporter, the running
    operation (None outside the CLI) and the monitoring of a command that changes state (None: none;
    ``watch`` tells it of each round)."""

    reactor: Reactor
    reporter: Reporter
    op: Operation | None = None
    monitor: Monitor | None = None

    async def in_thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run blocking work off the reactor thread, so signals, timers and the manhole stay live
        (inline when the injected reactor has no threads, as a test's memory reactor)."""
        from twisted.internet.interfaces import IReactorThreads
        from twisted.internet.threads import deferToThreadPool

        if not IReactorThreads.providedBy(self.reactor):
            return fn(*args)
        return await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def threadsafe(self, fn: Callable[[*Ts], None]) -> Callable[[*Ts], None]:
        """``fn``, called on the reactor thread whoever calls it (a reporter method, from a thread)."""
        from twisted.internet.interfaces import IReactorThreads

        if not IReactorThreads.providedBy(self.reactor):
            return fn

        def call(*args: *Ts) -> None:
            self.reactor.callFromThread(fn, *args)
        return call

    async def sleep(self, seconds: float) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, seconds, lambda: None)
