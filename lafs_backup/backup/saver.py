"""Saving one entry: look at it again, let the planner decide, read what must be read, store it.

The saver does the work of one file, symlink or special file; the uploader
(``upload.py``) decides when.  A file is re-stat'ed from the source, then
decided by the planner from the cache (``store/plan.py``): unchanged files are
not read.  Small files are read whole and go into a pack; large ones are
hashed, then uploaded on their own unless their content is known.  A file
that changes while it is read is read once more (a large one from a
private copy), then stored as last read with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from typing import Any, Callable, Iterable, Iterator

from twisted.internet.interfaces import IReactorTime

from ..caps import LIT_MAX, lit_cap
from ..log import NOISE
from ..slots import Slots
from ..store.entry import KIND_FILE, KIND_SOCKET, Entry, kind_of
from ..store.snapshot import Child, Hit, edge_metadata
from ..store import plan
from ..store.store import SourceChanged, Store

log = logging.getLogger(__name__)

#: A decision and the stat it was made from.
Decided = tuple[plan.Decision, "os.stat_result | None"]
#: Entries read ahead by :meth:`FileSaver.ahead` to decide their files together: enough for one
#: query to cost little per key; more keeps more objects alive for the garbage collector to visit.
AHEAD = 100


class FileSaver:
    """Saves the entries of one backup of ``source`` through ``store``.

    ``budget`` bounds the bytes of small files held in memory until their
    pack is uploaded; ``open_files`` bounds the files open at once.  ``clock``
    (None: the gateway's) is the reactor a freed file slot wakes the next file on.
    """

    def __init__(self, source: Any, store: Store, cache: Any, generation: int, reporter: Any,
                 budget: Any, open_files: int = 12, mode: str = "stat",
                 clock: IReactorTime | None = None) -> None:
        self.source = source
        self.store = store
        self.cache = cache
        self.gen = generation
        self.rep = reporter
        self.stats = reporter.stats
        self.budget = budget
        self.mode = mode
        self._files = Slots(open_files, clock if clock is not None else store.gw.clock)
        self._small_max = store.settings.pack_max_file_size
        self._plain = store.settings.plain
        #: Relative paths being read or uploaded right now (for progress and the manhole).
        self.in_flight: set[bytes] = set()
        #: Decisions made by :meth:`ahead` for files not yet at their turn, by path.
        self._ahead: dict[bytes, Decided] = {}
        #: Whether content was stored from a path before, asked by :meth:`ahead` (files to read).
        self._seen_ahead: dict[bytes, bool] = {}

    # -- the planner's first decision -----------------------------------------------------------
    def _key(self, e: Entry, st: os.stat_result) -> bytes:
        return plan.state_key(e.path, st, self._plain)

    def _rows(self, keys: list[bytes]) -> dict[bytes, Hit]:
        return self.cache.lookup_many(keys, self.gen)

    def _stat(self, e: Entry) -> tuple[bytes, os.stat_result | None, str]:
        """A file's lstat now, for the planner: (path, stat or None, why it could not be had)."""
        try:
            return e.path, self.source.lstat(e.path), ""
        except OSError as err:
            return e.path, None, _why(err)

    def decide(self, e: Entry) -> Decided:
        """The planner's first decision for a file, from its stat now and the cache."""
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

    def unchanged_now(self, e: Entry) -> tuple[Child | None, Decided]:
        """An unchanged file's edge straight from the cache, without a task (an unchanged rerun
        never leaves the reactor turn), or None and the decision for :meth:`file` to go on from."""
        d, st = decided = self.decide(e)
        if d.action != plan.UNCHANGED or d.hit is None or st is None:
            return None, decided
        child = self.store.child_now(e, st, d.hit)
        if child is not None:
            self._count_unchanged(e)
        return child, decided

    def _count_unchanged(self, e: Entry) -> None:
        self.stats.files += 1
        self.stats.files_unchanged += 1
        self.stats.bytes_done += e.size

    # -- files -------------------------------------------------------------------------------------
    async def file(self, e: Entry, decided: Decided | None = None) -> Child | None:
        d, st = decided or self.decide(e)
        if d.action == plan.SKIP or st is None:
            self.stats.files += 1
            self.stats.bytes_done += e.size
            self.rep.warn(e.path, f"skipped: {d.reason}")
            return None
        if d.action == plan.UNCHANGED and d.hit is not None:
            self._count_unchanged(e)
            return await self.store.child(e, st, d.hit)
        self.stats.files += 1
        try:
            seen = self._seen_ahead.pop(e.path, None)
            if seen is None:
                seen = self.cache.saw_path(self.source.label, e.path)
            cached = self.cache.lookup(self._key(e, st), self.gen) if self.mode != "stat" else None
            if st.st_size <= self._small_max:
                done = await self._small(e, st.st_size, cached, seen)
            else:
                done = await self._in_slot(e, self._large(e, cached, seen))
            if done is None:
                return None
            child, decision = done
            self.cache.record_path(self.source.label, e.path, self.gen)
            if decision.problem is not None:
                self.rep.problem(e.path, decision.problem)
            if decision.change == "unchanged":
                self.stats.files_unchanged += 1
            elif decision.change == "changed":
                self.stats.files_changed += 1
            else:
                self.stats.files_new += 1
            return child
        finally:
            self.stats.bytes_done += e.size

    async def _in_slot(self, e: Entry, work: Any) -> Any:
        await self._files.acquire()
        self.in_flight.add(e.path)
        try:
            return await work
        finally:
            self.in_flight.discard(e.path)
            self._files.release()

    def _content_decision(self, e: Entry, sha: bytes, cached: Hit | None, seen: bool) -> plan.Decision:
        d = plan.for_content(sha, self.store.known_content(sha), cached, seen, self.mode)
        log.debug("%s: %r", d, e.path)
        return d

    async def _small(self, e: Entry, size: int, cached: Hit | None,
                     seen: bool) -> tuple[Child, plan.Decision] | None:
        """A file that goes into a pack: read whole within the memory budget, then packed unless
        known.  Its bytes count against the budget until its pack is uploaded, or until it turns
        out to be known content (then they are dropped)."""
        packer = self.store.packer
        packer.expect()
        expected = [True]

        def appended() -> None:
            if expected:
                expected.clear()
                packer.expected()

        hold = _Hold(self.budget, await self.budget.take(size))
        try:
            read = await self._in_slot(e, self._read_small(e))  # never hold a slot while waiting for a pack
            if read is None:
                return None
            st, data = read
            sha = hashlib.sha256(data).digest()
            key = self._key(e, st)
            if len(data) <= LIT_MAX:  # the content is the cap: no request
                self.stats.files_lit += 1
                hit = Hit(lit_cap(data), sha)
                self.cache.store_hit(key, hit, self.gen)
                d = plan.for_content(sha, hit, cached, seen, self.mode)
                return await self.store.child(e, st, hit), d
            d = self._content_decision(e, sha, cached, seen)
            box = [data]
            del data

            def drop() -> None:
                box.clear()
                hold.release()

            hit = await self.store.content(sha, len(box[0]), d.hit, lambda: self.store.member(box.pop(), sha, e.path,
                                                                                                  appended),
                                           on_wait=lambda: (drop(), appended()))
            self.cache.store_hit(key, hit, self.gen)
            return await self.store.child(e, st, hit), d
        finally:
            appended()
            hold.release()

    async def _open(self, e: Entry) -> Any:
        """Open a source file for reading (never through a symlink); None after a warning.  A source
        whose opening blocks on the network (an object store's) is opened off the reactor thread."""
        try:
            if getattr(self.source, "blocking", False):
                return await self.store.blocking(self.source.open, e.path)
            return self.source.open(e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None

    def _regular(self, e: Entry, st: os.stat_result) -> bool:
        if stat.S_ISREG(st.st_mode):
            return True
        self.rep.warn(e.path, "skipped: it is no longer a regular file")
        return False

    async def _read_small(self, e: Entry) -> tuple[os.stat_result, bytes] | None:
        """Read a small file whole; read it again once if it changed meanwhile."""
        f = await self._open(e)
        if f is None:
            return None
        try:
            for attempt in (1, 2):
                st = f.fstat()
                if not self._regular(e, st):
                    return None
                data = _read_all(f, st.st_size + 1)
                after = f.fstat()
                self.stats.bytes_read += len(data)
                if len(data) == st.st_size and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                    return st, data
                if attempt == 2:
                    self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
                    return after, data
            raise AssertionError("unreachable")
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        finally:
            f.close()

    async def _large(self, e: Entry, cached: Hit | None, seen: bool) -> tuple[Child, plan.Decision] | None:
        """A file above the pack limit: hashed, then uploaded as its own object unless known.

        A file that changes while it is read (its size or mtime move, or it
        shrinks under an upload) is read once more, the second time from a
        private copy, so what is stored is whole and matches its SHA-256.
        """
        f = await self._open(e)
        if f is None:
            return None
        copy = None
        try:
            for attempt in (1, 2):
                st = f.fstat()
                if not self._regular(e, st):
                    return None
                src, size = f, st.st_size
                if attempt == 2:
                    copy = await self.store.private_copy(f, st.st_size, e.path)
                    src, size = copy, copy.fstat().st_size
                sha = await self.store.hash(src, size)
                self.stats.bytes_read += size
                d = self._content_decision(e, sha, cached, seen)
                try:
                    hit = await self.store.content(sha, size, d.hit,
                                                   lambda: self.store.file(src, size, sha, e.path))
                except SourceChanged:
                    if copy is not None:
                        raise
                    log.info("%r changed while it was uploaded; reading it again", e.path)
                    continue
                after = f.fstat()
                if (hit.sha256 == sha and size == st.st_size
                        and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)):
                    self.cache.store_hit(self._key(e, st), hit, self.gen)
                    break
                if attempt == 1:
                    log.info("%r changed while it was read; reading it again", e.path)
                    continue
                self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
            return await self.store.child(e, st, hit, size), d
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        finally:
            f.close()
            if copy is not None:
                copy.close()

    # -- symlinks and special files ----------------------------------------------------------------
    def still(self, e: Entry, is_type: Callable[[int], bool], what: str) -> os.stat_result | None:
        """lstat an entry again in phase two; None after a warning if it vanished or ``is_type`` fails."""
        try:
            st = self.source.lstat(e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        if not is_type(st.st_mode):
            self.rep.warn(e.path, f"skipped: {what}")
            return None
        return st

    async def symlink(self, e: Entry) -> Child | None:
        self.stats.symlinks += 1
        if self.still(e, stat.S_ISLNK, "it is no longer a symlink") is None:
            return None
        return Child(e.name, await self.store.symlink(e.target or b""), edge_metadata(e))

    async def special(self, e: Entry) -> Child | None:
        """FIFOs, devices and sockets: metadata only (an empty LIT cap), never opened."""
        self.stats.specials += 1
        if self.still(e, lambda mode: kind_of(mode) == e.kind, "its type changed since the scan") is None:
            return None
        if e.kind == KIND_SOCKET:
            self.rep.note_once("sockets", "sockets are recorded but cannot be restored")
        return Child(e.name, lit_cap(b""), edge_metadata(e))


class _Hold:
    """Bytes reserved from a budget, given back exactly once."""

    def __init__(self, budget: Any, n: int) -> None:
        self._budget = budget
        self._n = n

    def release(self) -> None:
        if self._n:
            self._budget.give(self._n)
            self._n = 0


def _read_all(f: Any, size: int) -> bytes:
    parts = []
    pos = 0
    while pos < size:
        chunk = f.pread(size - pos, pos)
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def _why(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a parent was replaced by a file
        return "it vanished since the scan"
    return err.strerror or str(err)


__all__ = ["FileSaver", "NOISE"]
