"""Copying snapshots to a second grid: every object read once from the source, stored on the destination.

A snapshot is copied from its leaves up.  A file, pack or encoded object is
streamed from the source gateway into a private temporary file, then
uploaded to the destination (nothing is held in memory whole); a LIT cap
holds its content and is the same on every grid.  A directory is rebuilt
from its listing with each child's cap, and the pack and object caps in its
edges' metadata, replaced by their destination caps, in the same canonical
form it was made in: when the two grids encode alike (the same k, N,
segment size and convergence secret) every cap comes out equal, and the
copy is the same snapshot.  Everything reaches the destination through the
store's writer for it (``store.Writer``), as a backup's objects do: an
object or directory the destination refuses as unhappy (a killed copy's
upload of the same bytes still holds its shares as "incoming") is stored
again under a salt, and a cap comes back only once the destination
confirmed it.  Each such object goes into a map (``map_get``/``map_put``,
kept in the entry cache per destination and committed at once), so a
killed copy resumes without sending it again and a directory already
copied is skipped whole, its subtree unread.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..caps import lit_data
from ..errors import GatewayError, SnapshotError
from ..protocols import GatewayLike
from ..read.reader import Reader
from ..slots import Slots
from ..store.index import BadIndex, IndexWriter
from ..store.snapshot import INDEX, INDEX_TREE, body_names, canonical_json, dir_id, index_body, index_caps, is_dir_id
from ..store.protocols import WriterLike
from ..store.store import Writer, full_error, temp_file, write_all
from ..system.paths import LocalFile

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class CopyStats:
    """What a copy did."""

    objects: int = 0
    bytes: int = 0
    dirs: int = 0
    reused: int = 0
    identical: int = 0
    different: int = 0
    caps: dict[str, int] = field(default_factory=dict)

    @property
    def same_caps(self) -> bool | None:
        """Did the destination give the source's caps (None: nothing was stored to tell)?"""
        if not (self.identical or self.different):
            return None
        return self.different == 0


