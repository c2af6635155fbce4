"""The reader: the only way content comes back from the grid.

It reads a snapshot's directories (listings parsed into :class:`Node`
edges), and a file's content from wherever it lives: a slice of a pack (one
Range GET, or a slice of the whole pack fetched once), a LIT cap, or an
object streamed with Range restarts after a fault.  It decodes what was
stored (compression, salts) and checks the SHA-256 and size recorded at
backup time.  A derived file, stored as its recipe, is made again by the
remaker it is given (``read.remake``).  Restore, verify and diff read through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..caps import lit_data
from ..derive.recipe import KEY as DERIVED
from ..errors import GatewayError, SnapshotError
from ..protocols import JSON, GatewayLike
from ..slots import Slots
from ..store.encode import Decoder
from ..store.packer import PackRef
from ..store.index import BadIndex, Record
from ..store.index import records as index_records
from ..store.snapshot import (INDEX, OBJECTS, BadSnapshot, Node, dir_id, index_caps, is_dir_id, pack_caps,
                              parse_children, parse_root)
from ..store.store import temp_file, write_all
from ..system.sparse import Unfold, layout_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Content:
    """What reading one file's content found."""

    size: int
    sha256: str
    #: The size and SHA-256 recorded at backup time, if any.
    recorded_size: int | None
    recorded_sha256: str | None
    #: Why the content could not be had as recorded, said instead of a mismatch (a derived file not
    #: made again: ``read/remake.py``); the sink then got nothing.
    problem: str | None = None

    @property
    def matches(self) -> bool | None:
        """Whether the content is what was backed up (None: nothing was recorded to compare)."""
        if self.problem is not None:
            return False
        if self.recorded_sha256 is None and self.recorded_size is None:
            return None
        return (self.recorded_sha256 in (None, self.sha256)) and (self.recorded_size in (None, self.size))

    @property
    def mismatch(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.recorded_sha256 not in (None, self.sha256):
            return "its content does not match the SHA-256 recorded at backup time"
        return f"{self.size} bytes read back, {self.recorded_size} recorded"


class Reader:
    """Reads snapshots through ``gateway``.

    ``whole_packs``: fetch each pack once into a private temporary file and
    slice members from it (fastest when most of a pack is wanted: a full
    restore); otherwise each packed file is one Range GET (fastest for a few),
    and with ``ranges_before_whole`` a pack read that many times by range is
    then fetched whole (a restore of some paths: it may read most of a pack).
    ``clock`` (None: the gateway's) is the reactor its semaphores wake waiters
    on, and those of the walks that read through it.
    """

    def __init__(self, gateway: GatewayLike, whole_packs: bool = False, tmpdir: str | None = None,
                 use_index: bool = True, jobs: int = 4, clock: IReactorTime | None = None,
                 ranges_before_whole: int | None = None) -> None:
        self.gw = gateway
        self.clock: IReactorTime = clock if clock is not None else gateway.clock
        self._packs = _PackReader(gateway, whole_packs, tmpdir, ranges_before_whole)
        self._tmpdir = tmpdir
        #: Directory bodies from snapshot indexes (None: every directory is read from the grid,
        #: but those of a snapshot that keeps them in its index alone).
        self.index = _IndexStore(tmpdir) if use_index else None
        self._jobs = max(1, jobs)
        #: Index directories only partly loaded (by :meth:`load_differences`): loaded whole when a
        #: directory that lives in an index alone is not found.
        self._partly: list[str] = []
        #: What makes derived files again for :meth:`content` (``read/remake.py``; None: this command
        #: cannot, and says so).
        self.remaker: Remaking | None = None

    @property
    def whole_packs(self) -> bool:
        return self._packs.whole

    # -- directories -----------------------------------------------------------------------------
    async def root(self, cap: str) -> tuple[Node, str | None]:
        """The snapshot's ``tree`` edge (the source root, with its metadata) and its objects
        directory.  The snapshot's index, if it has one, is loaded (once per reader)."""
        listing = await self.gw.get_json(cap)
        try:
            tree = parse_root(listing)
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))
        children = (listing[1].get("children") or {}) if isinstance(listing, list) else {}
        objects = children.get(OBJECTS)
        index = children.get(INDEX)
        if is_dir_id(tree.cap):  # its directories are in its index alone
            if not index:
                raise SnapshotError(what="(given)", problem="its directories are in an index it does not link")
            if self.index is None:
                self.index = _IndexStore(self._tmpdir)
        if index and self.index is not None:
            await self._load_index(index[1].get("ro_uri"))
        return tree, (objects[1].get("ro_uri") if objects else None)

    async def _index_of(self, cap: str) -> str | None:
        """The cap of snapshot ``cap``'s index directory (None: it has none)."""
        listing = await self.gw.get_json(cap)
        children = (listing[1].get("children") or {}) if isinstance(listing, list) else {}
        index = children.get(INDEX)
        found = index[1].get("ro_uri") if isinstance(index, list) and len(index) == 2 else None
        return found if isinstance(found, str) else None

    async def load_differences(self, cap_a: str, cap_b: str) -> None:
        """Load only the index chunks that one of two snapshots has and the other has not.

        Every directory of B that A lacks is in a chunk A lacks (a chunk both hold holds the same
        records), and the other way round: a comparison that skips identical directories finds
        nearly everything it reads there, at a cost that follows the differences.  A directory it
        does not find (one that moved, say) is read from the grid."""
        if self.index is None:
            return
        a, b = await self._index_of(cap_a), await self._index_of(cap_b)
        if a is None or b is None:
            return  # the snapshot without one is read through its directories; the other's is loaded
        chunks_a = index_caps(await self.gw.get_json(a))
        chunks_b = index_caps(await self.gw.get_json(b))
        shared = set(chunks_a) & set(chunks_b)
        await self._load_chunks([c for c in chunks_a + chunks_b if c not in shared])
        self._partly += [a, b]
        self.index.loaded.update((a, b))

    def load_in_part(self, index_cap: str) -> None:
        """The index directory ``index_cap`` is loaded chunk by chunk (by ``read.locate``): a
        directory that lives in an index alone and is not among the chunks loaded then loads the
        rest of it (as after :meth:`load_differences`), and :meth:`root` does not load it whole."""
        if self.index is None:
            self.index = _IndexStore(self._tmpdir)
        if index_cap not in self.index.loaded:
            self._partly.append(index_cap)
            self.index.loaded.add(index_cap)

    async def load_index(self, chunks: list[str]) -> None:
        """Load the records of these index chunks (a chunk that cannot be read is a warning)."""
        if self.index is not None:
            await self._load_chunks(chunks)

    async def _load_index(self, cap: object) -> None:
        """Fetch the chunks of an index (those not fetched already), ``jobs`` at a time."""
        assert self.index is not None
        if not isinstance(cap, str) or cap in self.index.loaded:
            return
        await self._load_chunks(index_caps(await self.gw.get_json(cap)))
        self.index.loaded.add(cap)

    async def _load_chunks(self, caps: list[str]) -> None:
        assert self.index is not None
        started = time.monotonic()
        chunks = list(dict.fromkeys(c for c in caps if c not in self.index.loaded))
        slots = Slots(self._jobs, self.clock)
        size = [0]

        async def one(chunk: str) -> None:
            await slots.acquire()
            try:
                data = await self.gw.get_small(chunk)
                assert self.index is not None
                size[0] += len(data)
                self.index.add(chunk, data)
            except (BadIndex, GatewayError, OSError) as e:
                # The index only saves requests: what this chunk held is read from the directories.
                why = (str(e) if isinstance(e, BadIndex) else getattr(e, "reason", None) or getattr(e, "strerror", None)
                       or type(e).__name__)
                log.warning("an index chunk cannot be used (%s); its directories are read one by one", why)
            finally:
                slots.release()

        try:
            await gatherResults([Deferred.fromCoroutine(one(c)) for c in chunks], consumeErrors=True)
        except FirstError as e:
            err = e.subFailure.value
            assert isinstance(err, BaseException)
            raise err from None
        log.info("index: %d chunks (%d bytes) loaded in %.2f s", len(chunks), size[0], time.monotonic() - started)

    async def raw_listing(self, cap: str) -> JSON:
        """A directory's listing (``["dirnode", {"children": ...}]``): from a loaded index, else from
        the grid.  A directory that lives in an index alone is proven by its name (the SHA-256 of
        its body); raises :class:`SnapshotError` when its record is missing or not its own."""
        body = await self._index_only(cap) if is_dir_id(cap) else (
            self.index.body(cap) if self.index is not None else None)
        if body is not None:
            try:
                return ["dirnode", {"children": json.loads(body)}]
            except ValueError:
                raise SnapshotError(what="(given)", problem="an index record is not a directory")
        return await self.gw.get_json(cap)

    async def _index_only(self, cap: str) -> bytes:
        """The body of a directory that lives in an index alone, checked against its name."""
        if self.index is not None:
            while self._partly and self.index.body(cap) is None:
                whole = self._partly.pop()
                self.index.loaded.discard(whole)
                await self._load_index(whole)
        body = self.index.body(cap) if self.index is not None else None
        if body is None:
            raise SnapshotError(what="(given)", problem=(
                "a directory is missing from the snapshot index, which alone holds it (an index chunk "
                "could not be read; `check --repair` may restore its shares)"))
        if dir_id(body) != cap:
            raise SnapshotError(what="(given)", problem="a directory of the snapshot index is damaged: its record "
                                                        "does not match its name")
        return body

    @property
    def has_index(self) -> bool:
        """Was an index loaded (by :meth:`root` of a snapshot that has one)?"""
        return self.index is not None and self.index.chunks > 0

    async def chunk_records(self, chunk: str) -> list[Record]:
        """The (dircap, body, names) records of one index chunk: from those loaded, else downloaded.
        Raises :class:`BadIndex` or :class:`GatewayError`."""
        held = self.index.chunk_records(chunk) if self.index is not None else None
        if held is not None:
            return held
        return list(index_records(await self.gw.get_small(chunk)))

    def indexed_names(self, cap: str) -> bytes | None:
        """A directory's names as a loaded index records them (None: not there, or an index of
        format 1, which has none)."""
        return self.index.names(cap) if self.index is not None else None

    def indexed_children(self, node: Node) -> list[Node] | None:
        """A directory's edges as a loaded index records them (None: it is not there)."""
        body = self.index.body(node.cap) if self.index is not None else None
        if body is None or (is_dir_id(node.cap) and dir_id(body) != node.cap):
            return None
        try:
            return parse_children(["dirnode", {"children": json.loads(body)}])
        except (BadSnapshot, ValueError):
            return []

    async def listing(self, cap: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """A directory's children as the grid holds them: key -> (type, read cap, metadata)."""
        listing = await self.raw_listing(cap)
        try:
            children = listing[1]["children"]
            return {key: (ntype, info.get("ro_uri") or info.get("rw_uri"), info.get("metadata") or {})
                    for key, (ntype, info) in children.items()}
        except (IndexError, KeyError, TypeError, ValueError):
            raise SnapshotError(what="(given)", problem="a directory listing is not one")

    async def children(self, node: Node) -> list[Node]:
        """A directory's edges, with exact names; unsafe or duplicate names are refused."""
        try:
            return parse_children(await self.raw_listing(node.cap))
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))

    async def prefetch(self, objects_cap: str | None, jobs: int) -> None:
        """Fetch every pack a snapshot uses, ``jobs`` at a time (a full restore needs them all)."""
        if objects_cap is None or not self._packs.whole:
            return
        await self._packs.prefetch(pack_caps(await self.gw.get_json(objects_cap)), jobs)

    # -- content ---------------------------------------------------------------------------------
    async def content(self, node: Node, sink: Callable[[bytes], object],
                      restart: Callable[[], None] = lambda: None,
                      hole: Callable[[int], object] | None = None, remaker: Remaking | None = None) -> Content:
        """Feed a file's content to ``sink``; ``restart()`` means "start over" (the gateway sent
        the whole file again after a fault).  Returns what was read and what was recorded.

        A sparse file's stored data is laid out at its extents (``system.sparse``): ``sink`` gets
        its logical content, zeros in its holes, or ``hole(n)`` for each hole if given (a restore
        seeks over it).  Its SHA-256 is its data's, as recorded; its size the logical one.

        A derived file (stored as its recipe) is made again by ``remaker`` (None: :attr:`remaker`,
        for the snapshot it is read from), or is a :class:`Content` that says it cannot be."""
        if DERIVED in node.metadata:
            remaker = remaker if remaker is not None else self.remaker
            if remaker is None:
                return _not_remade(node)
            return await remaker.content(node, sink, restart, hole)
        size = node.metadata.get("size")
        recorded = size if isinstance(size, int) else None
        want = node.metadata.get("sha256")
        wanted = want if isinstance(want, str) else None
        try:
            layout = layout_of(node.metadata)
        except ValueError:  # (damaged metadata: nothing can be laid out)
            return Content(0, "", recorded, wanted or "?")
        unfold = Unfold(layout, sink, hole) if layout is not None else None
        out = unfold.feed if unfold is not None else sink
        h = hashlib.sha256()
        got = [0]
        decoder = [Decoder(node.enc, recorded if layout is None else layout.data_size)]

        def feed(chunk: bytes) -> None:
            plain = decoder[0].feed(chunk)
            if plain:
                h.update(plain)
                got[0] += len(plain)
                out(plain)

        packed = node.pack
        source = node.object or node.cap
        if packed is not None:
            feed(await self._packs.read(PackRef(*packed)))
        elif (lit := lit_data(source)) is not None:
            feed(lit)
        else:
            def again() -> None:
                nonlocal h
                h = hashlib.sha256()
                got[0] = 0
                decoder[0] = Decoder(node.enc, recorded if layout is None else layout.data_size)
                if unfold is not None:
                    unfold.reset()
                restart()

            await self.gw.download(source, feed, again)
        if layout is not None and unfold is not None and got[0] == layout.data_size:
            unfold.finish()
            got[0] = layout.size  # (a wrong length of data is a mismatch of its SHA-256 anyway)
        return Content(got[0], h.hexdigest(), recorded, wanted)

    def close(self) -> None:
        self._packs.close()
        if self.index is not None:
            self.index.close()


