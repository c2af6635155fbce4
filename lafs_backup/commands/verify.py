"""``verify``: every share of a snapshot, and its file contents read back against their SHA-256."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..read.reader import Reader
from ..read.verify import Verifier
from .context import Context, outcome


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    if not 0 < ns.sample <= 100:
        raise UsageError(f"--sample must be a percentage above 0 and at most 100, not {ns.sample}")
    cap = await ctx.resolve(ns.snapshot, ns.source, ns.host, ns.tag)
    gw = await ctx.gateway()
    # The walk reads the grid's directories themselves; the index is checked against them.
    reader = Reader(gw, whole_packs=ns.sample >= 50, use_index=False)
    index = Reader(gw, jobs=ctx.config.operation.jobs)
    try:
        v = Verifier(gw, reader, ctx.reporter, ns.sample, ctx.config.operation.jobs, index=index)
        await v.run(cap)
    finally:
        reader.close()
        index.close()
    ctx.reporter.stats.files = v.files_read
    ctx.reporter.finish("verify")
    return outcome(ctx.reporter)
