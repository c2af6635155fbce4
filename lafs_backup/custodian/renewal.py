"""The custodian's renewals on the grid: it joins as a storage client when a pass first needs it (and stays
joined until stopped), waits for the servers it hears of, and renews through a :class:`Renewer`."""

from __future__ import annotations

import logging
from typing import Iterable

from twisted.internet.interfaces import IReactorTime

from ..errors import GridError
from ..grid.ratelimit import make
from .join import GridClient
from .leases import Renewal as Renewed
from .leases import Renewer
from .secrets import LeaseSecret
from .targets import Target

log = logging.getLogger(__name__)

#: Seconds between two looks at whether every server heard of is connected.
_SETTLE_STEP = 0.25


class Renewal:
    """Renewals by the custodian's lease secret on the grid of ``introducer``, joined from ``state_dir``;
    ``timeout``: seconds to wait for the servers; ``rate``: a parsed ``operation.rate_limit.objects``."""

    def __init__(self, reactor: IReactorTime, secret: LeaseSecret, state_dir: str, introducer: str | None,
                 timeout: float = 60.0, rate: tuple[float, float] | None = None, limit: int = 32) -> None:
        self._reactor = reactor
        self._secret = secret
        self._state_dir = state_dir
        self._introducer = introducer
        self._timeout = timeout
        self._rate = rate
        self._limit = limit
        self._client: GridClient | None = None
        self.requests = 0

    async def renew(self, targets: Iterable[Target], census: bool = True) -> list[Renewed]:
        """Renew every target's lease on every storage server, with a census of the shares each holds or
        without (see :class:`Renewer`).  Raises :class:`GridError` when no server can be reached."""
        if not self._introducer:
            raise GridError(problem="the custodian's key holds no introducer fURL: it cannot join the grid")
        if self._client is None:
            self._client = GridClient(self._reactor, self._state_dir, introducer=self._introducer)
        await self._client.connected(1, self._timeout)
        await self._settle()
        renewer = Renewer(self._reactor, self._client.servers, self._secret, limit=self._limit,
                          rate=make(self._rate, self._reactor))
        done = await renewer.renew(targets, census=census)
        self.requests += renewer.requests
        return done

    async def _settle(self) -> None:
        """Wait (up to the timeout) until every server heard of is connected: a pass asks each one."""
        from twisted.internet.task import deferLater

        assert self._client is not None
        waited = 0.0
        while waited < self._timeout:
            known = self._client.servers()
            if known and all(s.is_connected() for s in known):
                return
            await deferLater(self._reactor, _SETTLE_STEP, lambda: None)
            waited += _SETTLE_STEP
        log.info("not every storage server connected after %.0fs: the pass asks those that are", self._timeout)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()
            self._client = None
