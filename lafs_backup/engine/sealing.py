"""A sealed repository's host after each backup: the custodian gets every record it does not have yet, and
the host keeps only its window, letting go of everything that reads an older backup.

The window is the newest ``repository.window`` backups of each source made here (default: the newest
alone).  Their snapshot caps stay in the local history, so ``list``, ``restore`` and the next backup
(its kept subtrees, its deduplication) work as ever.  A backup leaves the window only once the
repository records it and the custodian's inbox holds its manifest and record (a backup whose record
or manifest could not be sent keeps its cap, and is sent again by the next run).  Of every older
backup the local history keeps its time, generation, tags and summary, and a short id in place of its
snapshot cap; its checks and copies go.  Every object row of the entry cache, copy-map row and local
copy of an index object whose cap no backup in any source's window reaches goes too (rows of a run of
another source still under way stay).  What stays readable on the host is then exactly what its
windows reach: the content of its newest backups, including the small files of deleted paths still
held in a pack that a newest backup links (packs are released when a chain of kept subtrees ends, at
most every eighth backup).
"""

from __future__ import annotations

import json
import logging
from ..db.local_history import LocalHistory
from ..grid.kept import KeptReads
from ..history import Backup
from ..protocols import GatewayLike
from ..report import Reporter
from .inbox import publish_sealed, snapshot_caps

log = logging.getLogger(__name__)

#: Caps a snapshot reaches, and the verify caps of those with shares: one walk (``inbox.snapshot_caps``).
Walked = tuple[set[str], set[str]]


def beyond(mine: list[Backup], window: int) -> tuple[list[Backup], list[Backup]]:
    """(the window, the backups to seal) of one source's backups made here, oldest first.  A backup the
    repository does not record yet, or whose record the custodian does not have yet, keeps its cap until
    it does (the next run sends it)."""
    keep = mine[-window:] if window > 0 else []
    return keep, [b for b in mine[:len(mine) - len(keep)] if b.record is not None and b.sent and not b.sealed]


class Window:
    """The caps this host keeps: those its windows reach, each snapshot walked once per run
    (``walked``: snapshot cap -> what it reaches)."""

    def __init__(self, gw: GatewayLike, walked: dict[str, Walked] | None = None) -> None:
        self.gw = gw
        self.walked: dict[str, Walked] = dict(walked or {})

    async def walk(self, snap: str) -> Walked:
        if snap not in self.walked:
            self.walked[snap] = await snapshot_caps(self.gw, snap)
        return self.walked[snap]

    async def send(self, rep: Reporter, writecap: str, history: LocalHistory, source: bytes) -> None:
        """Send the custodian every backup of ``source`` the repository records and it does not have yet:
        its manifest, with its sealed record in the envelope.  One that cannot be sent now (a warning
        says so) is sent by the next run, and keeps its cap until then."""
        for b in history.unsent(source):
            if b.row is None or b.box is None or b.sealed:
                continue
            box = json.loads(b.box)["box"]
            if await publish_sealed(rep, self.gw, writecap, b, box, (await self.walk(b.cap))[1]):
                history.set_sent(b.row)

    async def keep(self, history: LocalHistory, window: int, kept: KeptReads | None) -> tuple[int, int]:
        """Seal every source's backups beyond ``window`` and drop what no window reaches.  Returns
        (backups sealed, cache rows and copies dropped).  The caller holds its source's lock."""
        everything = history.backups()
        seal: list[Backup] = []
        reach: set[str] = set()
        for source in sorted({b.source for b in everything}):
            mine = sorted((b for b in everything if b.source == source), key=lambda b: (b.ts, b.row or 0))
            gone = beyond(mine, window)[1]
            seal += gone
            for b in mine:  # (the window, and those that cannot leave it yet)
                if b not in gone and not b.sealed:
                    reach |= {b.cap} | (await self.walk(b.cap))[0]
        dropped = history.seal([b.row for b in seal if b.row is not None], reach)
        if kept is not None:
            dropped += kept.retain(reach)
        log.info("sealed window: %d backup(s) sealed, %d cache rows and copies dropped, %d caps kept",
                 len(seal), dropped, len(reach))
        return len(seal), dropped