class Remaking(Protocol):
    """What makes a derived file again (``read.remake.Remaker``), as :meth:`Reader.content` uses it."""

    async def content(self, node: Node, sink: Callable[[bytes], object], restart: Callable[[], None] = ...,
                      hole: Callable[[int], object] | None = None) -> Content: ...


def _not_remade(node: Node) -> Content:
    """The content of a derived file read without a remaker: none, and why."""
    size, sha = node.metadata.get("size"), node.metadata.get("sha256")
    raw = node.metadata.get(DERIVED)
    rule = raw.get("rule") if isinstance(raw, dict) else None
    named = f" (rule {rule})" if isinstance(rule, str) else ""
    return Content(0, "", size if isinstance(size, int) else None, sha if isinstance(sha, str) else None,
                   problem=f"a derived file{named}: this command cannot make it again")


class _IndexStore:
    """Directory bodies from loaded index chunks, kept in a private temporary file: only where
    each one lies is held in memory (a million entries' bodies are hundreds of megabytes)."""

    def __init__(self, tmpdir: str | None) -> None:
        self._tmpdir = tmpdir
        self._fd: int | None = None
        self._end = 0
        self._where: dict[str, tuple[int, int, int]] = {}  # cap -> offset, body size, names size (-1: none)
        #: Caps of the chunks and index directories loaded.
        self.loaded: set[str] = set()
        self.chunks = 0  # chunks whose records are held
        self._members: dict[str, list[str]] = {}  # chunk -> the dircaps of its records, in order

    def add(self, chunk: str, stored: bytes) -> None:
        if chunk in self.loaded:
            return
        if self._fd is None:
            self._fd = temp_file(self._tmpdir)
        every = list(index_records(stored))
        # (a directory met again: kept once, with its names if this copy has them and the first had not)
        where = self._where
        records = [r for r in every if r[0] not in where or (r[2] is not None and where[r[0]][2] < 0)]
        data = b"".join(body + (names or b"") for _, body, names in records)
        write_all(self._fd, data, self._end)  # (raises on a full disk: then nothing of it is recorded)
        at = self._end
        for cap, body, names in records:
            if cap not in where or where[cap][2] < 0:
                where[cap] = (at, len(body), -1 if names is None else len(names))
            at += len(body) + len(names or b"")
        self._end = at
        self.loaded.add(chunk)
        self.chunks += 1
        self._members[chunk] = [r[0] for r in every]

    def chunk_records(self, chunk: str) -> list[Record] | None:
        """The records of a loaded chunk, in order (None: it is not loaded)."""
        caps = self._members.get(chunk)
        if caps is None:
            return None
        out = []
        for cap in caps:
            rec = self.record(cap)
            if rec is None:
                return None
            out.append(rec)
        return out

    def record(self, cap: str) -> Record | None:
        """A directory's record: (cap, body, names), names None if its chunk had none."""
        at = self._where.get(cap)
        if at is None or self._fd is None:
            return None
        offset, size, names = at
        data = os.pread(self._fd, size + max(names, 0), offset)
        return cap, data[:size], data[size:] if names >= 0 else None

    def body(self, cap: str) -> bytes | None:
        at = self._where.get(cap)
        if at is None or self._fd is None:
            return None
        return os.pread(self._fd, at[1], at[0])

    def names(self, cap: str) -> bytes | None:
        at = self._where.get(cap)
        if at is None or self._fd is None or at[2] < 0:
            return None
        return os.pread(self._fd, at[2], at[0] + at[1])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._where.clear()
        self._members.clear()
        self.loaded.clear()


