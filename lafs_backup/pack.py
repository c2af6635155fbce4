"""Packs: small files concatenated into a few large immutable uploads, and read back by slice or whole.

A pack is the plain concatenation of its members' stored bytes (each member
encoded on its own), uploaded as an ordinary immutable file.  Where each
member lives (pack cap, offset, length) is kept on the member's edge, and
every pack is linked from the snapshot's ``packs`` directory so one
deep-check renews them all.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from .gateway import Gateway

log = logging.getLogger(__name__)


#: Separates a pack's last member from the salt of a pack stored again under a salt.
SALT_MARK = b"\0lafs-backup-salt:"


@dataclass(frozen=True)
class PackRef:
    cap: str
    offset: int
    length: int


class Packer:
    """Collects members into the open pack; seals it at ``target_size`` bytes or ``max_files`` members.

    At most ``uploads`` sealed packs are uploaded at once, so memory stays
    near ``(uploads + 1) * target_size``.
    """

    def __init__(self, gateway: Gateway, target_size: int, max_files: int, uploads: int = 2) -> None:
        self.gw = gateway
        self._draining = False
        self.expecting = 0
        self.uploading = 0  # sealed packs not yet stored
        self.target = target_size
        self.max_files = max_files
        self._buf = bytearray()
        self._members: list[tuple[Deferred, int, int]] = []
        self._slots = DeferredSemaphore(uploads)
        self._pending: list[Deferred] = []
        self.packs_uploaded = 0

    def add(self, data: bytes) -> Deferred:
        """Append ``data`` now; the Deferred fires with its :class:`PackRef` once its pack is uploaded."""
        d: Deferred = Deferred()
        self._members.append((d, len(self._buf), len(data)))
        self._buf += data
        if len(self._buf) >= self.target or len(self._members) >= self.max_files:
            self.seal()
        else:
            self._maybe_last()
        return d

    def expect(self) -> None:
        """A member is on its way (being read); the pack is not sealed for lack of members meanwhile."""
        self.expecting += 1

    def expected(self) -> None:
        """That member was appended, or turned out not to be needed."""
        self.expecting -= 1
        self._maybe_last()

    def _maybe_last(self) -> None:
        if self._draining and self.expecting == 0:
            self.seal()  # no more entries, nobody else reading: nothing more will come

    def relieve(self) -> None:
        """Memory or the window ran short: seal the open pack, unless an upload under way
        will free room when it finishes (sealing now would only make a small pack)."""
        if self.uploading == 0:
            self.seal()

    def drain(self) -> None:
        """No more entries will be read: seal once the members still being read are in."""
        self._draining = True
        self._maybe_last()

    def seal(self) -> None:
        """Close the open pack and start its upload (no-op when it is empty)."""
        if not self._members:
            return
        buf, members = bytes(self._buf), self._members
        self._buf, self._members = bytearray(), []
        self.uploading += 1
        self._pending = [d for d in self._pending if not d.called]
        self._pending.append(Deferred.fromCoroutine(self._upload(buf, members)))

    async def _upload(self, buf: bytes, members: list[tuple[Deferred, int, int]]) -> None:
        await self._slots.acquire()
        try:
            cap = await self._put(buf)
        except BaseException as e:
            self.uploading -= 1
            for d, _, _ in members:
                d.errback(e)
            return
        finally:
            self._slots.release()
        self.uploading -= 1  # before the members resume: they may look at it
        self.packs_uploaded += 1
        log.debug("pack of %d members, %d bytes stored", len(members), len(buf))
        for d, off, length in members:
            d.callback(PackRef(cap, off, length))

    async def _put(self, buf: bytes) -> str:
        """Upload a pack.  If the grid refuses it as unhappy, upload it again with a salt after
        the last member: the bytes differ, so does the storage index, and shares of an
        interrupted earlier upload of the same pack (left "incoming" on a server) are not in
        the way.  Members are addressed by offset, so the salt changes nothing for them."""
        from .store import despite_unhappiness

        return await despite_unhappiness(lambda salt: self.gw.put_bytes(buf + (SALT_MARK + salt if salt else b"")),
                                         self.gw, "a pack")

    async def flush(self) -> None:
        """Seal the open pack and wait for every upload."""
        self.seal()
        pending, self._pending = self._pending, []
        if pending:
            await gatherResults(pending, consumeErrors=True)


class Budget:
    """A count of bytes that may be held in memory at once; :meth:`take` waits for room (FIFO).

    ``starved`` is called whenever a taker has to wait (the packer seals its
    open pack then, so the memory it holds is freed once it is uploaded).
    """

    def __init__(self, size: int, starved: Any = None) -> None:
        self.size = size
        self.free = size
        self._starved = starved
        self._waiters: list[tuple[int, Deferred]] = []

    async def take(self, n: int) -> int:
        """Reserve ``n`` bytes (at most the whole budget); returns what was reserved, to give back."""
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


class PackReader:
    """Reads packed members for restore and verify.

    ``whole``: download each pack once into a private temporary file and
    slice members from it (fastest when most of a pack is wanted: a full
    restore).  Otherwise each member is one Range GET (fastest for a few
    files).
    """

    def __init__(self, gateway: Gateway, whole: bool, tmpdir: str | None = None) -> None:
        self.gw = gateway
        self.whole = whole
        self._dir = tempfile.TemporaryDirectory(prefix="lafs-backup-packs-", dir=tmpdir) if whole else None
        self._files: dict[str, Any] = {}

    async def prefetch(self, caps: list[str], concurrency: int) -> None:
        """Start fetching these whole packs, ``concurrency`` at a time (a full restore needs them all)."""
        if not self.whole:
            return
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
            return await self.gw.get_range(ref.cap, ref.offset, ref.length)
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

    def __init__(self, reader: PackReader) -> None:
        assert reader._dir is not None
        self.fd = os.open(reader._dir.name, os.O_TMPFILE | os.O_RDWR, 0o600)
        self.gw = reader.gw
        self.done = False
        self.error: BaseException | None = None
        self.waiters: list[Deferred] = []

    async def fetch(self, cap: str) -> None:
        def restart() -> None:
            os.ftruncate(self.fd, 0)

        pos = [0]

        def sink(chunk: bytes) -> None:
            os.pwrite(self.fd, chunk, pos[0])
            pos[0] += len(chunk)

        def reset() -> None:
            restart()
            pos[0] = 0

        try:
            await self.gw.download(cap, sink, reset)
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
