"""Gather where the backups stand: the repository's records and the local history, the grid as its gateway
sees it, and this machine's systemd timers; judged by ``standing.assess`` (``status``, the web status page)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Protocol, cast

from ..config import Config
from ..db.local import LocalDB
from ..errors import GatewayError, GridError
from ..history import Backup, Run
from ..log import redact
from ..system.places import this_host
from ..system.timers import RunProgram, process_runner, timers as systemd_timers
from .standing import GridState, StatusReport, Timer, assess, grid_state

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorProcess

    from ..grid.gateway import Gateway
    from ..protocols import GatewayLike, Reactor

log = logging.getLogger(__name__)


class _Runtime(Protocol):
    @property
    def reactor(self) -> Reactor: ...


class Sources(Protocol):
    """What :func:`gather` asks of (the command's ``resources.Opener``)."""

    @property
    def config(self) -> Config: ...

    @property
    def rt(self) -> _Runtime: ...

    async def gateway(self) -> Gateway: ...

    async def happy(self, gw: GatewayLike | None = None) -> int: ...

    async def backups(self) -> list[Backup]: ...

    def known_cache_path(self) -> str | None: ...


def local_runs(path: str | None) -> tuple[list[Backup], dict[str, Run]]:
    """This machine's backups and the last run of each command, from the entry cache at ``path``, read
    as a reader (beside any run), without asking the grid anything; nothing when there is none."""
    if path is None or not os.path.exists(path):
        return [], {}
    cache = LocalDB(path, None, reader=True)
    try:
        return cache.history.backups(), cache.history.runs()
    finally:
        cache.close()


async def gather(opener: Sources, now: float, run: RunProgram | None = None) -> StatusReport:
    """Where the backups stand at ``now`` (the caller's clock: a test gives another time).

    Asks the gateway for its welcome page (servers, free space) and the repository's records (the
    happiness uploads need is ``destination.happy``, or the embedded grid's; else unknown); when the
    grid cannot be asked, the report says so (unknown) and judges this machine's own backups alone.
    ``run`` runs ``systemctl`` (default: the reactor's process API; the next scheduled run is left
    out where systemd does not run).  Raises nothing for a grid that cannot be asked.
    """
    conf = opener.config
    backups: list[Backup] | None = None
    try:
        gw = await opener.gateway()
        # The happiness uploads need: configured, or the embedded grid's.  Tahoe's web API does not
        # tell another gateway's (opener.happy would count the servers connected now: no yardstick).
        happy = conf.destination.happy
        if happy is None and not conf.destination.url:
            happy = await opener.happy(gw)
        grid = grid_state(await gw.welcome(), happy)
        backups = await opener.backups()
    except (GatewayError, GridError) as e:
        grid = GridState(problem=redact(e.message))
        log.info("status: the grid cannot be asked: %s", grid.problem)
    mine, runs = local_runs(opener.known_cache_path())
    if backups is None:
        backups = mine
    if run is None:
        run = process_runner(cast("IReactorProcess", opener.rt.reactor))
    found = await systemd_timers(run)
    timers = None if found is None else [Timer(t.unit, t.activates, t.next, t.last) for t in found]
    return assess(now, backups, grid, runs, conf.destination.lease_days, conf.destination.copies, timers,
                  this_host())
