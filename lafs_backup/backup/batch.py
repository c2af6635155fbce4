"""Small files in runs: the new or changed small files of a local source, read, hashed and encoded
together in a thread, then packed.

A first backup is mostly small files, and the per-file cost on the reactor
thread bounds it: open, read, hash, compress, one cache query for the
content, several tasks.  Here a run of such files (as the queue gives
them, up to :data:`FILES` or :data:`BYTES`) costs one thread call, which
opens, reads, hashes and encodes each (the reads, the hashing and the
compression release the GIL, so they overlap with the reactor's work), and
one cache query for all their contents.  Each file still gets its own
result, decision, warnings and cache rows, exactly as the saver's one-file
path (``saver.py``) gives them; that path remains for every other file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from ..caps import LIT_MAX, lit_cap
from ..protocols import ReporterLike
from ..store import plan
from ..store.encode import member_form
from ..store.entry import Entry
from ..store.protocols import ObjectCacheLike, StoreLike
from ..store.snapshot import Child, Hit
from .decider import Decided, Decider
from .reading import read_all, why
from .budget import Budget, Held
from .source import LocalSource, Source

log = logging.getLogger(__name__)

F = TypeVar("F")

#: A run is sent to its thread once it holds this many files...
FILES = 64
#: ...or this many bytes.
BYTES = 1 << 20

#: ``encode(path, data)``: how a small file's bytes are kept in a pack (``encode.member_form``).
Encode = Callable[[bytes, bytes], "tuple[str | None, bytes]"]
#: ``deliver(i, child)``: the ``i``-th file of a run is done (None: left out, after a warning).
Deliver = Callable[[int, "Child | None"], None]


@dataclass(frozen=True, slots=True)
class SmallRead:
    """One small file as its thread read it: its fstat, SHA-256, size and stored form, or why not."""

    st: os.stat_result | None
    sha: bytes = b""
    size: int = 0
    enc: str | None = None
    stored: bytes = b""
    #: Bytes read, every attempt counted.
    read: int = 0
    #: Why it was left out (a warning), or None.
    skipped: str | None = None
    #: It moved while read twice: stored as last read, with a warning.
    moving: bool = False


def read_small_files(source: Source, entries: list[Entry], encode: Encode) -> list[SmallRead]:
    """Read each file whole (never through a symlink), hash it, and encode it as a pack member.

    Blocking: runs in a thread, and touches nothing shared (warnings are
    returned, not reported).  A file whose size or mtime moved while it was
    read is read once more; if it moved again, what was read last is kept.
    """
    out = []
    for e in entries:
        try:
            f = source.open(e.path)
        except OSError as err:
            out.append(SmallRead(None, skipped=f"skipped: {why(err)}"))
            continue
        got = None
        read = 0
        try:
            for attempt in (1, 2):
                st = f.fstat()
                if not stat.S_ISREG(st.st_mode):
                    got = SmallRead(None, read=read, skipped="skipped: it is no longer a regular file")
                    break
                data = read_all(f, st.st_size + 1)
                read += len(data)
                after = f.fstat()
                steady = len(data) == st.st_size and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
                if steady or attempt == 2:
                    sha = hashlib.sha256(data).digest()
                    enc, stored = (None, data) if len(data) <= LIT_MAX else encode(e.path, data)
                    got = SmallRead(st if steady else after, sha, len(data), enc, stored, read, moving=not steady)
                    break
        except OSError as err:
            got = SmallRead(None, read=read, skipped=f"skipped: {why(err)}")
        finally:
            f.close()
        assert got is not None
        out.append(got)
    return out


class SmallFiles:
    """Stores runs of new or changed small files of one backup through ``store`` (see the module's
    docstring); the saver's budget bounds the bytes held until their packs are uploaded."""

    def __init__(self, source: Source, store: StoreLike, cache: ObjectCacheLike, generation: int,
                 reporter: ReporterLike, decider: Decider, budget: Budget, mode: str, in_flight: set[bytes]) -> None:
        self.source = source
        self.store = store
        self.cache = cache
        self.gen = generation
        self.rep = reporter
        self.stats = reporter.stats
        self.decider = decider
        self.budget = budget
        self._plain = store.settings.plain
        self._small_max = store.settings.pack_max_file_size
        self.in_flight = in_flight
        # Only a local source is read in a thread (a remote one's reads go through its own), and
        # only the stat mode decides files without their content.
        self.enabled = isinstance(source, LocalSource) and mode == "stat"

    def wants(self, decided: Decided) -> bool:
        """Whether a file so decided goes in a run: new or changed, and small."""
        d, st = decided
        return self.enabled and d.action == plan.READ and st is not None and st.st_size <= self._small_max

    async def save(self, files: list[tuple[Entry, os.stat_result]], deliver: Deliver) -> None:
        """Store a run of files; ``deliver(i, child)`` as each is done.  Raises what is fatal
        (the gateway failed): the caller fails the run and the files not yet delivered."""
        packer = self.store.packer
        # Given back file by file as each is done (a taker still short is told again then, and the
        # packer seals the pack it waits for), not at the end of the run: that could wait for a
        # pack that nobody seals.
        held = Held(self.budget, await self.budget.take(sum(st.st_size for _, st in files)))
        # Once they are being read (not while they wait for room): the open pack is not sealed
        # for want of them, and a relief asked meanwhile waits until they are in.
        for _ in files:
            packer.expect()
        owed = len(files)
        paths = [e.path for e, _ in files]
        self.in_flight.update(paths)
        try:
            try:
                reads = await self.store.blocking(read_small_files, self.source, [e for e, _ in files],
                                                  functools.partial(member_form, self.store.settings.encoding))
            finally:
                self.in_flight.difference_update(paths)
            known = self.store.known_contents([r.sha for r in reads if r.st is not None and r.size > LIT_MAX])
            waits = []
            for i, ((e, _), r) in enumerate(zip(files, reads)):
                self.stats.files += 1
                self.stats.bytes_read += r.read
                if r.st is None:
                    self.stats.bytes_done += e.size
                    self.rep.warn(e.path, r.skipped or "skipped")
                    held.give(files[i][1].st_size)
                    deliver(i, None)
                    continue
                if r.moving:
                    self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
                waits.append(Deferred.fromCoroutine(self._one(i, e, r, known.get(r.sha), deliver,
                                                              functools.partial(held.give, files[i][1].st_size))))
            # Every member is in the open pack now (or known, or shared with a store under way).
            while owed:
                owed -= 1
                packer.expected()
            # Every file settles before the run does; the first failure is the run's.
            for ok, result in await DeferredList(waits, consumeErrors=True):
                if not ok:
                    assert isinstance(result, Failure)
                    result.raiseException()
        finally:
            while owed:
                owed -= 1
                packer.expected()
            held.rest()

    async def _one(self, i: int, e: Entry, r: SmallRead, known: Hit | None, deliver: Deliver,
                   done: Callable[[], None]) -> None:
        assert r.st is not None
        try:
            seen = self.decider.seen(e.path)
            if r.size <= LIT_MAX:  # the content is the cap: no request
                self.stats.files_lit += 1
                hit = Hit(lit_cap(r.stored), r.sha)
                d = plan.for_content(r.sha, hit, None, seen, "stat")
            else:
                d = plan.for_content(r.sha, known, None, seen, "stat")
                log.debug("%s: %r", d, e.path)
                hit = await self.store.content(r.sha, r.size, d.hit, lambda: self.store.packed(
                    r.stored, r.enc, r.size, r.sha, e.path))
            self.cache.store_state(plan.state_key(e.path, r.st, self._plain), hit, self.gen)
            child = await self.store.child(e, r.st, hit)
            self.cache.record_path(self.source.label, e.path, self.gen)
            if d.change == "changed":
                self.stats.files_changed += 1
            elif d.change == "unchanged":
                self.stats.files_unchanged += 1
            else:
                self.stats.files_new += 1
        finally:
            self.stats.bytes_done += e.size
            done()
        deliver(i, child)


