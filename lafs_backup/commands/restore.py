"""``restore``: a snapshot, or some of its subtrees, into a target directory (or an fsspec URL)."""

from __future__ import annotations

import argparse
import os

from ..read.reader import Reader
from ..read.restore import Restorer
from .context import Context, outcome


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    cap = await ctx.resolve(ns.snapshot, ns.source, ns.host, ns.tag)
    gw = await ctx.gateway()
    # A full restore wants most of every pack: each is fetched whole, once.  A few paths want a
    # few members: one Range GET each.
    reader = Reader(gw, whole_packs=not ns.paths)
    try:
        from ..backup.source import is_url
        from ..read.remote import RemoteRestorer

        if is_url(ns.target):
            await RemoteRestorer(reader, ctx.reporter, ns.target, ctx.config.source.storage_options,
                                 in_thread=ctx.in_thread).run(
                cap, [os.fsencode(p) for p in ns.paths])
            ctx.reporter.stats.requests = dict(gw.counts)
            ctx.reporter.finish("restore")
            return outcome(ctx.reporter)
        r = Restorer(reader, ctx.reporter, ns.target, window=max(256, 4 * ctx.config.operation.jobs),
                     owners=False if ns.no_owner else None, numeric=ns.numeric_owner, clock=ctx.reactor)
        await r.run(cap, [os.fsencode(p) for p in ns.paths])
    finally:
        reader.close()
    ctx.reporter.stats.requests = dict(gw.counts)
    ctx.reporter.finish("restore")
    return outcome(ctx.reporter)
