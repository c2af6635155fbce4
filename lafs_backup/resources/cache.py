"""The entry cache of this command's grid (the local database): opened as a reader, which works while
runs write, or as a writer under its lock (a run's own scope beside other runs', or the whole cache's),
and moved aside for a fresh start."""

from __future__ import annotations

import contextlib
import os
from typing import AsyncIterator

from ..config import Config
from ..db.database import move_aside
from ..db.local import LocalDB
from ..engine.runtime import Runtime
from ..system.lock import CacheLock
from .places import GridPlaces


class EntryCache:
    """Opens the entry cache that ``places`` finds for this command's grid, and takes its lock."""

    def __init__(self, config: Config, rt: Runtime, places: GridPlaces) -> None:
        self.config = config
        self.rt = rt
        self._places = places

    async def open(self, reader: bool = False) -> LocalDB:
        """The local database in the entry cache file: a writer (the caller holds :meth:`lock`), or
        a reader, which works while runs write."""
        s = self.config.source
        return LocalDB(await self._places.cache_path(), await self._places.grid_id(), s.commit_rows,
                       s.commit_seconds, reader=reader)

    async def lock(self, scope: str | None = None) -> CacheLock:
        """Take the entry cache's lock, waiting up to ``operation.lock_wait`` seconds for a holder:
        with ``scope`` (``system.lock.source_scope``, ``copy_scope``), the scope's alone, beside
        runs of other scopes; without, the whole cache's (no other run at all)."""
        path = await self._places.cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = CacheLock(path + ".lock", self.rt.reporter, scope)
        await lock.acquire_waiting(self.config.operation.lock_wait, self.rt.reactor)
        return lock

    @contextlib.asynccontextmanager
    async def locked(self, fresh: bool = False, scope: str | None = None) -> AsyncIterator[LocalDB]:
        """The local database (the entry cache file) as a writer: its lock taken (see :meth:`lock`;
        ``scope``: the run's own), it opened, and both given back however the block ends (a
        reactor shutdown closes it too).
        ``fresh``: the cache there is moved aside (under the whole cache's lock, whatever
        ``scope`` says) and a new one started."""
        lock = await self.lock(None if fresh else scope)
        try:
            if fresh:
                cpath = await self._places.cache_path()
                if os.path.exists(cpath):
                    moved = move_aside(cpath)
                    self.rt.reporter.note_once("cache", f"moved the entry cache aside to {moved} (it still lists "
                                                        "the backups recorded before); starting a new one")
            cache = await self.open()
            shutdown = self.rt.reactor.addSystemEventTrigger("before", "shutdown", cache.close)
            try:
                yield cache
            finally:
                try:
                    self.rt.reactor.removeSystemEventTrigger(shutdown)
                except ValueError:
                    pass  # the reactor is already shutting down (a signal): the trigger ran
                cache.close()
        finally:
            lock.release()
