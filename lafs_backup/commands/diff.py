"""``diff``: what changed between two snapshots, or between a snapshot and its source as it is now."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ..read.diff import Change, LiveDiff, SnapshotDiff
from ..read.reader import Reader
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    if ns.live == (ns.b is not None):
        raise UsageError("give either two snapshots (diff A B) or one and --live")
    rep = ctx.reporter
    found: list[Change] = []

    def emit(c: Change) -> None:
        found.append(c)
        rep.emit(c.line(), c.as_dict())

    cap_a = await ctx.resolve(ns.a, ns.source, ns.host, ns.tag)
    reader = Reader(await ctx.gateway())
    try:
        if ns.b is not None:
            await SnapshotDiff(reader, emit).run(cap_a, await ctx.resolve(ns.b, ns.source, ns.host, ns.tag))
        else:
            rec = next((x for x in await ctx.backups() if x.cap == cap_a), None)
            src = rec.source if rec is not None else ctx.snapshot_source(ns.source)
            if not src or not os.path.isdir(src):
                raise UsageError("--live needs the snapshot's source directory: it is not recorded for this "
                                 "snapshot and source.path is not set")
            await LiveDiff(reader, src, emit, ctx.config.filter).run(cap_a)
    finally:
        reader.close()
    rep.info(f"{len(found)} difference(s)")
    return 1 if found else 0