class Runs(Generic[F]):
    """Gathers the uploader's runs of small files and starts each as a task within ``window``
    (each file weighs one).  ``settled(storing)`` is told as each file is done, ``fail(err)`` of
    a fatal error (``failed()``: the run has failed: send nothing more), and ``lost`` is the
    result of a file its run could not finish."""

    def __init__(self, files: SmallFiles, window: Budget, settled: Callable[[int], None],
                 fail: Callable[[BaseException], None], failed: Callable[[], bool], lost: F) -> None:
        self.files = files
        self._window = window
        self._settled = settled
        self._fail = fail
        self._failed = failed
        self._lost = lost
        #: The run being gathered: (entry, its stat, its bytes to store, its result to fire).
        self._run: list[tuple[Entry, os.stat_result, int, Deferred[Child | None | F]]] = []
        self._bytes = 0

    async def add(self, e: Entry, decided: Decided, storing: int) -> Deferred[Child | None | F]:
        """Put a file (``files.wants`` it) in the run being gathered, sent once full; the Deferred
        of its result."""
        st = decided[1]
        assert st is not None
        out: Deferred[Child | None | F] = Deferred()
        self._run.append((e, st, storing, out))
        self._bytes += st.st_size
        if len(self._run) >= FILES or self._bytes >= BYTES:
            await self.send()
        return out

    async def send(self) -> None:
        """Start the task of the run gathered so far (before a directory, whose task may take the
        whole window while it waits for them, and at the end)."""
        if not self._run:
            return
        run, self._run, self._bytes = self._run, [], 0
        held = Held(self._window, await self._window.take(len(run)) if not self._failed() else 0)
        Deferred.fromCoroutine(self._task(run, held))

    async def _task(self, run: list[tuple[Entry, os.stat_result, int, Deferred[Child | None | F]]],
                    held: Held) -> None:
        done = [False] * len(run)

        def deliver(i: int, child: Child | None | F) -> None:
            if done[i]:
                return
            done[i] = True
            self._settled(run[i][2])
            self.files.stats.entries_done += 1
            held.give(1)  # (file by file: see SmallFiles.save)
            run[i][3].callback(child)

        try:
            if not self._failed():
                await self.files.save([(e, st) for e, st, _, _ in run], deliver)
        except BaseException as err:  # LafsBackupError: fatal; anything else: a bug, for the traceback
            self._fail(err)
        finally:
            for i in range(len(run)):
                deliver(i, self._lost)
            held.rest()
