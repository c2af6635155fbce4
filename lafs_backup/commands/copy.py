"""``copy``: keep backups on a second grid, each recorded in that grid's repository as a copy of its original."""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from typing import Any

from ..config import gateway_base
from ..errors import UsageError
from ..history import Backup
from .context import Context, iso, key_path_for, outcome, read_key_arg, save_key


async def copy_backups(ctx: Context, to_url: str, backups: list[Backup], to_repo: str | None = None) -> dict[str, Any]:
    """Copy ``backups`` (newest first) that the destination's repository does not hold yet; returns
    what was done.  Takes the entry cache's lock (it keeps the map of what the destination holds)."""
    from ..read.copy import Copier
    from ..read.reader import Reader
    from ..repository import Record, Repository

    rep = ctx.reporter
    dest = gateway_base(to_url)
    here = await ctx.url()
    if dest == here:
        raise UsageError(f"--to-url {dest} is the grid the backups are on already")
    src_gw = await ctx.gateway()
    dst_gw = ctx.make_gateway(dest)
    await dst_gw.preflight()
    key = read_key_arg(to_repo, "--to-repo") if to_repo else None
    path = key_path_for(dest)
    if key is None and os.path.exists(path):
        key = read_key_arg(path, path)
    if key is None:
        repo = await Repository.create(dst_gw)
        save_key(path, repo.key)
        rep.say(f"lafs-backup: made a repository on {dest}; its recovery key is in {path}. Keep a copy of it "
                "off this machine: with it a new machine lists and restores the copies")
    else:
        repo = Repository(dst_gw, key)
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
    lock = await ctx.lock()
    reader = Reader(src_gw, jobs=ctx.config.operation.jobs)
    try:
        cache = await ctx.cache()
        try:
            known = cache.copies()
            for r in records:  # copies recorded there by a run killed before it noted them here
                if r.original and dest not in known.get(r.original, ()):
                    cache.record_copy(r.original, dest, r.cap, r.ts)
            copier = Copier(src_gw, dst_gw, lambda c: cache.copied(mapped, c),
                            lambda s, d: cache.set_copied(mapped, s, d), ctx.config.operation.jobs, reader=reader)
            for b in todo:
                snap = await copier.snapshot(b.cap)
                await repo.add(Record(snap, b.host or "unknown", b.source, b.ts, b.generation, b.tags, b.summary,
                                      original=b.cap))
                cache.record_copy(b.cap, dest, snap, time.time())
                done.append(b)
                rep.emit(f"copied generation {b.generation} ({iso(b.ts)}, {b.source_text}) to {dest}",
                         {"type": "copied", "id": b.short_id, "generation": b.generation, "to": dest},
                         err=not rep.json_mode)
        finally:
            cache.close()
    finally:
        reader.close()
        lock.release()
    st = copier.stats
    return {"to": dest, "snapshots_copied": len(done), "snapshots_held_already": len(backups) - len(todo),
            "objects_copied": st.objects, "bytes_copied": st.bytes, "directories_made": st.dirs,
            "reused": st.reused, "same_caps": st.same_caps, "seconds": round(time.monotonic() - t0, 3),
            "requests_source": _delta(src_gw.counts, before[0]), "requests_destination": _delta(dst_gw.counts,
                                                                                                  before[1])}


def _delta(now: Any, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    everything = await ctx.backups()
    chosen = ctx.select(everything, ns.snapshots, ns.source, ns.host, ns.tag)
    summary = await copy_backups(ctx, ns.to_url, chosen, ns.to_repo)
    if rep.json_mode:
        rep.record({"type": "summary", "operation": "copy", **summary})
    else:
        same = {True: "the grids encode alike: every cap is the same", False: "directories rebuilt with the "
                "destination's caps", None: "nothing new to store"}[summary["same_caps"]]
        rep.info(f"copy finished in {summary['seconds']:.1f}s: {summary['snapshots_copied']} backup(s) copied to "
                 f"{summary['to']}, {summary['snapshots_held_already']} held there already\n"
                 f"  objects stored: {summary['objects_copied']} ({summary['bytes_copied']} bytes), directories "
                 f"made: {summary['directories_made']}, already there: {summary['reused']}; {same}")
    return outcome(rep)
