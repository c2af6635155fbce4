"""Saving one entry: look at it again, let the planner decide, read what must be read, store it.

The saver does the work of one file, symlink or special file; the uploader
(``upload.py``) decides when.  A file is re-stat'ed from the source, then
decided by the planner from the cache (``decider.py``, often a batch ahead):
unchanged files are not read.  Small files are read whole and go into a
pack; large ones are hashed, then uploaded on their own unless their content
is known.  A file that changes while it is read is read once more (a large
one from a private copy), then stored as last read with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

from twisted.internet.interfaces import IReactorTime

from ..caps import LIT_MAX, lit_cap
from ..log import NOISE
from ..protocols import ReporterLike
from ..slots import Slots
from ..store.entry import KIND_SOCKET, Entry, kind_of
from ..store.snapshot import Child, Hit, edge_metadata, extents_key
from ..store import plan
from ..store.protocols import ObjectCacheLike, ReadAt, StoreLike
from ..store.store import SourceChanged
from ..system.sparse import EXTENTS, ExtentView, Layout, as_cap, from_cache
from .decider import AHEAD, Decided, Decider
from .reading import SourceReader, read_all, why
from .budget import Budget, Held
from .source import Source

log = logging.getLogger(__name__)

T = TypeVar("T")


class FileSaver:
    """Saves the entries of one backup of ``source`` through ``store``.

    ``budget`` bounds the bytes of small files held in memory until their
    pack is uploaded; ``open_files`` bounds the files open at once.  ``clock``
    (None: the gateway's) is the reactor a freed file slot wakes the next file on.
    """

    def __init__(self, source: Source, store: StoreLike, cache: ObjectCacheLike, generation: int,
                 reporter: ReporterLike, budget: Budget, open_files: int = 12, mode: str = "stat",
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
        #: Large files with holes are stored as their data and its layout (``system.sparse``): not
        #: in a plain tree (each file exactly its bytes) nor in one of Tahoe directories (whose
        #: edges Tahoe's own tools read as the file).
        self._sparse = not self._plain and store.settings.tree_in_index
        #: Relative paths being read or uploaded right now (for progress and the manhole).
        self.in_flight: set[bytes] = set()
        #: The planner's first decision for each file, often made a batch ahead.
        self.decider = Decider(source, cache, generation, mode, self._plain)
        #: Opens the source's files and reads small ones whole.
        self.reading = SourceReader(source, reporter, store.blocking)

    # -- the planner's first decision -----------------------------------------------------------
    def _key(self, e: Entry, st: os.stat_result) -> bytes:
        return plan.state_key(e.path, st, self._plain)

    def decide(self, e: Entry) -> Decided:
        """The planner's first decision for a file (:meth:`Decider.decide`)."""
        return self.decider.decide(e)

    def ahead(self, entries: Iterable[Entry], held: bool = False, size: int = AHEAD) -> Iterator[Entry]:
        """``entries`` as they are, while their files are decided ``size`` at a time (:meth:`Decider.ahead`)."""
        return self.decider.ahead(entries, held, size)

    def unchanged_now(self, e: Entry) -> tuple[Child | None, Decided]:
        """An unchanged file's edge straight from the cache, without a task (an unchanged rerun
        never leaves the reactor turn), or None and the decision for :meth:`file` to go on from."""
        decided, layout = self._reuse(e, self.decide(e))
        d, st = decided
        if d.action != plan.UNCHANGED or d.hit is None or st is None:
            return None, decided
        child = self.store.child_now(e, st, d.hit)
        if child is not None and layout is not None:
            child = _with_layout(child, layout)
        if child is not None:
            self._count_unchanged(e)
        return child, decided

    def _reuse(self, e: Entry, decided: Decided) -> tuple[Decided, Layout | None]:
        """An unchanged file's decision and where its data lies (None: a dense file), from the
        cache row kept beside its state's when it was stored sparse; READ when such a layout
        cannot be recorded in this backup (its tree in Tahoe directories)."""
        d, st = decided
        if (d.action != plan.UNCHANGED or d.hit is None or st is None or self._plain
                or st.st_size <= self._small_max):
            return (d, st), None
        key = self._layout_key(e, st)
        row = self.cache.lookup(key, self.gen)
        layout = from_cache(row.cap, st.st_size) if row is not None and row.sha256 == d.hit.sha256 else None
        if layout is not None and not self._sparse:
            return (plan.Decision(plan.READ, "stored sparse, which a tree of Tahoe directories cannot record"),
                    st), None
        return (d, st), layout

    def _comparable(self, e: Entry, st: os.stat_result, cached: Hit | None, layout: Layout | None) -> Hit | None:
        """The cache row of a file's state (``--mode checksum``, ``verify``) if its SHA-256 is of
        what was read now: the whole file both times, or the data of the same layout; else None
        (a file stored whole by an earlier version, now read sparse, is not silent corruption)."""
        if cached is None or self._plain:
            return cached
        row = self.cache.lookup(self._layout_key(e, st), self.gen)
        was = from_cache(row.cap, st.st_size) if row is not None and row.sha256 == cached.sha256 else None
        return cached if was == layout else None

    def _layout_key(self, e: Entry, st: os.stat_result) -> bytes:
        """The cache key of a sparse file's layout in state ``st`` (by its state as a snapshot
        records it, without its inode, so a cache rebuilt from snapshots has it too)."""
        return extents_key(plan.state_key(e.path, st, self._plain, inode=False))

    def _count_unchanged(self, e: Entry) -> None:
        self.stats.files += 1
        self.stats.files_unchanged += 1
        self.stats.bytes_done += e.size

    # -- files -------------------------------------------------------------------------------------
    async def file(self, e: Entry, decided: Decided | None = None) -> Child | None:
        (d, st), layout = self._reuse(e, decided or self.decide(e))
        if d.action == plan.SKIP or st is None:
            self.stats.files += 1
            self.stats.bytes_done += e.size
            self.rep.warn(e.path, f"skipped: {d.reason}")
            return None
        if d.action == plan.UNCHANGED and d.hit is not None:
            self._count_unchanged(e)
            child = await self.store.child(e, st, d.hit)
            return child if layout is None else _with_layout(child, layout)
        self.stats.files += 1
        try:
            seen = self.decider.seen(e.path)
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

    async def _in_slot(self, e: Entry, work: Awaitable[T]) -> T:
        await self._files.acquire()
        self.in_flight.add(e.path)
        try:
            return await work
        finally:
            self.in_flight.discard(e.path)
            self._files.release()

    def _content_decision(self, e: Entry, sha: bytes, cached: Hit | None, seen: bool) -> plan.Decision:
        d = plan.for_content(sha, self.store.known_contents([sha]).get(sha), cached, seen, self.mode)
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

        hold = Held(self.budget, await self.budget.take(size))
        try:
            read = await self._in_slot(e, self.reading.read_small(e))  # never hold a slot while waiting for a pack
            if read is None:
                return None
            st, data = read
            sha = hashlib.sha256(data).digest()
            key = self._key(e, st)
            if len(data) <= LIT_MAX:  # the content is the cap: no request
                self.stats.files_lit += 1
                hit = Hit(lit_cap(data), sha)
                self.cache.store_state(key, hit, self.gen)
                d = plan.for_content(sha, hit, cached, seen, self.mode)
                return await self.store.child(e, st, hit), d
            d = self._content_decision(e, sha, cached, seen)
            box = [data]
            del data

            def drop() -> None:
                box.clear()
                hold.rest()
                appended()

            hit = await self.store.content(sha, len(box[0]), d.hit, lambda: self.store.member(box.pop(), sha, e.path,
                                                                                                  appended),
                                           on_wait=drop)
            self.cache.store_state(key, hit, self.gen)
            return await self.store.child(e, st, hit), d
        finally:
            appended()
            hold.rest()

    async def _large(self, e: Entry, cached: Hit | None, seen: bool) -> tuple[Child, plan.Decision] | None:
        """A file above the pack limit: hashed, then uploaded as its own object unless known.

        A file that changes while it is read (its size or mtime move, or it
        shrinks under an upload) is read once more, the second time from a
        private copy, so what is stored is whole and matches its SHA-256.

        A file with holes (where ``_sparse``) is stored as the concatenation of
        its data extents, hashed and deduplicated as such, and its edge and
        the cache record where that data lies (``system.sparse``).
        """
        f = await self.reading.open(e)
        if f is None:
            return None
        copy = None
        try:
            for attempt in (1, 2):
                st = f.fstat()
                if not self.reading.regular(e, st):
                    return None
                layout = self.reading.layout(f, st.st_size) if self._sparse else None
                src: ReadAt = f if layout is None else ExtentView(f, layout)
                size = expected = st.st_size if layout is None else layout.data_size
                if attempt == 2:
                    copy = await self.store.private_copy(src, size, e.path)
                    src, size = copy, copy.fstat().st_size
                    if layout is not None and size != expected:
                        layout = layout.cut(size)  # (what it holds is what its edge says)
                sha = await self.store.hash(src, size)
                self.stats.bytes_read += size
                d = self._content_decision(e, sha, self._comparable(e, st, cached, layout), seen)
                try:
                    if layout is not None and size <= LIT_MAX:  # next to no data: its cap holds it
                        data = read_all(src, size)
                        hit = Hit(lit_cap(data), hashlib.sha256(data).digest())
                    else:
                        hit = await self.store.content(sha, size, d.hit,
                                                       lambda: self.store.file(src, size, sha, e.path))
                except SourceChanged:
                    if copy is not None:
                        raise
                    log.info("%r changed while it was uploaded; reading it again", e.path)
                    continue
                after = f.fstat()
                if (hit.sha256 == sha and size == expected
                        and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)):
                    if layout is not None:  # (written beside the state's row, in the same commit)
                        self.cache.store(self._layout_key(e, st), as_cap(layout), self.gen, hit.sha256)
                    self.cache.store_state(self._key(e, st), hit, self.gen)
                    break
                if attempt == 1:
                    log.info("%r changed while it was read; reading it again", e.path)
                    continue
                self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
            if layout is not None:
                log.debug("sparse: %r (%d bytes of data in %d extents, %d bytes in all)", e.path, size,
                          len(layout.extents), layout.size)
                return _with_layout(await self.store.child(e, st, hit), layout), d
            return await self.store.child(e, st, hit, size), d
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {why(err)}")
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
            self.rep.warn(e.path, f"skipped: {why(err)}")
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


def _with_layout(child: Child, layout: Layout) -> Child:
    """A sparse file's edge: its object holds the data, its ``extents`` where that data lies."""
    return Child(child.name, child.cap, {**child.metadata, EXTENTS: layout.as_json()})


__all__ = ["FileSaver", "NOISE"]
