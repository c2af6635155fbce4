"""Packs: small files concatenated into a few large immutable uploads.

A pack is the plain concatenation of its members' stored bytes (each member
encoded on its own), uploaded as an ordinary immutable file.  Where each
member lives (pack cap, offset, length) is kept on the member's edge, and
every pack is linked from the snapshot's ``objects`` directory so one
deep-check renews them all.  The packer only assembles packs and decides
when to seal them; the store uploads them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..slots import Slots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackRef:
    cap: str
    offset: int
    length: int


class Packer:
    """Collects members into the open pack; seals it at ``target_size`` bytes or ``max_files`` members.

    At most ``uploads`` sealed packs are uploaded at once, so memory stays
    near ``(uploads + 1) * target_size``.  ``clock`` is the reactor a freed
    upload slot wakes the next sealed pack on.
    """

    def __init__(self, put: Callable[[bytes], Awaitable[str]], target_size: int, max_files: int,
                 clock: IReactorTime, uploads: int = 2) -> None:
        self._put = put
        self._draining = False
        self.expecting = 0
        self.uploading = 0  # sealed packs not yet stored
        self.target = target_size
        self.max_files = max_files
        self._buf = bytearray()
        self._members: list[tuple[Deferred, int, int]] = []
        self._slots = Slots(uploads, clock)
        self._pending: list[Deferred] = []
        self.packs_uploaded = 0
        #: Relief was asked while a pack was uploading: seal when the uploads are done.
        self._relief_owed = False

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
        if self.expecting == 0:
            self._settle_relief()

    def _maybe_last(self) -> None:
        if self._draining and self.expecting == 0:
            self.seal()  # no more entries, nobody else reading: nothing more will come

    def relieve(self) -> None:
        """Memory or the window ran short: seal the open pack, unless an upload under way
        will free room when it finishes (sealing now would only make a small pack), or the open
        pack is empty while members are being read (they will land in it)."""
        if self.uploading == 0 and (self._members or not self.expecting):
            self.seal()
        else:
            # The upload under way may free no room at all (its members' entries can stay held by
            # directories waiting for members of the open pack), and the members being read may be
            # all the room there is: owe the relief, and seal the open pack once the uploads are
            # done and the members read are in, so the run never waits for a pack nobody seals.
            self._relief_owed = True

    def _settle_relief(self) -> None:
        if self._relief_owed and self.uploading == 0 and (self._members or not self.expecting):
            self._relief_owed = False
            self.seal()

    def drain(self) -> None:
        """No more entries will be read: seal once the members still being read are in."""
        self._draining = True
        self._maybe_last()

    def seal(self) -> None:
        """Close the open pack and start its upload (no-op when it is empty)."""
        if not self._members:
            return
        self._relief_owed = False
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
            self._settle_relief()
            return
        finally:
            self._slots.release()
        self.uploading -= 1  # before the members resume: they may look at it
        self.packs_uploaded += 1
        log.debug("pack of %d members, %d bytes stored", len(members), len(buf))
        for d, off, length in members:
            d.callback(PackRef(cap, off, length))
        self._settle_relief()

    async def flush(self) -> None:
        """Seal the open pack and wait for every upload."""
        self.seal()
        pending, self._pending = self._pending, []
        if pending:
            await gatherResults(pending, consumeErrors=True)


