"""Rebuilding an entry cache from a snapshot: a new machine picks up deduplication where the old one left off.

A snapshot records, on every file's edge, its size, times, SHA-256 and where
its content lives, and every directory's exact body can be read back.  From
those, the cache gets a row for each content (so known content is not
uploaded again), each file state (path, size, mtime, ctime: a snapshot
records no inode), each directory body and each long symlink target: a
backup of the same data sends next to nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..caps import LIT_MAX, lit_data
from ..errors import GatewayError
from ..read.reader import Reader
from ..slots import Slots
from ..store.index import BadIndex
from ..store.index import chunk_bytes
from ..store.protocols import ObjectCacheLike
from ..store.snapshot import (INDEX, INDEX_TREE, OBJECTS, PACKED_MARKER_BODY, TREE, Hit, blob_key, body_key,
                              canonical_json, content_key, extents_key, file_key, index_key, is_dir_id)
from ..system.sparse import as_cap, layout_of

log = logging.getLogger(__name__)


class Rebuilder:
    """Fills ``cache`` (as generation ``gen``) from snapshots read through ``reader``; ``clock``
    (None: the reader's) is the reactor a freed listing slot wakes the next on."""

    def __init__(self, reader: Reader, cache: ObjectCacheLike, generation: int, listings: int = 8,
                 clock: IReactorTime | None = None) -> None:
        self.reader = reader
        self.cache = cache
        self.gen = generation
        self.rows = 0
        self._slots = Slots(listings, clock if clock is not None else reader.clock)
        self._seen: set[str] = set()

    def _row(self, key: bytes, hit: Hit) -> None:
        self.cache.store_hit(key, hit, self.gen)
        self.rows += 1

    async def snapshot(self, cap: str) -> int:
        """Add the rows one snapshot gives; returns how many rows were added so far."""
        await self.reader.root(cap)  # loads the snapshot's index: its directories need no request each
        root = await self._directory(cap, [])
        for kept in (OBJECTS, INDEX):  # their bodies too: a backup that makes them again finds them
            child = root.get(kept)
            if child is not None:
                linked = await self._directory(child[1], [])
                if kept == INDEX:
                    await self._index_chunks([ro for _, ro, _ in linked.values()])
        tree = root.get(TREE)
        if tree is not None:
            in_index = tree[2].get(INDEX_TREE) if isinstance(tree[2], dict) else None
            await self._walk(in_index if isinstance(in_index, str) else tree[1], [])
        self.cache.commit()
        return self.rows

    async def _directory(self, cap: str, path: list[bytes]) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """A directory's children; its exact body gets a row (a backup making it again finds it)."""
        await self._slots.acquire()
        try:
            children = await self.reader.listing(cap)
        finally:
            self._slots.release()
        body = {}
        for key, (ntype, ro, meta) in children.items():
            if isinstance(meta, dict) and "type" in meta:  # the type string a snapshot directory was made with
                ntype = "dirnode" if meta["type"] == "dir" else "filenode"
            info: dict[str, Any] = {"ro_uri": ro}
            if meta:
                info["metadata"] = meta
            body[key] = [ntype, info]
        if not is_dir_id(cap):  # (one in the index alone is named by its body: no row needed)
            self._row(body_key(canonical_json(body)), Hit(cap, None))
        return children

    async def _index_chunks(self, caps: list[str]) -> None:
        """A row for each index chunk, by its content (its bytes made again from its records, as
        the reader loaded them): the next backup's index stores nothing anew where the tree did
        not change."""
        for cap in caps:
            if not isinstance(cap, str) or cap in self._seen:
                continue
            self._seen.add(cap)
            try:
                records = await self.reader.chunk_records(cap)
                self._row(index_key(chunk_bytes(records)), Hit(cap, None))
            except (BadIndex, GatewayError):
                log.info("an index chunk cannot be read; the next backup stores its own")

    async def _walk(self, cap: str, path: list[bytes]) -> None:
        if cap in self._seen:
            return
        self._seen.add(cap)
        children = await self._directory(cap, path)
        waits = []
        for key, (ntype, ro, meta) in children.items():
            meta = meta or {}
            name = _name(key, meta)
            kind = meta.get("type")
            if kind == "dir" or (kind is None and ntype == "dirnode"):
                waits.append(Deferred.fromCoroutine(self._walk(ro, path + [name])))
            elif kind == "file":
                self._file(b"/".join(path + [name]), ro, meta)
            elif kind == "symlink" and ro and not ro.startswith("URI:LIT:"):
                target = meta.get("target")
                if isinstance(target, str) and len(target.encode()) > LIT_MAX:
                    self._row(blob_key(target.encode()), Hit(ro, None))
        if waits:
            await gatherResults(waits, consumeErrors=True)

    def _file(self, rel: bytes, cap: str, meta: dict[str, Any]) -> None:
        if "derived" in meta:  # (a recipe: no content of its own to know again)
            return
        sha_hex, size = meta.get("sha256"), meta.get("size")
        mtime, ctime = meta.get("mtime_ns"), meta.get("ctime_ns")
        if not (isinstance(sha_hex, str) and isinstance(size, int) and isinstance(mtime, int)
                and isinstance(ctime, int)):
            return
        sha = bytes.fromhex(sha_hex)
        enc = meta.get("enc") if isinstance(meta.get("enc"), str) else None
        pack = meta.get("pack")
        marker = lit_data(cap) is None  # (in a tree in the index alone, the edge points at no marker)
        if isinstance(pack, dict):
            hit = Hit(pack["cap"], sha, enc, int(pack["offset"]), int(pack["length"]))
            if marker:
                self._row(body_key(PACKED_MARKER_BODY), Hit(cap, None))  # what the edge points to
        elif isinstance(meta.get("object"), str):
            hit = Hit(meta["object"], sha, enc)
            if marker:
                self._row(body_key(PACKED_MARKER_BODY), Hit(cap, None))
        else:
            hit = Hit(cap, sha, enc)  # a plain filenode: exactly the file's bytes
        try:
            layout = layout_of(meta)
        except ValueError:
            return
        plains = (False, True) if hit.enc is None and hit.offset is None else (False,)
        for plain in plains:
            if not hit.cap.startswith("URI:LIT:"):  # a LIT file's content is its cap: computed, not looked up
                self._row(content_key(sha, plain), hit)
            if layout is None:
                self._row(file_key(rel, size, mtime, ctime, None, plain), hit)
            elif not plain:  # a sparse file's state: its data's object, and beside it where that data lies
                state = file_key(rel, size, mtime, ctime, None, plain)
                self._row(extents_key(state), Hit(as_cap(layout), sha))
                self._row(state, hit)


def _name(key: str, meta: dict[str, Any]) -> bytes:
    import base64

    raw = meta.get("name_b64")
    return base64.b64decode(raw) if isinstance(raw, str) else key.encode("utf-8")