class Copier:
    """Copies snapshots from ``source`` (a gateway) to ``dest`` (another gateway's client, written
    through a :class:`~..store.store.Writer`)."""

    def __init__(self, source: GatewayLike, dest: GatewayLike, map_get: Callable[[str], str | None],
                 map_put: Callable[[str, str], None], jobs: int = 4, tmpdir: str | None = None,
                 reader: Reader | None = None, clock: IReactorTime | None = None) -> None:
        """``reader`` (of ``source``): directories are read from each snapshot's index through it.
        ``clock`` (None: the source gateway's) is the reactor a freed slot wakes the next on."""
        self.src = source
        self.reader = reader
        self.out: WriterLike = Writer(dest)
        self._get = map_get
        self._put = map_put
        clock = clock if clock is not None else source.clock
        self._slots = Slots(max(1, jobs), clock)
        self._listings = Slots(max(2, jobs), clock)
        self._tmpdir = tmpdir
        self._inflight: dict[str, list[Deferred[str]]] = {}
        self.stats = CopyStats()

    async def snapshot(self, cap: str) -> str:
        """The destination cap of snapshot ``cap``, copying whatever the destination lacks."""
        done = self._get(cap)
        if done is not None:
            self.stats.reused += 1
            return done
        if self.reader is not None:
            await self.reader.root(cap)  # loads its index
        return await self._once(cap, lambda c: self._make_dir(c, root=True))

    # -- directories ---------------------------------------------------------------------------
    async def _dir(self, cap: str) -> str:
        done = self._get(cap)
        if done is not None:
            self.stats.reused += 1
            return done
        return await self._once(cap, self._make_dir)

    async def _make_dir(self, cap: str, root: bool = False) -> str:
        await self._listings.acquire()
        try:
            listing = await (self.reader.raw_listing(cap) if self.reader is not None and not root
                             else self.src.get_json(cap))
        finally:
            self._listings.release()
        try:
            children = dict(listing[1]["children"])
            index = children.pop(INDEX, None) if root else None
            items = [(name, ntype, info) for name, (ntype, info) in children.items()]
        except (IndexError, KeyError, TypeError, ValueError):
            raise SnapshotError(what="(copy)", problem="a directory listing is not one")
        new = await _all([self._edge(ntype, info) for _, ntype, info in items])
        edges = {name: edge for (name, _, _), edge in zip(items, new)}
        if index is not None:  # made last: it names the destination caps of every directory
            made_index = await self._index(index[1].get("ro_uri"))
            if made_index is not None:
                edges[INDEX] = ["dirnode", {"ro_uri": made_index}]
        body = canonical_json(edges)
        # A directory that lives in the index alone is named by its body: the index made last
        # records it under that name.
        made = dir_id(body) if is_dir_id(cap) else await self.out.mkdir(body)
        self._record(cap, made)
        self.stats.dirs += 1
        return str(made)

    async def _edge(self, ntype: str, info: dict[str, Any]) -> list[Any]:
        """One child edge with destination caps, in the form it was made in ('metadata' only when
        there is some, as lafs-backup writes its directories)."""
        cap = info.get("ro_uri")
        if not isinstance(cap, str):
            raise SnapshotError(what="(copy)", problem="an entry has no read cap")
        meta = dict(info.get("metadata") or {})
        meta.pop("tahoe", None)  # (Tahoe's own link times, where a gateway adds them)
        pack = meta.get("pack")
        if isinstance(pack, dict) and isinstance(pack.get("cap"), str):
            meta["pack"] = {**pack, "cap": await self._object(pack["cap"])}
        if isinstance(meta.get("object"), str):
            meta["object"] = await self._object(meta["object"])
        if isinstance(meta.get(INDEX_TREE), str):  # the tree's root, in the index alone
            meta[INDEX_TREE] = await self._dir(meta[INDEX_TREE])
        # A file stored as itself (a plain tree, which `tahoe cp` restores) must keep exactly its bytes;
        # every other object is read by offset or length, so a salt after its bytes changes nothing.
        exact = ntype == "filenode" and meta.get("type") == "file" and "pack" not in meta and "object" not in meta
        dst = await (self._dir(cap) if ntype == "dirnode" else self._object(cap, can_salt=not exact))
        out: dict[str, Any] = {"ro_uri": dst}
        if meta:
            out["metadata"] = meta
        return [ntype, out]

    # -- the snapshot index ------------------------------------------------------------------------
    async def _index(self, cap: object) -> str | None:
        """The destination's index of a copied snapshot: each record of the source's index with its
        destination caps, chunked anew (None, and the copy is read through its directories, if a
        record names a directory or object the copy does not hold)."""
        if not isinstance(cap, str):
            return None
        writer = IndexWriter()
        made: list[str] = []
        reader = self.reader or Reader(self.src, use_index=False)
        for chunk in index_caps(await self.src.get_json(cap)):
            try:
                records = await reader.chunk_records(chunk)  # as the reader loaded it, if it did
            except (BadIndex, GatewayError) as e:
                # The copy is read through its directories, as a snapshot without an index is.
                log.warning("the snapshot index is not copied: %s", e if isinstance(e, BadIndex) else e.reason)
                return None
            for dircap, body, _names in records:
                dst, translated = self._get(dircap), self._translated(body)
                if dst is None or translated is None:
                    # Not a directory of the copied tree (an older version of one, carried by a
                    # watch round's index): a reader never asks for it.
                    continue
                try:
                    names = body_names(translated)  # (its subdirectories' caps are the destination's)
                except ValueError:
                    continue
                raw = writer.add(dst, translated, names)
                if raw is not None:
                    made.append(await self._index_chunk(raw))
        last = writer.finish()
        if last is not None:
            made.append(await self._index_chunk(last))
        if not made:
            return None
        return await self.out.mkdir(index_body(made))

    def _translated(self, body: bytes) -> bytes | None:
        """A directory body with the destination's caps, as :meth:`_make_dir` made it (None: a cap
        the copy does not hold)."""
        try:
            children = json.loads(body)
        except ValueError:
            return None
        out: dict[str, Any] = {}
        for name, (ntype, info) in children.items():
            meta = dict(info.get("metadata") or {})
            pack = meta.get("pack")
            caps = [info.get("ro_uri"), pack.get("cap") if isinstance(pack, dict) else None, meta.get("object")]
            mapped = [c if c is None or lit_data(c) is not None else self._get(c) for c in caps]
            if any(c is not None and m is None for c, m in zip(caps, mapped)):
                return None
            if isinstance(pack, dict):
                meta["pack"] = {**pack, "cap": mapped[1]}
            if mapped[2] is not None:
                meta["object"] = mapped[2]
            edge: dict[str, Any] = {"ro_uri": mapped[0]}
            if meta:
                edge["metadata"] = meta
            out[name] = [ntype, edge]
        return canonical_json(out)

    async def _index_chunk(self, raw: bytes) -> str:
        """A destination index chunk, stored once (the map remembers it by its content)."""
        key = "index-chunk:" + hashlib.sha256(raw).hexdigest()
        done = self._get(key)
        if done is not None:
            return done
        made, stored = await self.out.index_chunk(raw)
        self._put(key, made)
        self.stats.objects += 1
        self.stats.bytes += stored
        return made

    # -- objects ---------------------------------------------------------------------------------
    async def _object(self, cap: str, can_salt: bool = True) -> str:
        if lit_data(cap) is not None:
            return cap  # the content is the cap: the same on every grid
        done = self._get(cap)
        if done is not None:
            self.stats.reused += 1
            return done
        return await self._once(cap, lambda c: self._transfer(c, can_salt))

    async def _once(self, cap: str, work: Callable[[str], Awaitable[str]]) -> str:
        """``work(cap)``, once however many edges name ``cap`` at the same time (a pack, the packed-file
        marker directory): the grid refuses two uploads of the same bytes at once as unhappy."""
        waiting = self._inflight.get(cap)
        if waiting is not None:
            d: Deferred[str] = Deferred()
            waiting.append(d)
            return str(await d)
        waiting = self._inflight[cap] = []
        try:
            made = await work(cap)
        except BaseException as e:
            for d in waiting:
                d.errback(e)
            raise
        finally:
            del self._inflight[cap]
        for d in waiting:
            d.callback(made)
        return str(made)

    async def _transfer(self, cap: str, can_salt: bool) -> str:
        await self._slots.acquire()
        try:
            fd = temp_file(self._tmpdir)
        except OSError as e:
            self._slots.release()
            raise full_error(self._tmpdir, e, b"", "copying") from None
        try:
            pos = [0]

            def sink(chunk: bytes) -> None:
                try:
                    pos[0] += write_all(fd, chunk, pos[0])
                except OSError as e:  # a full TMPDIR: every later object would fail the same way
                    raise full_error(self._tmpdir, e, b"", "copying") from None

            def restart() -> None:
                os.ftruncate(fd, 0)
                pos[0] = 0

            await self.src.download(cap, sink, restart)
            size = pos[0]
            src = LocalFile(fd)
            made = await self.out.put_file(src, size, "(copy)", "an object", can_salt)
        finally:
            os.close(fd)
            self._slots.release()
        self._record(cap, made)
        self.stats.objects += 1
        self.stats.bytes += size
        return str(made)

    def _record(self, src: str, dst: str) -> None:
        self._put(src, dst)
        if src == dst:
            self.stats.identical += 1
        else:
            self.stats.different += 1


async def _all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``coros`` run together.  When one fails, the others are waited for (none goes on
    storing after the copy has stopped), then the first failure is raised as itself."""
    results = await DeferredList([Deferred.fromCoroutine(c) for c in coros], consumeErrors=True)
    for ok, value in results:
        if not ok:
            assert isinstance(value, Failure)  # (what failed gives its Failure, which Twisted's types leave out)
            value.raiseException()
    return [value for _, value in results]

