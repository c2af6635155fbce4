"""Deciding files before they are read: each one's stat now and the planner's first decision, a batch at a time.

Phase two looks at a file again at its turn and asks the planner
(``store/plan.py``) whether the cache knows that state.  :meth:`Decider.ahead`
does it for a batch of files a little before their turn, in two cache
queries per batch instead of one or two per file, and asks together whether
content was stored from each path to be read before; :meth:`Decider.decide`
and :meth:`Decider.seen` then answer from what was asked.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator

from ..store import plan
from ..store.entry import KIND_FILE, Entry
from ..store.protocols import ObjectCacheLike
from ..store.snapshot import Hit
from .reading import why
from .source import Source

log = logging.getLogger(__name__)

#: A decision and the stat it was made from.
Decided = tuple[plan.Decision, "os.stat_result | None"]
#: Entries read ahead by :meth:`Decider.ahead` to decide their files together: enough for one
#: query to cost little per key; more keeps more objects alive for the garbage collector to visit.
AHEAD = 100


class Decider:
    """The planner's first decision for each file of one backup of ``source``, from its stat now
    and generation ``generation`` of ``cache``.  ``mode`` is the backup's (only ``"stat"`` decides
    files ahead: the others read every file anyway); ``plain``: the cache keys of an unsalted
    store."""

    def __init__(self, source: Source, cache: ObjectCacheLike, generation: int, mode: str, plain: bool) -> None:
        self.source = source
        self.cache = cache
        self.gen = generation
        self.mode = mode
        self._plain = plain
        #: Decisions made by :meth:`ahead` for files not yet at their turn, by path.
        self._ahead: dict[bytes, Decided] = {}
        #: Whether content was stored from a path before, asked by :meth:`ahead` (files to read).
        self._seen_ahead: dict[bytes, bool] = {}

    def _rows(self, keys: list[bytes]) -> dict[bytes, Hit]:
        return self.cache.lookup_many(keys, self.gen)

    def _stat(self, e: Entry) -> tuple[bytes, os.stat_result | None, str]:
        """A file's lstat now, for the planner: (path, stat or None, why it could not be had)."""
        try:
            return e.path, self.source.lstat(e.path), ""
        except OSError as err:
            return e.path, None, why(err)

    def decide(self, e: Entry) -> Decided:
        """The planner's first decision for a file, from its stat now and the cache: the one
        :meth:`ahead` made, else made now."""
        decided = self._ahead.pop(e.path, None)
        if decided is not None:
            return decided
        file = self._stat(e)
        d = plan.for_files([file], self._rows, self.mode, self._plain)[0]
        log.debug("%s: %r", d, e.path)
        return d, file[1]

    def ahead(self, entries: Iterable[Entry], held: bool = False, size: int = AHEAD) -> Iterator[Entry]:
        """``entries`` as they are, while the files among them are decided ``size`` at a time.

        Each batch is stat'ed, then looked up in the cache in two queries (the
        states as they are, then the misses without their inode), instead of one
        or two queries per file; :meth:`decide` then takes the decision made
        here.  The stat is still taken in phase two, a batch before the file's
        turn, so a file changed since the walk is still seen as changed.  With
        ``held``, files the walk marked as held (``watch``) are left to
        :meth:`decide` (they may never be decided); so is every file when the
        mode reads files anyway.
        """
        if self.mode != "stat":
            yield from entries
            return
        batch: list[Entry] = []
        for e in entries:
            batch.append(e)
            if len(batch) >= size:
                self._decide_many(batch, held)
                yield from batch
                batch.clear()
        self._decide_many(batch, held)
        yield from batch

    def _decide_many(self, batch: list[Entry], held: bool) -> None:
        files = [self._stat(e) for e in batch if e.kind == KIND_FILE and not (held and e.extra("hold") is not None)]
        if not files:
            return
        debug = log.isEnabledFor(logging.DEBUG)
        ahead = self._ahead
        to_read: list[bytes] = []
        for (path, st, _), d in zip(files, plan.for_files(files, self._rows, self.mode, self._plain)):
            if debug:
                log.debug("%s: %r", d, path)
            ahead[path] = (d, st)
            if d.action != plan.UNCHANGED and d.action != plan.SKIP:
                to_read.append(path)
        if to_read:  # whether each was stored before (new or changed), asked together too
            seen = self.cache.saw_paths(self.source.label, to_read)
            self._seen_ahead.update((p, p in seen) for p in to_read)

    def seen(self, path: bytes) -> bool:
        """Whether content was stored from ``path`` before: as :meth:`ahead` asked, else asked now."""
        seen = self._seen_ahead.pop(path, None)
        if seen is None:
            seen = self.cache.saw_path(self.source.label, path)
        return seen

