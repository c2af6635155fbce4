"""Phase two's scheduler: stream the queue into tasks, within bounds, and assemble the snapshot.

Entries arrive children-first.  An entry the cache settles at once (an
unchanged file, a directory whose body is stored) costs no task, so an
unchanged rerun never leaves the loop.  Every other file, symlink or
special file becomes a task of the saver (``saver.py``); a directory
becomes a task that waits for its children, then has the store make it.
Two budgets bound memory: the window (entries in flight, a directory
weighing as much as the results it holds) and the bytes of small files
waiting for their pack.  Deeper directories get their slot first: they are
on the longest chain to the root.  Every directory, as it finishes, is fed
to the indexer (``indexer.py``), which writes the snapshot index and keeps
the subtrees the walk kept whole.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from typing import Awaitable, Callable, Final, Iterable, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from ..errors import QueueError
from ..protocols import ReporterLike
from ..store import plan
from ..store.entry import KIND_DIR, KIND_FILE, KIND_LINK, Entry
from ..store.protocols import ObjectCacheLike
from ..store.snapshot import Child, Edge, child_names, compact, dir_body
from ..store.protocols import StoreLike
from .batch import Runs, SmallFiles
from .budget import Budget
from .collector import rare_full_collections, trimming
from .decider import Decided
from .derive import InputCheck, InputsChanged
from .indexer import Indexer
from .saver import FileSaver
from .source import Source

log = logging.getLogger(__name__)


class _Failed(enum.Enum):
    FAILED = "failed"


#: Marks a subtree that failed fatally (the error is kept on the uploader).
_FAILED: Final = _Failed.FAILED
#: What an entry came to: its edge, None (left out, after a warning), or :data:`_FAILED`.
Outcome = Child | None | _Failed
#: An entry's result as its directory waits for it: its outcome, or the Deferred of the task that makes it.
Result = Outcome | Deferred[Outcome]
#: What a directory holds of each child until it is made: a result, a file's edge compacted.
Waiting = Result | Edge
T = TypeVar("T")
#: Entries handled between two returns to the reactor, so signals and timers stay live.
_SLICE = 2000


@dataclass(frozen=True)
class Settings:
    """How phase two is scheduled (from the configuration)."""

    window: int = 4000
    open_files: int = 12
    mode: str = "stat"


class Uploader:
    """Runs phase two for one backup: ``source`` is read, ``store`` stores, ``cache`` remembers,
    ``indexer`` records the directories (a plain :class:`~.indexer.Indexer` of ``store`` if None)."""

    def __init__(self, source: Source, store: StoreLike, cache: ObjectCacheLike, generation: int, reporter: ReporterLike,
                 settings: Settings = Settings(), clock: IReactorTime | None = None,
                 hold: Callable[[Entry, Callable[[], Awaitable[Child | None]]], Awaitable[Child | None]] | None = None,
                 indexer: Indexer | None = None, derived: InputCheck | None = None) -> None:
        """``hold(entry, save)`` gives the edge of a file the walk marked as still being written:
        its previous edge, None to leave it out this time, or what ``save()`` (storing it as it is
        now) gives.  ``derived``: the files proven to be remade by their recipes (``derive.py``)."""
        self.store = store
        self.rep = reporter
        self.stats = reporter.stats
        self.settings = settings
        self._clock = clock
        packer = store.packer
        s = store.settings
        # Small files read but not yet stored in an uploaded pack: at most this many bytes.
        self.budget = Budget(4 * s.pack_target_size + s.pack_max_file_size, packer.relieve, clock)
        # Entries in flight, weighted: a directory counts its children, whose results it holds.
        # When it runs out, tasks may be waiting for the open pack: seal it.
        self._window = Budget(settings.window, packer.relieve, clock)
        self.saver = FileSaver(source, store, cache, generation, reporter, self.budget, settings.open_files,
                               settings.mode, clock)
        #: Runs of new small files, read together in a thread (``batch.py``).
        self.small = Runs(SmallFiles(source, store, cache, generation, reporter, self.saver.decider, self.budget,
                                     settings.mode, self.saver.in_flight),
                          self._window, self._file_settled, self.fail, lambda: self.fatal is not None, _FAILED)
        self.fatal: BaseException | None = None
        store.on_fatal = self.fail
        self.index = indexer if indexer is not None else Indexer(store, reporter.stats)
        self.index.on_fatal = self.fail
        self._files_pending = 0
        self._files_done: Deferred | None = None
        #: Bytes of the new or changed files being stored now (for progress).
        self.bytes_storing = 0
        self._sent_before = store.gw.bytes_sent
        self._hold = hold
        self.derived = derived
        #: The snapshot's tree (the source root's directory and its metadata) once made.
        self.tree: Child | None = None

    @property
    def index_caps(self) -> tuple[str, ...]:
        """The chunks of the snapshot's index once made (empty: it has none)."""
        return self.index.caps

    @property
    def trees(self) -> list[tuple[bytes, bytes, str]]:
        """(path, digest, cap) of every directory stored without a problem, in queue order (for the
        next backup's walk: ``subtrees.py``)."""
        return self.index.trees

    @property
    def in_flight(self) -> set[bytes]:
        """Relative paths being read or uploaded right now (for progress and the manhole)."""
        return self.saver.in_flight

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies this run handed to the gateway so far (for progress)."""
        return self.store.gw.bytes_sent - self._sent_before

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
            with rare_full_collections(), trimming():
                # Files are decided a batch at a time as the queue streams in (one cache query per batch).
                return await self._run(self.saver.ahead(entries, held=self._hold is not None))
        finally:
            self.index.close()
            self.store.close()

    async def _run(self, entries: Iterable[Entry]) -> str:
        # Each entry's result is a value when it could be settled at once, or a Deferred
        # for the task that makes it.
        pending: dict[bytes, list[Waiting]] = {}
        root: Result = None
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
                self.index.queued(e, r)
            elif self.derived is not None and e.kind == KIND_FILE:
                r = self.derived.stored(e, r)  # type: ignore[assignment]
            if e.path == b"":
                root, have_root = r, True
            else:
                # (a file's edge waits for its directory written, not as a Child: a third of the memory)
                pending.setdefault(e.parent or b"", []).append(r if e.kind == KIND_DIR else _compacted(r))
        await self.small.send()
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
        index = await self.index.finish() if self.fatal is None else None
        if self.fatal is None and self.derived is not None and self.derived.broken:
            raise InputsChanged(self.derived.broken)
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

    async def _entry(self, e: Entry, children: list[Waiting]) -> Result:
        """The result of one entry: settled now (a value), or the Deferred of its task."""
        if e.kind == KIND_DIR:
            # Its files' run goes first: the directory's task may take the whole window.
            await self.small.send()
            if e.extra("reuse") is not None:  # the subtree is as in the previous snapshot
                return self.index.kept(e)
            now = self._directory_now(e, children)
            if now is not None:
                return now
            return await self._start(self._directory(e, children), 1 + len(children))
        if e.kind == KIND_FILE and self._hold is not None and e.extra("hold") is not None:
            def save() -> Awaitable[Child | None]:
                self._files_pending += 1
                decided = self.saver.decide(e)
                return self._counted(self.saver.file(e, decided), self._storing(e, decided))
            return await self._start(self._hold(e, save))
        if e.kind == KIND_FILE and self.derived is not None and (child := self.derived.edge(e)) is not None:
            self.stats.entries_done += 1
            self.stats.files += 1
            self.stats.derived += 1
            self.stats.bytes_derived += e.size
            self.stats.bytes_done += e.size
            return child
        if e.kind == KIND_FILE:
            child, decided = self.saver.unchanged_now(e)
            if child is not None:
                self.stats.entries_done += 1
                return child
            if self.small.files.wants(decided):
                self._files_pending += 1
                return await self.small.add(e, decided, self._storing(e, decided))
            self._files_pending += 1
            return await self._start(self._counted(self.saver.file(e, decided), self._storing(e, decided)))
        if e.kind == KIND_LINK:
            return await self._start(self.saver.symlink(e))
        return await self._start(self.saver.special(e))

    async def _start(self, coro: Awaitable[Outcome], weight: int = 1) -> Result:
        """Run ``coro`` as a task within the window; its Deferred, or its value if it finished at once."""
        held = await self._window.take(weight)
        d = self._spawn(coro, held)
        if d.called:  # settled without waiting: pass the value on, not the Deferred
            box: list[Outcome] = []
            d.addCallback(box.append)
            return box[0]
        return d

    def _spawn(self, coro: Awaitable[Outcome], held: int) -> Deferred[Outcome]:
        async def guarded() -> Outcome:
            try:
                return await coro
            except BaseException as e:  # LafsBackupError: fatal; anything else: a bug, for the traceback
                self.fail(e)  # what is still queued would fail the same way: don't send it
                return _FAILED
            finally:
                self.stats.entries_done += 1
                self._window.give(held)
        return Deferred.fromCoroutine(guarded())

    def _storing(self, e: Entry, decided: Decided) -> int:
        """Count a file the saver is to store (new or changed, as :meth:`FileSaver.file` tells them from
        its decision) in the bytes to store; its size, to give back when it is done (0: not stored)."""
        d, st = decided
        if d.action == plan.SKIP or st is None or (d.action == plan.UNCHANGED and d.hit is not None):
            return 0
        self.stats.bytes_to_store += e.size
        self.bytes_storing += e.size
        return e.size

    async def _counted(self, coro: Awaitable[T], storing: int = 0) -> T:
        try:
            return await coro
        finally:
            self._file_settled(storing)

    def _file_settled(self, storing: int) -> None:
        self.bytes_storing -= storing
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
    def _directory_now(self, e: Entry, children: list[Waiting]) -> Child | None:
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
        kids = [c for c in children if isinstance(c, (Child, Edge))]  # (all are settled: edges, or None)
        body = dir_body(kids)
        d = self.store.plan_directory(body)
        log.debug("%s: %r", d, e.path)
        if d.hit is None:
            return None
        self.stats.dirs += 1
        if d.action == plan.INDEX:
            self.stats.dirs_indexed += 1
        else:
            self.stats.dirs_unchanged += 1
        self.stats.entries_done += 1
        times = (st.st_mtime_ns, st.st_ctime_ns) if st is not None else (None, None)
        return self.index.made(e, d.hit.cap, body, child_names(kids), times, None not in children)

    async def _directory(self, e: Entry, children: list[Waiting]) -> Outcome:
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
        kids = [r for r in results if isinstance(r, (Child, Edge))]  # (none failed: edges, or None)
        body = dir_body(kids)
        cap = await self.store.directory(body, priority=-(e.path.count(b"/") + 1) if e.path else 0, path=e.path)
        # Times as they are now, like the children's (entries may have gone since the scan).
        times = (st.st_mtime_ns, st.st_ctime_ns) if st is not None else (None, None)
        return self.index.made(e, cap, body, child_names(kids), times, None not in results)


def _compacted(r: Result) -> Waiting:
    """A file's result as its directory holds it: its edge as an :class:`Edge`, now or once settled
    (then the Deferred's result is the Edge)."""
    if isinstance(r, Child):
        return compact(r)
    if isinstance(r, Deferred):
        r.addCallback(lambda c: compact(c) if isinstance(c, Child) else c)
    return r


def _is_dir(mode_or_st: int | os.stat_result) -> bool:
    import stat

    mode = mode_or_st if isinstance(mode_or_st, int) else mode_or_st.st_mode
    return stat.S_ISDIR(mode)
