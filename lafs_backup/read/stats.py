"""Stats: what each backup holds and what it added, and what the whole repository stores, read from the
snapshots' indexes (or, for a snapshot without one, its directory listings) and never a file's content.

Backups are counted oldest first.  Each index chunk and each directory is read and counted once
however many backups share it (:mod:`.tally` keeps one small record per directory, none per file),
and a backup's objects that no older backup held are what it added.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Iterator

from twisted.internet.defer import Deferred, FirstError, gatherResults

from ..errors import SnapshotError
from ..store.index import BadIndex
from ..store.snapshot import INDEX, OBJECTS, TREE, BadSnapshot, index_caps, is_dir_id, parse_root
from .reader import Reader
from .tally import (INDEX as INDEX_OBJECT, OTHER, BackupFigures, Counts, DirTally, DistinctContents,
                    RepositoryFigures, StoredObject, figures, missing, object_key, repository, stored_object, tally,
                    tree_counts, tree_objects)

log = logging.getLogger(__name__)


class Tally:
    """Counts backups through ``reader`` (one made with ``use_index=False``: chunks are read here
    one at a time, not kept), ``jobs`` chunks or listings at a time.  Call :meth:`backup` for every
    recorded backup, oldest first, then :meth:`repository`."""

    def __init__(self, reader: Reader, jobs: int = 4) -> None:
        self.reader = reader
        self.jobs = max(1, jobs)
        #: Every directory counted so far, by cap.
        self._table: dict[str, DirTally] = {}
        #: Each directory's subtree counts, once computed.
        self._memo: dict[str, Counts] = {}
        #: Every object any backup counted so far holds, by key.
        self._objects: dict[int, StoredObject] = {}
        #: The objects the backups counted so far held (an object not in it is new to a backup).
        self._seen: set[int] = set()
        self._contents = DistinctContents()
        self._chunks_read: set[str] = set()
        self._by_cap: dict[str, BackupFigures] = {}
        self._backups = 0
        self._logical = 0
        #: Index chunks and directory listings read from the grid.
        self.chunks = 0
        self.listings = 0

    async def backup(self, cap: str) -> BackupFigures:
        """The figures of the snapshot ``cap``, against the backups counted before it.  Raises
        :class:`SnapshotError` (not a snapshot, a directory its index alone holds is missing) or
        :class:`GatewayError`."""
        self._backups += 1
        again = self._by_cap.get(cap)
        if again is not None:  # the same snapshot recorded twice: the second adds nothing
            self._logical += again.counts.bytes
            return BackupFigures(again.counts, again.objects, again.stored_bytes, 0, 0)
        started = time.monotonic()
        listing = await self.reader.gw.get_json(cap)
        try:
            tree = parse_root(listing)
            children: dict[str, Any] = listing[1].get("children") or {}
        except (BadSnapshot, AttributeError, IndexError, KeyError, TypeError) as e:
            raise SnapshotError(what="(given)", problem=str(e) or "not a lafs-backup snapshot")
        own: set[int] = set()
        self._own(cap, OTHER, own)
        for name in (TREE, OBJECTS, INDEX):  # (the tree's marker or Tahoe directory, the objects and index lists)
            self._own(_linked(children, name), OTHER, own)
        index = _linked(children, INDEX)
        if index is not None:
            chunks = index_caps(await self.reader.gw.get_json(index))
            for chunk in chunks:
                self._own(chunk, INDEX_OBJECT, own)
            await self._read_chunks(chunks)
        await self._complete(tree.cap)
        counts = Counts(dirs=1) + tree_counts(tree.cap, self._table, self._memo)  # (the root is a directory too)
        held = tree_objects(tree.cap, self._table) | own
        fig = self._by_cap[cap] = figures(counts, held, self._seen, self._objects)
        self._logical += counts.bytes
        log.info("stats: %d entries counted in %.2f s (%d chunks, %d listings read so far)",
                 counts.files + counts.dirs + counts.symlinks + counts.specials, time.monotonic() - started,
                 self.chunks, self.listings)
        return fig

    def repository(self) -> RepositoryFigures:
        """The figures of every backup counted."""
        return repository(self._backups, self._logical, self._contents, self._objects)

    # -- inside ------------------------------------------------------------------------------------
    def _own(self, cap: str | None, kind: int, into: set[int]) -> None:
        """A snapshot's own object (its root, lists, index chunks): counted, if it is stored."""
        obj = stored_object(cap, kind) if cap is not None else None
        if cap is not None and obj is not None:
            key = object_key(cap)
            self._objects.setdefault(key, obj)
            into.add(key)

    def _add(self, cap: str, children: Any) -> None:
        """Count the directory ``cap`` from its children (a record's or a listing's)."""
        if cap in self._table:
            return
        try:
            if not isinstance(children, dict):
                raise ValueError("not a directory record")
            found = tally(children, None if is_dir_id(cap) else cap)
        except ValueError as e:
            raise SnapshotError(what="(given)", problem=f"a directory of the snapshot cannot be read: {e}")
        self._table[sys.intern(cap)] = found.tally
        for key, obj in found.objects.items():
            self._objects.setdefault(key, obj)
        self._contents.add(found.contents)

    async def _read_chunks(self, chunks: list[str]) -> None:
        """Count the directories of the index chunks not read yet, ``jobs`` chunks at a time (each
        chunk's records are counted and let go before the worker takes the next)."""
        todo = iter([c for c in dict.fromkeys(chunks) if c not in self._chunks_read])

        async def worker() -> None:
            for chunk in todo:
                if chunk in self._chunks_read:
                    continue
                self._chunks_read.add(chunk)
                try:
                    records = await self.reader.chunk_records(chunk)
                except BadIndex as e:
                    # Its directories are read from the grid instead (see _complete).
                    log.warning("an index chunk cannot be used (%s); its directories are read one by one", e)
                    continue
                self.chunks += 1
                for dircap, body, _names in records:
                    if dircap not in self._table:
                        try:
                            children = json.loads(body)
                        except ValueError:
                            raise SnapshotError(what="(given)", problem="an index record is not a directory")
                        self._add(dircap, children)

        await _gather(worker() for _ in range(self.jobs))

    async def _complete(self, root: str) -> None:
        """Read from the grid the directories of the tree below ``root`` that no index held (a
        snapshot without one is read this way whole), a level at a time, ``jobs`` at a time."""
        while True:
            lacking = missing(root, self._table)
            if not lacking:
                return
            if any(is_dir_id(cap) for cap in lacking):
                raise SnapshotError(what="(given)", problem=(
                    "a directory is missing from the snapshot index, which alone holds it (an index chunk "
                    "could not be read; `check --repair` may restore its shares)"))
            todo = iter(lacking)

            async def worker() -> None:
                for cap in todo:
                    listing = await self.reader.raw_listing(cap)
                    self.listings += 1
                    try:
                        children = listing[1]["children"]
                    except (IndexError, KeyError, TypeError):
                        raise SnapshotError(what="(given)", problem="a directory listing is not one")
                    self._add(cap, children)

            await _gather(worker() for _ in range(self.jobs))


def _linked(children: dict[str, Any], name: str) -> str | None:
    """The cap a snapshot root links under ``name`` (None: none)."""
    edge = children.get(name)
    if isinstance(edge, list) and len(edge) == 2 and isinstance(edge[1], dict):
        cap = edge[1].get("ro_uri")
        return cap if isinstance(cap, str) else None
    return None


async def _gather(workers: Iterator[Any]) -> None:
    """Run the worker coroutines together; the first failure is raised as itself."""
    try:
        await gatherResults([Deferred.fromCoroutine(w) for w in workers], consumeErrors=True)
    except FirstError as e:
        err = e.subFailure.value
        assert isinstance(err, BaseException)
        raise err from None


async def count(reader: Reader, caps: list[str], jobs: int = 4) -> tuple[list[BackupFigures], RepositoryFigures]:
    """The figures of the snapshots ``caps`` (every recorded backup, oldest first: what one added is
    counted against those before it), and of the repository they make up."""
    t = Tally(reader, jobs)
    each = [await t.backup(cap) for cap in caps]
    return each, t.repository()
