"""Deciding files before they are read: each one's stat now and the planner's first decision, a batch at a time.

Phase two looks at a file again at its turn and asks the planner
(``store/plan.py``) whether the cache knows that state.  :meth:`Decider.ahead`
does it for a batch of files a little before their turn, in two cache
queries per batch instead of one or two per file, and asks together whether
content was stored from each path to be read before; :meth:`Decider.decide`
and :meth:`Decider.seen` then answer from what was asked.  A file whose state
as the walk found it the cache has never seen is decided from the walk's
stat (it is opened and fstat'ed as it is read); only the others are stat'ed
again.
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
        #: Whether the next batch first asks which states the cache knows (see :meth:`_unknown_read`).
        self._peek = True

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
        entries = [e for e in batch if e.kind == KIND_FILE and not (held and e.extra("hold") is not None)]
        if not entries:
            return
        debug = log.isEnabledFor(logging.DEBUG)
        ahead = self._ahead
        to_read: list[bytes] = []
        again = self._unknown_read(entries, to_read) if self._peek else entries
        # (a batch mostly known, as in a rerun, makes the next one skip the first question)
        self._peek = len(again) * 2 < len(entries)
        files = [self._stat(e) for e in again]
        for (path, st, _), d in zip(files, plan.for_files(files, self._rows, self.mode, self._plain)):
            if debug:
                log.debug("%s: %r", d, path)
            ahead[path] = (d, st)
            if d.action != plan.UNCHANGED and d.action != plan.SKIP:
                to_read.append(path)
        if to_read:  # whether each was stored before (new or changed), asked together too
            seen = self.cache.saw_paths(self.source.label, to_read)
            self._seen_ahead.update((p, p in seen) for p in to_read)

    def _unknown_read(self, entries: list[Entry], to_read: list[bytes]) -> list[Entry]:
        """Decide to read every file whose state, as the walk found it, the cache has never seen
        (asked without marking any row used): it is opened and fstat'ed as it is read, so it is
        not stat'ed again now (a first backup's files, each new one).  Returns the others, to be
        stat'ed now and looked up, so that a file changed since the walk is seen as changed."""
        walked = [(e.path, walk_stat(e)) for e in entries]
        keys = [(plan.state_key(p, st, self._plain), plan.state_key(p, st, self._plain, inode=False))
                for p, st in walked]
        known = self.cache.known_keys([k for pair in keys for k in pair])
        again = []
        debug = log.isEnabledFor(logging.DEBUG)
        for e, (path, st), (key, bare) in zip(entries, walked, keys):
            if key in known or bare in known:
                again.append(e)
                continue
            d = plan.for_file(st, None, self.mode)
            if debug:
                log.debug("%s: %r", d, path)
            self._ahead[path] = (d, st)
            to_read.append(path)
        return again

    def seen(self, path: bytes) -> bool:
        """Whether content was stored from ``path`` before: as :meth:`ahead` asked, else asked now."""
        seen = self._seen_ahead.pop(path, None)
        if seen is None:
            seen = self.cache.saw_path(self.source.label, path)
        return seen


def walk_stat(e: Entry) -> os.stat_result:
    """The stat phase one recorded for an entry, as an ``os.stat_result`` (times to the nanosecond;
    access time, block counts and device numbers zero)."""
    return os.stat_result((e.mode, e.ino, e.dev, e.nlink, e.uid, e.gid, e.size, 0, e.mtime_ns // 10**9,
                           e.ctime_ns // 10**9, 0.0, e.mtime_ns / 1e9, e.ctime_ns / 1e9, 0, e.mtime_ns,
                           e.ctime_ns, 0, 0, 0))
