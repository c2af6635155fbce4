"""The opener a command holds: this command's gateway, and each other resource asked of the
collaborator that opens it (the grid nodes, the grid's places, the entry cache, the repository)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncContextManager

from ..config import Config
from ..db.local import LocalDB
from ..engine.runtime import Runtime
from ..grid import ratelimit
from ..grid.gateway import Gateway, make_http_client
from ..grid.kept import KeptReads
from ..history import Backup
from ..protocols import GatewayLike
from ..system.lock import CacheLock
from ..system.places import state_dir
from .cache import EntryCache
from .nodes import Nodes
from .places import GridPlaces
from .repo import Repositories, Sealed

if TYPE_CHECKING:
    from ..grid.local import LocalGrid
    from ..repository import RepoKey, Repository


@dataclass
class Opener:
    """Opens, once each, the resources a command asks for; the command hands them down.

    It keeps this command's gateway itself; the grid nodes of this machine (:class:`Nodes`), which
    grid it is and where its cache and key are (:class:`GridPlaces`), the entry cache
    (:class:`EntryCache`) and the repository and its key (:class:`Repositories`) it asks of
    collaborators, which share its gateway."""

    config: Config
    rt: Runtime
    #: The recovery key as given (--repo: a key, a file, or - for stdin); else LAFS_BACKUP_REPO.
    repo_arg: str | None = None
    _gateway: Gateway | None = None
    _url: str | None = None
    _nodes: Nodes = dataclasses.field(init=False, repr=False)
    _places: GridPlaces = dataclasses.field(init=False, repr=False)
    _cache: EntryCache = dataclasses.field(init=False, repr=False)
    _repos: Repositories = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._nodes = Nodes(self.config, self.rt, self)
        self._places = GridPlaces(self.config, self.rt, self, self._nodes)
        self._cache = EntryCache(self.config, self.rt, self._places)
        self._repos = Repositories(self.config, self.rt, self.repo_arg, self, self._nodes, self._places,
                                   self._cache)

    # -- the grid and its gateway -------------------------------------------------------------
    @property
    def started(self) -> list["LocalGrid"]:
        """The grids (and gateways) this command started: a read command stops them when it ends."""
        return self._nodes.started

    def grid(self, directory: str | None = None, listen: str | None = None) -> "LocalGrid":
        """The embedded grid, as configured (not started here)."""
        return self._nodes.grid(directory, listen)

    async def ensure_grid(self, grid: "LocalGrid") -> str:
        """Start the embedded grid if needed (off the reactor thread) and wait for its servers."""
        return await self._nodes.ensure_grid(grid)

    async def stop_started(self) -> list[str]:
        """Stop the grids this command started (a read command's, when it ends); the node names."""
        return await self._nodes.stop_started()

    def keep_started(self) -> None:
        """Leave the grids this command started running (a backup: the next one needs them), and
        say so once per grid."""
        self._nodes.keep_started()

    def make_gateway(self, url: str, jobs: int | None = None, attempts: int | None = None) -> Gateway:
        op = self.config.operation
        policy = op.retry if attempts is None else dataclasses.replace(op.retry, attempts=attempts)
        j = jobs or op.jobs
        return Gateway(url, make_http_client(self.rt.reactor, j + 2), self.rt.reactor, policy, j,
                       self.config.debug_requests,
                       limit_bytes=ratelimit.make(op.rate_bytes, self.rt.reactor),
                       limit_objects=ratelimit.make(op.rate_objects, self.rt.reactor),
                       kept=KeptReads(os.path.join(state_dir(), "index-cache"), op.index_cache)
                       if op.index_cache > 0 else None)

    async def url(self) -> str:
        """The gateway base URL: the configured one; else, when the recovery key says how to reach a
        grid, a gateway node of this machine's that joins it; else the embedded grid."""
        if self._url is None:
            from ..config import gateway_base

            configured = self.config.destination.url
            if configured:
                self._url = gateway_base(configured)
            else:
                key = self.explicit_key()
                if key is not None and key.furl is not None and key.furl != self.grid().furl():
                    self._url = await self.ensure_grid(self._nodes.joined_gateway(key))
                else:
                    self._url = await self.ensure_grid(self.grid())
        return self._url

    async def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = self.make_gateway(await self.url())
            if self.rt.op is not None:
                self.rt.op.gateway = self._gateway
        return self._gateway

    def forget_gateway(self) -> None:
        """Find the gateway again on next use (a long-running command whose embedded grid died)."""
        self._url = None
        self._gateway = None

    async def happy(self, gw: GatewayLike | None = None) -> int:
        """The happiness the grid asks of an upload: ``destination.happy``; the embedded grid's own;
        else, for another gateway, the number of storage servers it is connected to now (Tahoe's
        web API does not tell a client its ``shares.happy``)."""
        configured = self.config.destination.happy
        if configured is not None:
            return int(configured)
        if not self.config.destination.url:
            state = self.grid().load()
            return int(state["happy"]) if state else self.config.grid.happy
        gw = gw or await self.gateway()
        return max(1, len(await gw.connected_servers()))

    # -- which grid, and its places (GridPlaces) ----------------------------------------------
    async def grid_id(self) -> str:
        """The id of the grid this command's gateway is on, asked of the gateway once."""
        return await self._places.grid_id()

    def known_grid(self) -> str | None:
        """The grid this command's gateway URL led to last time (None: not known)."""
        return self._places.known_grid()

    async def cache_path(self) -> str:
        """The entry cache of this command's grid (one named the earlier way moved there first)."""
        return await self._places.cache_path()

    async def cache_place(self) -> tuple[str, str | None] | None:
        """Where the entry cache is, and its grid, found without asking the gateway anything."""
        return await self._places.cache_place()

    def known_cache_path(self) -> str | None:
        """Where the entry cache of the grid this gateway URL led to last time is (or would be)."""
        return self._places.known_cache_path()

    async def key_path(self) -> str:
        """Where this machine keeps the recovery key of the repository on this grid."""
        return await self._places.key_path()

    # -- the entry cache (EntryCache) ---------------------------------------------------------
    async def cache(self, reader: bool = False) -> LocalDB:
        """The local database: a writer (the caller holds :meth:`lock`), or a reader."""
        return await self._cache.open(reader)

    async def lock(self, scope: str | None = None) -> CacheLock:
        """Take the entry cache's lock: the scope's alone, or without one the whole cache's."""
        return await self._cache.lock(scope)

    def locked_cache(self, fresh: bool = False, scope: str | None = None) -> AsyncContextManager[LocalDB]:
        """The local database as a writer under its lock, closed and released however the block ends."""
        return self._cache.locked(fresh, scope)

    async def wait_for_lock(self, scope: str | None = None) -> None:
        """Wait until no other run holds the lock :meth:`locked_cache` takes (``scope``: a source's;
        None: the whole cache's), then let it go: raises :class:`CacheBusyError` as it would."""
        (await self._cache.lock(scope)).release()

    # -- the repository (Repositories) --------------------------------------------------------
    def explicit_key(self) -> RepoKey | None:
        """The recovery key given by --repo, LAFS_BACKUP_REPO or ``repository.key_file`` (None: none)."""
        return self._repos.explicit_key()

    async def repo_key(self) -> RepoKey | None:
        """The recovery key: given, or this machine's own (None: there is no repository yet)."""
        return await self._repos.repo_key()

    async def repository(self, create: bool = False) -> Repository | None:
        """The repository (None: none is configured, and ``create`` is False)."""
        return await self._repos.repository(create)

    async def create_repository(self, sealed: Sealed | None = None) -> Repository:
        """Make a repository on the grid and keep its key, mode 0600; say where, once (``sealed``: a
        sealed repository, see :class:`~.repo.Sealed`)."""
        return await self._repos.create_repository(sealed)

    async def other_grid(self, to_url: str, to_repo: str | None = None) -> tuple[str, Gateway, "Repository"]:
        """The grid backups are copied to: its gateway base URL, a gateway to it, and its repository."""
        return await self._repos.other_grid(to_url, to_repo)

    async def backups(self) -> list[Backup]:
        """Every finished backup: the repository's records and this cache's own not recorded yet."""
        return await self._repos.backups()

    def forget_backups(self) -> None:
        """List the backups again on next use (a backup was just recorded)."""
        self._repos.forget_backups()
