"""Which grid this command's gateway is on, and where this machine keeps that grid's entry cache and
recovery key.

The entry cache and the recovery key are one per grid, named by the grid's id
(``system/grids.py``), not by the gateway's URL: any URL or port of a grid's
gateway finds them, and a command on another grid never opens them.  Those
named by URL before (and ``source.entry_cache.path`` itself, which now names a
directory or a prefix) are moved to their grid's name on first use."""

from __future__ import annotations

import glob
import hashlib
import os
from typing import TYPE_CHECKING

from ..config import Config
from ..db.database import move_cache, owner
from ..engine.runtime import Runtime
from ..errors import GridError
from ..grid.gateway import Gateway
from ..system import grids
from ..system.lock import CacheLock
from ..system.places import state_dir
from .nodes import Gateways, Nodes

if TYPE_CHECKING:
    from ..report import Reporter


class GridPlaces:
    """Which grid this command is on (asked of its gateway once, or found in this machine's registry
    of grids without asking), and that grid's entry cache and key file, moved there from where an
    earlier version kept them."""

    def __init__(self, config: Config, rt: Runtime, gateways: Gateways, nodes: Nodes) -> None:
        self.config = config
        self.rt = rt
        self._gateways = gateways
        self._nodes = nodes
        self._grid_id: str | None = None
        self._cache_path: str | None = None

    # -- which grid --------------------------------------------------------------------------
    async def grid_id(self) -> str:
        """The id of the grid this command's gateway is on (see ``system/grids.py``), asked of the
        gateway once.  Raises :class:`GridError` if it cannot tell."""
        if self._grid_id is None:
            self._grid_id = await self.identify(await self._gateways.gateway())
        return self._grid_id

    async def identify(self, gw: Gateway) -> str:
        """The id of the grid behind ``gw``, from the storage servers it knows (``GET /?t=json``),
        recorded in this machine's registry of grids."""
        info = await gw.welcome()
        servers = [str(s["nodeid"]) for s in (info.get("servers") or []) if isinstance(s, dict) and s.get("nodeid")]
        try:
            grid = await self.rt.in_thread(grids.record, registry_path(), servers, gw.base)
        except ValueError:
            raise GridError(problem=f"the gateway at {gw.base} knows no storage server yet, so which grid it is "
                                    "on (and which entry cache is its) cannot be told; run again once it is "
                                    "connected") from None
        return grid.id

    def known_grid(self) -> str | None:
        """The grid this command's gateway URL led to last time, found without asking the gateway
        anything (None: not known)."""
        from ..config import gateway_base

        if self._grid_id is not None:
            return self._grid_id
        url = self.config.destination.url
        if url:
            url = gateway_base(url)
        else:
            state = self._nodes.grid().load()
            url = state.get("url") if state else None
        if not url:
            return None
        found = grids.by_url(grids.load(registry_path()), url)
        return found.id if found is not None else None

    # -- the entry cache ----------------------------------------------------------------------
    async def cache_path(self) -> str:
        """The entry cache of this command's grid (see :func:`cache_file`); a cache of this grid
        named before caches were named by grid is moved there first."""
        if self._cache_path is None:
            gid = await self.grid_id()
            path = cache_file(self.config.source.cache_path, gid)
            if not os.path.exists(path):
                await self._adopt_cache(path, gid)
            self._cache_path = path
        return self._cache_path

    async def _adopt_cache(self, path: str, gid: str) -> None:
        """Move the cache of grid ``gid`` made before caches were named by grid to ``path``
        (with its files beside it), if there is one: the file ``source.entry_cache.path`` named
        (if it was used with this gateway URL), or the one named by this gateway's URL (or the
        embedded grid's).  Under the old file's lock, so that no run writes it meanwhile."""
        url = await self._gateways.url()
        for old, by_name in self._legacy_caches(url):
            if not os.path.isfile(old):
                continue
            grid, used_with = await self.rt.in_thread(owner, old)
            if not (grid == gid or (grid is None and (by_name or used_with == url))):
                continue  # another grid's (or one this URL never used)
            lock = CacheLock(old + ".lock", self.rt.reporter)
            await lock.acquire_waiting(self.config.operation.lock_wait, self.rt.reactor)
            try:
                if os.path.exists(path) or not os.path.isfile(old):
                    return  # another command moved it meanwhile
                os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
                move_cache(old, path)
                for trees in glob.glob(glob.escape(old) + ".trees.*"):
                    os.replace(trees, path + trees[len(old):])
            finally:
                lock.release()
            self.rt.reporter.note_once("cache-moved", f"the entry cache {old} is now {path}: each grid has its "
                                                      "own cache, named by the grid rather than the gateway's URL")
            return

    def _legacy_caches(self, url: str) -> list[tuple[str, bool]]:
        """The caches an earlier version may have made for this gateway: each path, and whether its
        name says it is this gateway's (else the URL it was used with must)."""
        out = []
        configured = self.config.source.cache_path
        if configured:
            out.append((configured, False))
        name = ("entry-cache." + hashlib.sha256(url.encode()).hexdigest()[:12] + ".sqlite"
                if self.config.destination.url else "entry-cache.local.sqlite")
        out.append((os.path.join(state_dir(), name), True))
        return out

    async def cache_place(self) -> tuple[str, str | None] | None:
        """Where the entry cache is, and its grid, found without asking the gateway anything
        (None: the grid is not known, or it has no cache yet)."""
        gid = self.known_grid()
        if gid is None:
            return None
        path = cache_file(self.config.source.cache_path, gid)
        return (path, gid) if os.path.exists(path) else None

    def known_cache_path(self) -> str | None:
        """Where the entry cache of the grid this gateway URL led to last time is (or would be),
        found without asking the gateway anything (None: the grid is not known)."""
        gid = self.known_grid()
        return cache_file(self.config.source.cache_path, gid) if gid is not None else None

    # -- the recovery key ---------------------------------------------------------------------
    async def key_path(self) -> str:
        """Where this machine keeps the recovery key of the repository on this grid (mode 0600):
        named by the grid (known from an earlier command if it is, so that printing the key needs
        no gateway); one named by this gateway's URL before is moved there."""
        if self.config.repository.key_file:
            return self.config.repository.key_file
        gid = self.known_grid() or await self.grid_id()
        legacy = (hashlib.sha256((await self._gateways.url()).encode()).hexdigest()[:12]
                  if self.config.destination.url else "local")
        return adopt_key(key_path_for(gid), key_path_for(legacy), self.rt.reporter)


