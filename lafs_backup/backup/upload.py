"""Phase two's scheduler: stream the queue into tasks, within bounds, and assemble the snapshot.

Entries arrive children-first.  An entry the cache settles at once (an
unchanged file, a directory whose body is stored) costs no task, so an
unchanged rerun never leaves the loop.  Every other file, symlink or
special file becomes a task of the saver (``saver.py``); a directory
becomes a task that waits for its children, then has the store make it.
Two budgets bound memory: the window (entries in flight, a directory
weighing as much as the results it holds) and the bytes of small files
waiting for their pack.  Deeper directories get their slot first: they are
on the longest chain to the root.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from ..errors import QueueError
from ..store.entry import KIND_DIR, KIND_FILE, KIND_LINK, Entry
from ..store.index import IndexWriter
from ..store.snapshot import Child, body_names, child_names, dir_body, edge_metadata
from ..store.store import Store, temp_file, write_all
from .saver import FileSaver

log = logging.getLogger(__name__)

#: Marks a subtree that failed fatally (the error is kept on the uploader).
_FAILED = object()
#: Marks the index record of a subtree the walk kept whole (its records are the previous index's).
_REUSED = object()
#: Entries handled between two returns to the reactor, so signals and timers stay live.
_SLICE = 2000
#: The most chunks an index carried over from snapshot to snapshot (by ``watch``'s incremental
#: rounds) may reach; past that a round's snapshot is read through its directories until the next
#: full walk writes a fresh index.
INDEX_CARRIED_MAX = 256
#: Bytes of index records held in memory while they wait for a directory before them.
_INDEX_HELD = 16 << 20


@dataclass(frozen=True)
class Settings:
    """How phase two is scheduled (from the configuration)."""

    window: int = 4000
    open_files: int = 12
    mode: str = "stat"


class Uploader:
    """Runs phase two for one backup: ``source`` is read, ``store`` stores, ``cache`` remembers."""

    def __init__(self, source: Any, store: Store, cache: Any, generation: int, reporter: Any,
                 settings: Settings = Settings(), clock: Any = None,
                 on_dir: Callable[[bytes, str], None] | None = None,
                 hold: Callable[[Entry, Callable[[], Awaitable[Any]]], Awaitable[Child | None]] | None = None,
                 index_base: Sequence[str] | None = None, settled: Any = None, records: Any = None) -> None:
        """``on_dir(path, cap)`` is told every directory's cap as it is settled (``watch`` keeps
        them for its next round); ``hold(entry, save)`` gives the edge of a file the walk marked as
        still being written: its previous edge, None to leave it out this time, or what ``save()``
        (storing it as it is now) gives.  ``index_base`` is the index of the snapshot whose
        directories the queue's ``reuse`` entries keep: this snapshot's index links its chunks too.

        ``settled`` is the trees file of the previous backup (``settled.py``) when the walk kept
        subtrees of it whole (their ``reuse`` entries carry ``settled`` counts), and ``records``
        gives their index records; the uploader then lists, in :attr:`trees`, every directory
        of this snapshot stored without a problem, for the next backup's walk."""
        self.store = store
        self.rep = reporter
        self.stats = reporter.stats
        self.settings = settings
        self._clock = clock
        packer = store.packer
        s = store.settings
        # Small files read but not yet stored in an uploaded pack: at most this many bytes.
        self.budget = Budget(4 * s.pack_target_size + s.pack_max_file_size, packer.relieve)
        # Entries in flight, weighted: a directory counts its children, whose results it holds.
        # When it runs out, tasks may be waiting for the open pack: seal it.
        self._window = Budget(settings.window, packer.relieve)
        self.saver = FileSaver(source, store, cache, generation, reporter, self.budget, settings.open_files,
                               settings.mode, clock)
        self.fatal: BaseException | None = None
        store.on_fatal = self.fail
        self._files_pending = 0
        self._files_done: Deferred | None = None
        self._on_dir = on_dir
        self._hold = hold
        # The snapshot index: directory records in queue order (a directory finished early waits
        # for those before it), cut into chunks stored as they are cut.
        self.index = IndexWriter()
        self._index_order: list[tuple[bytes, Any]] = []
        # Records finished before their turn: in memory up to _INDEX_HELD bytes, then in an unnamed
        # temporary file (a directory held up by a large upload may keep the rest of the tree waiting).
        self._index_bodies: dict[bytes, tuple[str, Any, bytes]] = {}
        self._index_held = 0
        self._index_spill: int | None = None
        self._index_spill_end = 0
        self._index_broken = False
        self._index_chunks: list[Deferred] = []
        self._index_partial = False  # some directories were kept whole: their records are in index_base
        self._index_base = list(index_base) if index_base is not None else None
        self._settled = settled
        self._records = records
        self._index_whole = False  # the walk kept the whole tree: the index is the previous one
        #: Directories with an entry that could not be stored (they are not listed in ``trees``).
        self._dirty: set[bytes] = set()
        #: (path, digest, cap) of every directory stored without a problem, in queue order.
        self.trees: list[tuple[bytes, bytes, str]] = []
        #: The chunks of the snapshot's index once made (empty: it has none).
        self.index_caps: tuple[str, ...] = ()
        #: The snapshot's tree (the source root's directory and its metadata) once made.
        self.tree: Child | None = None

    @property
    def in_flight(self) -> set[bytes]:
        """Relative paths being read or uploaded right now (for progress and the manhole)."""
        return self.saver.in_flight

    def fail(self, e: BaseException) -> None:
        """The run has failed: remember the first cause, and send nothing more."""
        if self.fatal is None:
            self.fatal = e
            self.store.gw.halt(e)

    async def run(self, entries: Iterable[Entry]) -> str:
        """Upload every entry; return the snapshot root cap.

        Raises the first fatal error (gateway failure, bad queue).  Per-entry
        problems are warnings on the reporter.
        """
        try:
            # Files are decided a batch at a time as the queue streams in (one cache query per batch).
            return await self._run(self.saver.ahead(entries, held=self._hold is not None))
        finally:
            self._index_close()
            self.store.close()

    async def _run(self, entries: Iterable[Entry]) -> str:
        # Each entry's result is a value when it could be settled at once, or a Deferred
        # for the task that makes it.
        pending: dict[bytes, list[Any]] = {}
        root: Any = None
        have_root = False
        handled = 0
        for e in entries:
            if self.fatal is not None:
                break
            if have_root:
                raise QueueError(path="(queue)", problem="entries after the root")
            handled += 1
            if handled % _SLICE == 0 and self._clock is not None:
                await deferLater(self._clock, 0, lambda: None)
            self.stats.entries_scanned += 1
            r = await self._entry(e, pending.pop(e.path, []) if e.kind == KIND_DIR else [])
            if e.kind == KIND_DIR:
                self._index_order.append((e, r))
                self._index_drain()
            if e.path == b"":
                root, have_root = r, True
            else:
                pending.setdefault(e.parent or b"", []).append(r)
        if self.fatal is None and not have_root:
            raise QueueError(path="(queue)", problem="it has no root directory entry")
        if self.fatal is None and pending:
            raise QueueError(path="(queue)", problem="some entries come after their directory")
        self.store.packer.drain()
        # The objects directory can be made as soon as every file is settled, while the last
        # directories are still being made.
        objects = Deferred.fromCoroutine(self._objects_dir())
        tree = (await root if isinstance(root, Deferred) else root) if have_root else _FAILED
        objects_cap = await objects
        index = await self._index_finish() if self.fatal is None else None
        if self.fatal is None:
            assert isinstance(tree, Child)
            self.tree = tree
            try:
                return await self.store.root(tree, objects_cap, index)
            except BaseException as e:
                self.fail(e)
        await self.store.packer.flush()
        assert self.fatal is not None
        raise self.fatal

    async def _entry(self, e: Entry, children: list[Any]) -> Any:
        """The result of one entry: settled now (a value), or the Deferred of its task."""
        if e.kind == KIND_DIR:
            kept = e.extra("reuse")
            if kept is not None:  # the subtree is as in the previous snapshot
                self.stats.dirs += 1
                self.stats.dirs_unchanged += 1
                self.stats.entries_done += 1
                below = e.extra("settled")
                if below is not None and self._settled is None:
                    raise QueueError(path="(queue)", problem="it keeps directories of a backup it does not "
                                                             "name; make it again")
                if below is not None:  # kept whole by the walk
                    self._count_settled(below)
                    if not e.path:
                        self._index_whole = True
                    return self._dir_done(e, kept.decode("ascii"), body=_REUSED)
                self._index_partial = True  # its directories' bodies are not at hand
                return self._dir_done(e, kept.decode("ascii"))
            now = self._directory_now(e, children)
            if now is not None:
                return now
            return await self._start(self._directory(e, children), 1 + len(children))
        if e.kind == KIND_FILE and self._hold is not None and e.extra("hold") is not None:
            def save() -> Awaitable[Any]:
                self._files_pending += 1
                return self._counted(self.saver.file(e))
            return await self._start(self._hold(e, save))
        if e.kind == KIND_FILE:
            child, decided = self.saver.unchanged_now(e)
            if child is not None:
                self.stats.entries_done += 1
                return child
            self._files_pending += 1
            return await self._start(self._counted(self.saver.file(e, decided)))
        if e.kind == KIND_LINK:
            return await self._start(self.saver.symlink(e))
        return await self._start(self.saver.special(e))

    def _count_settled(self, below: bytes) -> None:
        """Count the entries below a directory the walk kept whole, as if each had been decided."""
        files, dirs, links, specials, size = (int(n) for n in below.split(b","))
        st = self.stats
        st.files += files
        st.files_unchanged += files
        st.dirs += dirs
        st.dirs_unchanged += dirs
        st.symlinks += links
        st.specials += specials
        st.bytes_done += size
        st.entries_scanned += files + dirs + links + specials
        st.entries_done += files + dirs + links + specials
        st.subtrees_kept += 1
        st.entries_kept += files + dirs + links + specials

    async def _start(self, coro: Any, weight: int = 1) -> Any:
        """Run ``coro`` as a task within the window; its Deferred, or its value if it finished at once."""
        held = await self._window.take(weight)
        d = self._spawn(coro, held)
        if d.called:  # settled without waiting: pass the value on, not the Deferred
            box: list[Any] = []
            d.addCallback(box.append)
            return box[0]
        return d

    def _spawn(self, coro: Any, held: int) -> Deferred:
        async def guarded() -> Any:
            try:
                return await coro
            except BaseException as e:  # LafsBackupError: fatal; anything else: a bug, for the traceback
                self.fail(e)  # what is still queued would fail the same way: don't send it
                return _FAILED
            finally:
                self.stats.entries_done += 1
                self._window.give(held)
        return Deferred.fromCoroutine(guarded())

    async def _counted(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            self._files_pending -= 1
            if self._files_pending == 0 and self._files_done is not None:
                d, self._files_done = self._files_done, None
                d.callback(None)

    async def _objects_dir(self) -> str | None:
        if self._files_pending:
            self._files_done = Deferred()
            await self._files_done
        if self.fatal is not None:
            return None
        try:
            return await self.store.objects_dir()
        except BaseException as e:
            self.fail(e)
            return None

    # -- directories -------------------------------------------------------------------------------
    def _directory_now(self, e: Entry, children: list[Any]) -> Child | None:
        """A directory whose children are all settled and whose body is stored, or None."""
        if self.settings.mode == "force" or any(isinstance(c, Deferred) or c is _FAILED for c in children):
            return None
        st = None
        if e.path:
            try:
                st = self.saver.source.lstat(e.path)
            except OSError:
                return None  # the task says what happened
            if not _is_dir(st):
                return None
        if None in children:
            self._dirty.add(e.path)
        kids = [c for c in children if c is not None]
        body = dir_body(kids)
        d = self.store.plan_directory(body)
        log.debug("%s: %r", d, e.path)
        if d.hit is None:
            return None
        self.stats.dirs += 1
        self.stats.dirs_unchanged += 1
        self.stats.entries_done += 1
        times = (st.st_mtime_ns, st.st_ctime_ns) if st is not None else (None, None)
        return self._dir_done(e, d.hit.cap, times, body, child_names(kids))

    async def _directory(self, e: Entry, children: list[Any]) -> Any:
        self.stats.dirs += 1
        waits = [c for c in children if isinstance(c, Deferred)]
        got = iter(await gatherResults(waits) if waits else [])
        results = [next(got) if isinstance(c, Deferred) else c for c in children]
        if any(r is _FAILED for r in results):
            return _FAILED
        st = None
        if e.path:
            st = self.saver.still(e, _is_dir, "it is no longer a directory (replaced since the scan)")
            if st is None:
                return None
        if None in results:
            self._dirty.add(e.path)
        kids = [r for r in results if r is not None]
        body = dir_body(kids)
        cap = await self.store.directory(body, priority=-(e.path.count(b"/") + 1) if e.path else 0, path=e.path)
        # Times as they are now, like the children's (entries may have gone since the scan).
        return self._dir_done(e, cap, (st.st_mtime_ns, st.st_ctime_ns) if st is not None else (None, None), body,
                              child_names(kids))

    def _dir_done(self, e: Entry, cap: str, times: tuple[Any, Any] = (None, None), body: Any = None,
                  names: bytes = b"") -> Child:
        if self._on_dir is not None:
            self._on_dir(e.path, cap)
        if body is _REUSED:
            self._index_bodies[e.path] = (cap, body, names)
        elif body is not None:
            self._index_bodies[e.path] = (cap, self._index_keep(body), names)
        return Child(e.name, cap, edge_metadata(e, None, *times))

    # -- the snapshot index ------------------------------------------------------------------------
    def _index_drain(self) -> None:
        """Add the records of the directories finished so far, in queue order."""
        order = self._index_order
        taken = 0
        for e, result in order:
            if isinstance(result, Deferred) and not result.called:
                break
            taken += 1
            path = e.path
            done = self._index_bodies.pop(path, None)
            self._settle(e, done)
            if done is not None:
                cap, kept, names = done
                if kept is _REUSED:
                    self._refeed(path)
                    continue
                if isinstance(kept, tuple):
                    assert self._index_spill is not None
                    body = os.pread(self._index_spill, kept[1], kept[0])
                else:
                    body = kept
                    self._index_held -= len(body)
                chunk = self.index.add(cap, body, names)
                if chunk is not None:
                    self._index_chunks.append(Deferred.fromCoroutine(self._index_chunk(chunk)))
        if taken:
            del order[:taken]

    def _settle(self, e: Entry, done: Any) -> None:
        """List a finished directory in :attr:`trees` if every entry of its subtree was stored."""
        path = e.path
        if done is None or path in self._dirty:  # (None: the directory itself could not be stored)
            if path:
                self._dirty.add(e.parent or b"")
            return
        if done[1] is _REUSED:
            self.trees.extend(self._settled.subtree(path))
            return
        digest = e.extra("tree")
        if digest is not None:
            self.trees.append((path, bytes.fromhex(digest.decode("ascii")), done[0]))

    def _refeed(self, path: bytes) -> None:
        """The index records of a subtree kept whole: the previous index's, in their order."""
        if self._index_whole:
            return  # the whole tree: the previous index is this one's
        for rec in self._records.of(path) if self._records is not None else [None]:
            if rec is None:
                if not self._index_broken:
                    log.warning("the snapshot gets no index: the previous index lacks directories it keeps")
                self._index_broken = True
                return
            cap, body, names = rec
            try:
                chunk = self.index.add(cap, body, names if names is not None else body_names(body))
            except ValueError:  # (BadSnapshot too) the previous index holds a damaged record
                self._index_broken = True
                return
            if chunk is not None:
                self._index_chunks.append(Deferred.fromCoroutine(self._index_chunk(chunk)))

    def _index_keep(self, body: bytes) -> bytes | tuple[int, int]:
        """A record waiting for its turn: the body itself, or where it lies in the spill file."""
        if self._index_held + len(body) <= _INDEX_HELD:
            self._index_held += len(body)
            return body
        try:
            if self._index_spill is None:
                self._index_spill = temp_file(self.store.settings.tmpdir)
            at = self._index_spill_end
            self._index_spill_end += write_all(self._index_spill, body, at)
        except OSError as e:  # a full TMPDIR: this snapshot goes without an index (it is read by directory)
            if not self._index_broken:
                log.warning("the snapshot gets no index: its records cannot be kept (%s)", e.strerror)
            self._index_broken = True
            return b""
        return at, len(body)

    def _index_close(self) -> None:
        if self._index_spill is not None:
            os.close(self._index_spill)
            self._index_spill = None

    async def _index_chunk(self, raw: bytes) -> str | None:
        try:
            return await self.store.index_chunk(raw)
        except BaseException as e:
            self.fail(e)
            return None

    async def _index_finish(self) -> list[str] | None:
        """The caps of the index chunks, in order (None: this snapshot gets no index).  A snapshot
        that kept directories whole links the chunks of the index they came from after its own
        (a reader takes the first record of each directory; the next full walk starts afresh), up
        to :data:`INDEX_CARRIED_MAX` chunks in all."""
        self._index_drain()
        if self._index_whole and not self._index_broken:
            self.index_caps = tuple(self._settled.index)
            self.stats.index_chunks += len(self.index_caps)
            return list(self.index_caps) or None
        last = self.index.finish()
        if last is not None:
            self._index_chunks.append(Deferred.fromCoroutine(self._index_chunk(last)))
        caps = [await d for d in self._index_chunks]
        if self._index_order or None in caps or self._index_broken:
            return None
        if self._index_partial:
            if not self._index_base:
                return None
            caps += [c for c in self._index_base if c not in caps]
            if len(caps) > INDEX_CARRIED_MAX:
                return None
        self.index_caps = tuple(caps)
        return caps


def _is_dir(mode_or_st: Any) -> bool:
    import stat

    mode = getattr(mode_or_st, "st_mode", mode_or_st)
    return stat.S_ISDIR(mode)


class Budget:
    """A count (bytes, or entries) that may be held at once; :meth:`take` waits for room (FIFO).

    ``starved`` is called whenever a taker has to wait (the packer seals its
    open pack then, so the memory it holds is freed once it is uploaded).
    """

    def __init__(self, size: int, starved: Any = None) -> None:
        self.size = size
        self.free = size
        self._starved = starved
        self._waiters: list[tuple[int, Deferred]] = []

    async def take(self, n: int) -> int:
        """Reserve ``n`` (at most the whole budget); returns what was reserved, to give back."""
        n = min(n, self.size)
        if self._waiters or self.free < n:
            d: Deferred = Deferred()
            self._waiters.append((n, d))
            if self._starved is not None:
                self._starved()
            await d
        else:
            self.free -= n
        return n

    def give(self, n: int) -> None:
        self.free += n
        while self._waiters and self._waiters[0][0] <= self.free:
            m, d = self._waiters.pop(0)
            self.free -= m
            d.callback(None)
        if self._waiters and self._starved is not None:
            self._starved()  # still short: maybe nothing else will free room now
