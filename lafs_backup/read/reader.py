"""The reader: the only way content comes back from the grid.

It reads a snapshot's directories (listings parsed into :class:`Node`
edges), and a file's content from wherever it lives: a slice of a pack (one
Range GET, or a slice of the whole pack fetched once), a LIT cap, or an
object streamed with Range restarts after a fault.  It decodes what was
stored (compression, salts) and checks the SHA-256 and size recorded at
backup time.  Restore, verify and diff read through it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from ..errors import SnapshotError
from ..store.encode import Decoder
from ..store.packer import PackRef
from ..store.snapshot import OBJECTS, BadSnapshot, Node, lit_data, pack_caps, parse_children, parse_root


@dataclass(frozen=True)
class Content:
    """What reading one file's content found."""

    size: int
    sha256: str
    #: The size and SHA-256 recorded at backup time, if any.
    recorded_size: int | None
    recorded_sha256: str | None

    @property
    def matches(self) -> bool | None:
        """Whether the content is what was backed up (None: nothing was recorded to compare)."""
        if self.recorded_sha256 is None and self.recorded_size is None:
            return None
        return (self.recorded_sha256 in (None, self.sha256)) and (self.recorded_size in (None, self.size))

    @property
    def mismatch(self) -> str:
        if self.recorded_sha256 not in (None, self.sha256):
            return "its content does not match the SHA-256 recorded at backup time"
        return f"{self.size} bytes read back, {self.recorded_size} recorded"


class Reader:
    """Reads snapshots through ``gateway``.

    ``whole_packs``: fetch each pack once into a private temporary file and
    slice members from it (fastest when most of a pack is wanted: a full
    restore); otherwise each packed file is one Range GET (fastest for a few).
    """

    def __init__(self, gateway: Any, whole_packs: bool = False, tmpdir: str | None = None) -> None:
        self.gw = gateway
        self._packs = _PackReader(gateway, whole_packs, tmpdir)

    @property
    def whole_packs(self) -> bool:
        return self._packs.whole

    # -- directories -----------------------------------------------------------------------------
    async def root(self, cap: str) -> tuple[Node, str | None]:
        """The snapshot's ``tree`` edge (the source root, with its metadata) and its objects directory."""
        listing = await self.gw.get_json(cap)
        try:
            tree = parse_root(listing)
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))
        objects = (listing[1].get("children") or {}).get(OBJECTS) if isinstance(listing, list) else None
        return tree, (objects[1].get("ro_uri") if objects else None)

    async def listing(self, cap: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """A directory's children as the grid holds them: key -> (type, read cap, metadata)."""
        listing = await self.gw.get_json(cap)
        try:
            children = listing[1]["children"]
            return {key: (ntype, info.get("ro_uri") or info.get("rw_uri"), info.get("metadata") or {})
                    for key, (ntype, info) in children.items()}
        except (IndexError, KeyError, TypeError, ValueError):
            raise SnapshotError(what="(given)", problem="a directory listing is not one")

    async def children(self, node: Node) -> list[Node]:
        """A directory's edges, with exact names; unsafe or duplicate names are refused."""
        try:
            return parse_children(await self.gw.get_json(node.cap))
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))

    async def prefetch(self, objects_cap: str | None, jobs: int) -> None:
        """Fetch every pack a snapshot uses, ``jobs`` at a time (a full restore needs them all)."""
        if objects_cap is None or not self._packs.whole:
            return
        await self._packs.prefetch(pack_caps(await self.gw.get_json(objects_cap)), jobs)

    # -- content ---------------------------------------------------------------------------------
    async def content(self, node: Node, sink: Callable[[bytes], None],
                      restart: Callable[[], None] = lambda: None) -> Content:
        """Feed a file's content to ``sink``; ``restart()`` means "start over" (the gateway sent
        the whole file again after a fault).  Returns what was read and what was recorded."""
        size = node.metadata.get("size")
        recorded = size if isinstance(size, int) else None
        want = node.metadata.get("sha256")
        h = hashlib.sha256()
        got = [0]
        decoder = [Decoder(node.enc, recorded)]

        def feed(chunk: bytes) -> None:
            plain = decoder[0].feed(chunk)
            if plain:
                h.update(plain)
                got[0] += len(plain)
                sink(plain)

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
                decoder[0] = Decoder(node.enc, recorded)
                restart()

            await self.gw.download(source, feed, again)
        return Content(got[0], h.hexdigest(), recorded, want if isinstance(want, str) else None)

    def close(self) -> None:
        self._packs.close()


class _PackReader:
    """Packed members: one Range GET each, or (``whole``) slices of packs fetched once."""

    def __init__(self, gateway: Any, whole: bool, tmpdir: str | None = None) -> None:
        self.gw = gateway
        self.whole = whole
        self._dir = tempfile.TemporaryDirectory(prefix="lafs-backup-packs-", dir=tmpdir) if whole else None
        self._files: dict[str, _Spool] = {}

    async def prefetch(self, caps: list[str], concurrency: int) -> None:
        slots = DeferredSemaphore(max(1, concurrency))
        spools = []
        for cap in caps:
            if cap not in self._files:
                self._files[cap] = _Spool(self)
                spools.append((cap, self._files[cap]))

        async def one(cap: str, spool: "_Spool") -> None:
            await slots.acquire()
            try:
                await spool.fetch(cap)
            except Exception:
                pass  # the readers of this pack get the error
            finally:
                slots.release()

        await gatherResults([Deferred.fromCoroutine(one(c, sp)) for c, sp in spools], consumeErrors=True)

    async def read(self, ref: PackRef) -> bytes:
        if not self.whole:
            return await self.gw.get_range(ref.cap, ref.offset, ref.length)  # type: ignore[no-any-return]
        entry = self._files.get(ref.cap)
        if entry is None:
            entry = self._files[ref.cap] = _Spool(self)
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
        self.done = False
        self.error: BaseException | None = None
        self.waiters: list[Deferred] = []

    async def fetch(self, cap: str) -> None:
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
