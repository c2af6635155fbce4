"""A sealed repository's host keeps only its window: after each backup it lets go of everything that
reads an older one.

The window is the newest ``repository.window`` backups of the source (default: the newest alone).
Their snapshot caps stay in the local history, so ``list``, ``restore`` and the next backup (its kept
subtrees, its deduplication) work as ever.  Of every older backup that the repository records, the
local history keeps its time, generation, tags and summary, and a short id in place of its snapshot
cap; its checks and copies go.  Every object row of the entry cache, copy-map row and local copy of
an index object whose cap the window's backups do not reach goes too, unless another source's backup
may use it.  What stays readable on the host is then exactly what its window reaches: the content of
its newest backups, including the small files of deleted paths still held in a pack that the newest
backup links (packs are released when a chain of kept subtrees ends, at most every eighth backup).
"""

from __future__ import annotations

import logging

from ..db.local_history import LocalHistory
from ..history import Backup
from ..protocols import GatewayLike
from .inbox import snapshot_caps

log = logging.getLogger(__name__)


def beyond(mine: list[Backup], window: int) -> tuple[list[Backup], list[Backup]]:
    """(the window, the backups to seal) of one source's backups made here, oldest first: a backup the
    repository does not record yet keeps its cap until it does (the next run records it)."""
    keep = mine[-window:] if window > 0 else []
    return keep, [b for b in mine[:len(mine) - len(keep)] if b.record is not None and not b.sealed]


async def keep_window(gw: GatewayLike, history: LocalHistory, source: bytes, window: int, newest: Backup,
                      reach: set[str]) -> tuple[int, int]:
    """Seal this host's backups of ``source`` beyond ``window`` and drop what only they reach
    (``reach``: the caps ``newest`` reaches, walked already).  Returns (backups sealed, cache rows
    dropped).  The caller holds the source's lock."""
    mine = [b for b in history.backups() if b.source == source and b.host == newest.host]
    mine.sort(key=lambda b: (b.ts, b.row or 0))
    keep, seal = beyond(mine, window)
    caps = set(reach) | {b.cap for b in keep if not b.sealed}
    for b in keep:
        if b.row != newest.row and not b.sealed:
            caps |= (await snapshot_caps(gw, b.cap))[0]
    dropped = history.seal([b.row for b in seal if b.row is not None], caps, source)
    kept = getattr(gw, "kept", None)  # (the gateway's local copies of index objects, when it keeps any)
    if kept is not None:
        dropped += kept.retain(caps)
    log.info("sealed window: %d backup(s) sealed, %d cache rows and copies dropped, %d caps kept",
             len(seal), dropped, len(caps))
    return len(seal), dropped
