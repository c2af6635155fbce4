"""Copies: backups kept on a second grid, each recorded in that grid's repository as a copy of its
original (the copier stores through the destination's store; the map of what it holds is kept in
the entry cache, so a killed copy resumes and a second one sends nothing)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, AsyncContextManager, Callable, Mapping

from ..db.local import LocalDB
from ..history import Backup, iso
from ..protocols import GatewayLike
from .runtime import Runtime

if TYPE_CHECKING:
    from ..repository import Repository


async def copy_backups(rt: Runtime, jobs: int, src_gw: GatewayLike, dst_gw: GatewayLike, dest: str, repo: Repository,
                       locked_cache: Callable[[], AsyncContextManager[LocalDB]],
                       backups: list[Backup]) -> dict[str, Any]:
    """Copy ``backups`` (newest first) that the destination's repository ``repo`` does not hold yet;
    returns what was done.  Takes the entry cache's lock (it keeps the map of what ``dest`` holds)."""
    from .copier import Copier
    from ..read.reader import Reader
    from ..repository import Record

    rep = rt.reporter
    records = [r for r in await repo.records() if r.original]
    held = {r.original for r in records}
    todo = sorted((b for b in backups if b.cap not in held and b.original is None), key=lambda b: (b.ts, b.id),
                  reverse=True)
    before = (dict(src_gw.counts), dict(dst_gw.counts))
    t0 = time.monotonic()
    done = []
    # The map is kept per destination grid and repository: a gateway URL that comes to front another
    # grid (or a repository made anew) never inherits what an earlier one held.
    mapped = f"{dest} {hashlib.sha256(repo.key.writecap.encode()).hexdigest()[:16]}"
    reader = Reader(src_gw, jobs=jobs)
    try:
        async with locked_cache() as db:
            known = db.history.copies()
            for r in records:  # copies recorded there by a run killed before it noted them here
                if r.original and dest not in known.get(r.original, ()):
                    db.history.record_copy(r.original, dest, r.cap, r.ts)
            copier = Copier(src_gw, dst_gw, lambda c: db.copy_map.copied(mapped, c),
                            lambda s, d: db.copy_map.set_copied(mapped, s, d), jobs, reader=reader)
            for b in todo:
                snap = await copier.snapshot(b.cap)
                await repo.add(Record(snap, b.host or "unknown", b.source, b.ts, b.generation, b.tags, b.summary,
                                      original=b.cap))
                db.history.record_copy(b.cap, dest, snap, time.time())
                done.append(b)
                rep.emit(f"copied generation {b.generation} ({iso(b.ts)}, {b.source_text}) to {dest}",
                         {"type": "copied", "id": b.short_id, "generation": b.generation, "to": dest},
                         err=not rep.json_mode)
    finally:
        reader.close()
    st = copier.stats
    return {"to": dest, "snapshots_copied": len(done), "snapshots_held_already": len(backups) - len(todo),
            "objects_copied": st.objects, "bytes_copied": st.bytes, "directories_made": st.dirs,
            "reused": st.reused, "same_caps": st.same_caps, "seconds": round(time.monotonic() - t0, 3),
            "requests_source": _delta(src_gw.counts, before[0]), "requests_destination": _delta(dst_gw.counts,
                                                                                                  before[1])}


def _delta(now: Mapping[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}
