"""Phase two's record of finished directories: the snapshot index, and the subtrees the walk kept whole.

The uploader (``upload.py``) feeds the indexer every directory of the
queue, in queue order (:meth:`Indexer.queued`), and tells it each one's
body as it is made or found stored (:meth:`Indexer.made`), or that the walk
kept it as in the previous snapshot (:meth:`Indexer.kept`).  The indexer

* writes the snapshot index: each directory's record in queue order (one
  finished early waits for those before it, in memory up to a bound, then
  in an unnamed temporary file), cut into chunks that are stored as they
  are cut; the records of a subtree kept whole are the previous index's
  (``subtrees.Records``), and a snapshot whose whole tree was kept has the
  previous index itself;
* lists, in :attr:`Indexer.trees`, every directory stored without a
  problem, for the next backup's walk (``subtrees.py``);
* tells ``on_dir`` (``watch``) every directory's cap as it is settled.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Callable, Final, Sequence

from twisted.internet.defer import Deferred

from ..errors import QueueError
from ..store.entry import Entry
from ..store.index import IndexWriter
from ..protocols import RunStats
from ..store.protocols import ChunkStore
from ..store.snapshot import Child, body_names, edge_metadata
from ..store.store import temp_file, write_all
from .subtrees import Records, Trees

log = logging.getLogger(__name__)


class _Reused(enum.Enum):
    REUSED = "reused"


#: Marks the index record of a subtree the walk kept whole (its records are the previous index's).
_REUSED: Final = _Reused.REUSED
#: A finished directory waiting for its turn: its cap, its body (or where it lies in the spill file,
#: or :data:`_REUSED`), and its names.
_Held = tuple[str, bytes | tuple[int, int] | _Reused, bytes]
#: The most chunks an index carried over from snapshot to snapshot (by ``watch``'s incremental
#: rounds) may reach; past that a round's snapshot is read through its directories until the next
#: full walk writes a fresh index (where the directories live in the index alone, ``watch`` makes
#: its next round a full walk instead).
INDEX_CARRIED_MAX = 256
#: Bytes of index records held in memory while they wait for a directory before them.
_HELD = 16 << 20


class Indexer:
    """Records the directories of one snapshot as they finish, through ``store`` (see the module
    docstring); ``stats`` is the run's counters.

    ``on_dir(path, cap)`` is told every directory's cap as it is settled
    (``watch`` keeps them for its next round).  ``base`` is the index of the
    snapshot whose directories the queue's ``reuse`` entries keep: this
    snapshot's index links its chunks too.  ``subtrees`` is the trees file of
    the previous backup (``subtrees.Trees``) when the walk kept subtrees of it
    whole (their ``reuse`` entries carry ``subtrees`` counts), and ``records``
    gives their index records (``subtrees.Records``).
    """

    def __init__(self, store: ChunkStore, stats: RunStats, on_dir: Callable[[bytes, str], None] | None = None,
                 base: Sequence[str] | None = None, settled: Trees | None = None,
                 records: Records | None = None) -> None:
        self.store = store
        self.stats = stats
        #: Told when storing a chunk fails (the uploader halts the run).
        self.on_fatal: Callable[[BaseException], None] = lambda e: None
        self._on_dir = on_dir
        self._base = list(base) if base is not None else None
        self._settled = settled
        self._records = records
        # Directory records in queue order (a directory finished early waits for those before it),
        # cut into chunks stored as they are cut.
        self.writer = IndexWriter()
        self._order: list[tuple[Entry, object]] = []
        # Records finished before their turn: in memory up to _HELD bytes, then in an unnamed
        # temporary file (a directory held up by a large upload may keep the rest of the tree waiting).
        self._bodies: dict[bytes, _Held] = {}
        self._held = 0
        self._spill: int | None = None
        self._spill_end = 0
        self._broken = False
        self._chunks: list[Deferred] = []
        self._partial = False  # some directories were kept whole: their records are in base
        self._whole = False  # the walk kept the whole tree: the index is the previous one
        #: Directories with an entry that could not be stored (they are not listed in ``trees``).
        self._dirty: set[bytes] = set()
        #: (path, digest, cap) of every directory stored without a problem, in queue order.
        self.trees: list[tuple[bytes, bytes, str]] = []
        #: The chunks of the snapshot's index once made (empty: it has none).
        self.caps: tuple[str, ...] = ()

    # -- what the uploader feeds ---------------------------------------------------------------------
    def queued(self, e: Entry, result: object) -> None:
        """A directory of the queue, in queue order, with its result: its edge, or the Deferred of the
        task that makes it.  Adds the records of the directories finished so far."""
        self._order.append((e, result))
        self._drain()

    def kept(self, e: Entry) -> Child:
        """The edge of a directory the walk kept as in the previous snapshot (its ``reuse`` entry),
        counted as decided with everything below it.  Raises :class:`QueueError` when the queue keeps
        directories of a backup this run was not given."""
        cap = (e.extra("reuse") or b"").decode("ascii")
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
                self._whole = True
            return self._done(e, cap, body=_REUSED)
        self._partial = True  # its directories' bodies are not at hand
        return self._done(e, cap)

    def made(self, e: Entry, cap: str, body: bytes, names: bytes, times: tuple[int | None, int | None],
             whole: bool) -> Child:
        """The edge of a directory made (or found stored) with this ``body`` and these ``names``;
        ``times``: its mtime and ctime now; ``whole``: every entry in it was stored."""
        if not whole:
            self._dirty.add(e.path)
        return self._done(e, cap, times, body, names)

    async def finish(self) -> list[str] | None:
        """The caps of the index chunks, in order (None: this snapshot gets no index).  A snapshot
        that kept directories whole links the chunks of the index they came from after its own
        (a reader takes the first record of each directory; the next full walk starts afresh), up
        to :data:`INDEX_CARRIED_MAX` chunks in all."""
        self._drain()
        if self._whole and not self._broken:
            assert self._settled is not None  # (a whole tree is kept only from a trees file)
            self.caps = tuple(self._settled.index)
            self.stats.index_chunks += len(self.caps)
            return list(self.caps) or None
        last = self.writer.finish()
        if last is not None:
            self._chunks.append(Deferred.fromCoroutine(self._chunk(last)))
        caps = [await d for d in self._chunks]
        if self._order or None in caps or self._broken:
            return None
        if self._partial:
            if not self._base:
                return None
            caps += [c for c in self._base if c not in caps]
            if len(caps) > INDEX_CARRIED_MAX and not self.store.settings.tree_in_index:
                return None  # (a tree in the index alone has no other copy: ``watch`` walks it whole first)
        self.caps = tuple(caps)
        return caps

    def close(self) -> None:
        if self._spill is not None:
            os.close(self._spill)
            self._spill = None

    # -- inside ------------------------------------------------------------------------------------
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

    def _done(self, e: Entry, cap: str, times: tuple[int | None, int | None] = (None, None),
              body: bytes | _Reused | None = None,
              names: bytes = b"") -> Child:
        if self._on_dir is not None:
            self._on_dir(e.path, cap)
        if body is _REUSED:
            self._bodies[e.path] = (cap, body, names)
        elif body is not None:
            self._bodies[e.path] = (cap, self._keep(body), names)
        return Child(e.name, cap, edge_metadata(e, None, *times))

    def _drain(self) -> None:
        """Add the records of the directories finished so far, in queue order."""
        order = self._order
        taken = 0
        for e, result in order:
            if isinstance(result, Deferred) and not result.called:
                break
            taken += 1
            path = e.path
            done = self._bodies.pop(path, None)
            self._settle(e, done)
            if done is not None:
                cap, kept, names = done
                if kept is _REUSED:
                    self._refeed(path)
                    continue
                if isinstance(kept, tuple):
                    assert self._spill is not None
                    body = os.pread(self._spill, kept[1], kept[0])
                else:
                    body = kept
                    self._held -= len(body)
                chunk = self.writer.add(cap, body, names)
                if chunk is not None:
                    self._chunks.append(Deferred.fromCoroutine(self._chunk(chunk)))
        if taken:
            del order[:taken]

    def _settle(self, e: Entry, done: _Held | None) -> None:
        """List a finished directory in :attr:`trees` if every entry of its subtree was stored."""
        path = e.path
        if done is None or path in self._dirty:  # (None: the directory itself could not be stored)
            if path:
                self._dirty.add(e.parent or b"")
            return
        if done[1] is _REUSED:
            assert self._settled is not None  # (subtrees are kept whole only from a trees file)
            self.trees.extend(self._settled.subtree(path))
            return
        digest = e.extra("tree")
        if digest is not None:
            self.trees.append((path, bytes.fromhex(digest.decode("ascii")), done[0]))

    def _refeed(self, path: bytes) -> None:
        """The index records of a subtree kept whole: the previous index's, in their order."""
        if self._whole:
            return  # the whole tree: the previous index is this one's
        for rec in self._records.of(path) if self._records is not None else [None]:
            if rec is None:
                if not self._broken:
                    log.warning("the snapshot gets no index: the previous index lacks directories it keeps")
                self._broken = True
                return
            cap, body, names = rec
            try:
                chunk = self.writer.add(cap, body, names if names is not None else body_names(body))
            except ValueError:  # (BadSnapshot too) the previous index holds a damaged record
                self._broken = True
                return
            if chunk is not None:
                self._chunks.append(Deferred.fromCoroutine(self._chunk(chunk)))

    def _keep(self, body: bytes) -> bytes | tuple[int, int]:
        """A record waiting for its turn: the body itself, or where it lies in the spill file."""
        if self._held + len(body) <= _HELD:
            self._held += len(body)
            return body
        try:
            if self._spill is None:
                self._spill = temp_file(self.store.settings.tmpdir)
            at = self._spill_end
            self._spill_end += write_all(self._spill, body, at)
        except OSError as e:  # a full TMPDIR: this snapshot goes without an index (it is read by directory)
            if not self._broken:
                log.warning("the snapshot gets no index: its records cannot be kept (%s)", e.strerror)
            self._broken = True
            return b""
        return at, len(body)

    async def _chunk(self, raw: bytes) -> str | None:
        try:
            return await self.store.index_chunk(raw)
        except BaseException as e:
            self.on_fatal(e)
            return None