def registry_path() -> str:
    """This machine's registry of grids (``system/grids.py``)."""
    return os.path.join(state_dir(), "grids.json")


def cache_file(configured: str | None, grid: str) -> str:
    """The entry cache of ``grid``: ``entry-cache.<grid>.sqlite`` in the state directory, or in the
    directory ``source.entry_cache.path`` names (one that exists, or a path ending in ``/``); any
    other path is a prefix: ``/x/cache.sqlite`` gives ``/x/cache.<grid>.sqlite``."""
    name = f"entry-cache.{grid}.sqlite"
    if not configured:
        return os.path.join(state_dir(), name)
    if configured.endswith(os.sep) or os.path.isdir(configured):
        return os.path.join(configured, name)
    stem, ext = os.path.splitext(configured)
    return f"{stem}.{grid}{ext or '.sqlite'}"


def key_path_for(name: str) -> str:
    """Where this machine keeps the recovery key of the repository on grid ``name`` (an id of
    ``system/grids.py``; before, a digest of the gateway's URL, or ``local`` for the embedded grid)."""
    return os.path.join(state_dir(), "repositories", f"{name}.key")


def adopt_key(path: str, legacy: str, reporter: "Reporter") -> str:
    """``path``, the grid's key file; the key file named the earlier way (``legacy``) is moved there
    first if the grid has none (never replacing one).  Returns ``path``."""
    if os.path.exists(path) or not os.path.exists(legacy):
        return path
    try:
        os.link(legacy, path)  # (fails if another command made one meanwhile)
    except FileExistsError:
        return path
    except OSError:
        return legacy  # (a file system without links: leave it where it is)
    os.unlink(legacy)
    reporter.note_once("key-moved", f"the recovery key {legacy} is now {path}: keys are named by the grid, "
                                    "not the gateway's URL")
    return path
