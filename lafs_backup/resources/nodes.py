"""This machine's grid nodes: the embedded grid, and a gateway node that joins the grid a recovery key
names; started on demand (off the reactor thread) and, when the command ends, stopped or left running."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Protocol

from ..config import Config
from ..engine.runtime import Runtime
from ..grid.gateway import Gateway
from ..system.places import data_dir

if TYPE_CHECKING:
    from ..grid.local import LocalGrid
    from ..repository import RepoKey


class Gateways(Protocol):
    """What the opener's collaborators see of it: this command's gateway and its base URL, and a
    gateway to any URL."""

    async def url(self) -> str: ...

    async def gateway(self) -> Gateway: ...

    def make_gateway(self, url: str, jobs: int | None = None, attempts: int | None = None) -> Gateway: ...


class Nodes:
    """The embedded grid and this machine's gateway nodes: made and started when a command needs them,
    and remembered, so that the command stops them (a read command) or leaves them running."""

    def __init__(self, config: Config, rt: Runtime, gateways: Gateways) -> None:
        self.config = config
        self.rt = rt
        self._gateways = gateways
        #: The grids (and gateways) this command started: a read command stops them when it ends.
        self.started: list[LocalGrid] = []

    def grid(self, directory: str | None = None, listen: str | None = None) -> "LocalGrid":
        """The embedded grid (in ``directory``, else ``grid.dir``, else the data directory's
        ``grid``), as configured; not started here (see :meth:`ensure_grid`)."""
        from ..grid.local import GridSpec, LocalGrid

        g = self.config.grid
        d = directory or g.dir or os.path.join(data_dir(), "grid")
        return LocalGrid(GridSpec(d, g.nodes, g.needed, g.happy, listen=listen))

    def joined_gateway(self, key: RepoKey) -> "LocalGrid":
        """This machine's gateway node for the grid a recovery key names (made on first use)."""
        from ..grid.local import GridSpec, LocalGrid

        assert key.furl is not None  # (asked only of a key that names its grid)
        d = os.path.join(data_dir(), "gateways", hashlib.sha256(key.furl.encode()).hexdigest()[:12])
        g = self.config.grid
        return LocalGrid(GridSpec(d, key.total or g.nodes, key.needed or g.needed, key.happy or g.happy,
                                  join=key.furl))

    async def ensure_grid(self, grid: "LocalGrid") -> str:
        """Start the embedded grid if needed (off the reactor thread) and wait for its servers."""
        from ..grid.local import wait_connected

        new = grid.load() is None
        try:
            state, started = await self.rt.in_thread(grid.start_processes)
        except BaseException:
            grid.cancel()  # interrupted: stop the thread's subprocess now
            raise
        if started:
            self.started.append(grid)
            if state.get("join"):
                self.rt.reporter.say(f"lafs-backup: started a gateway for the grid of the recovery key in {grid.dir}")
            elif new:
                self.rt.reporter.say(
                    f"lafs-backup: made the embedded local grid in {grid.dir} and started it.  Every share of "
                    "every backup on it is on this machine's own disk: a grid to try the tool with, not to "
                    "survive this disk (the README's 'Moving to a real grid' says how).  "
                    "'lafs-backup grid down' stops it; 'grid up' starts it again")
            else:
                self.rt.reporter.say(f"lafs-backup: started the embedded local grid in {grid.dir} "
                                     "('lafs-backup grid down' stops it)")
        if state.get("url") is None:  # a storage node of a grid made elsewhere: nothing to wait for here
            return ""
        gw = self._gateways.make_gateway(state["url"], jobs=2, attempts=1)
        await wait_connected(gw.connected_servers, state["happy"], self.config.grid.start_timeout,
                             self.rt.sleep, self.rt.reactor.seconds)
        return str(state["url"])

    async def stop_started(self) -> list[str]:
        """Stop the grids this command started (a read command's, when it ends); the node names."""
        stopped: list[str] = []
        for grid in self.started:
            stopped += await self.rt.in_thread(grid.stop)
        self.started.clear()
        return stopped

    def keep_started(self) -> None:
        """Leave the grids this command started running (a backup: the next one needs them), and
        say so once per grid."""
        for grid in self.started:
            told = os.path.join(grid.dir, "told-running")
            if os.path.exists(told):
                continue
            self.rt.reporter.say("lafs-backup: the embedded grid keeps running, for the next backup "
                                 "('lafs-backup grid down' stops it; any command starts it again)")
            try:
                with open(told, "w"):
                    pass
            except OSError:
                pass
        self.started.clear()