class _PackReader:
    """Packed members: one Range GET each (with ``ranges_before_whole``, a pack read more times
    than that is then fetched whole), or (``whole``) slices of packs fetched once."""

    def __init__(self, gateway: GatewayLike, whole: bool, tmpdir: str | None = None,
                 ranges_before_whole: int | None = None) -> None:
        self.gw = gateway
        self.whole = whole
        self._tmpdir = tmpdir
        self._most_ranges = ranges_before_whole
        self._dir = tempfile.TemporaryDirectory(prefix="lafs-backup-packs-", dir=tmpdir) if whole else None
        self._files: dict[str, _Spool] = {}
        self._ranges: dict[str, int] = {}

    async def prefetch(self, caps: list[str], concurrency: int) -> None:
        spools = []
        for cap in caps:
            if cap not in self._files:
                self._files[cap] = _Spool(self)
                spools.append((cap, self._files[cap]))
        todo = iter(spools)

        async def worker() -> None:
            # A few workers take the packs in turn, rather than a task per pack waiting for a slot:
            # a snapshot may have tens of thousands of packs, and the packs a reader started
            # first are skipped in this loop without a task, a slot or a reactor turn each.
            for cap, spool in todo:
                if spool.started:  # a reader that needed it first started it
                    continue
                try:
                    await spool.fetch(cap)
                except Exception:
                    pass  # the readers of this pack get the error

        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(max(1, concurrency))],
                            consumeErrors=True)

    async def read(self, ref: PackRef) -> bytes:
        if not self.whole and ref.cap not in self._files:
            self._ranges[ref.cap] = self._ranges.get(ref.cap, 0) + 1
            if self._most_ranges is None or self._ranges[ref.cap] <= self._most_ranges:
                return await self.gw.get_range(ref.cap, ref.offset, ref.length)
        entry = self._files.get(ref.cap)
        if entry is None:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="lafs-backup-packs-", dir=self._tmpdir)
            entry = self._files[ref.cap] = _Spool(self)
        if not entry.started:
            # Needed now, before the prefetch (which goes in the objects directory's order, not the
            # tree's) came to it: fetched at once, so a restore never waits on packs it needs later.
            await entry.fetch(ref.cap)
        else:
            await entry.ready()
        return entry.pread(ref.offset, ref.length)

    def close(self) -> None:
        for spool in self._files.values():
            spool.close()
        self._files.clear()
        if self._dir is not None:
            self._dir.cleanup()


class _Spool:
    """One pack downloaded to a temporary file, shared by all its members."""

    def __init__(self, reader: _PackReader) -> None:
        assert reader._dir is not None
        self.fd = os.open(reader._dir.name, os.O_TMPFILE | os.O_RDWR, 0o600)
        self.gw = reader.gw
        self.started = False
        self.done = False
        self.error: BaseException | None = None
        self.waiters: list[Deferred] = []

    async def fetch(self, cap: str) -> None:
        self.started = True
        pos = [0]

        def sink(chunk: bytes) -> None:
            os.pwrite(self.fd, chunk, pos[0])
            pos[0] += len(chunk)

        def restart() -> None:
            os.ftruncate(self.fd, 0)
            pos[0] = 0

        try:
            await self.gw.download(cap, sink, restart)
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.done = True
            for d in self.waiters:
                d.callback(None)
            self.waiters = []

    async def ready(self) -> None:
        if not self.done:
            d: Deferred = Deferred()
            self.waiters.append(d)
            await d
        if self.error is not None:
            raise self.error

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(5, f"pack is shorter than expected ({offset}+{length})")
        return data

    def close(self) -> None:
        os.close(self.fd)
