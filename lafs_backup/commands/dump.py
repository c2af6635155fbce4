"""``dump``: one file's exact bytes on stdout, or a directory as a tar stream."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..read.browse import TYPE_NAMES, Browser
from ..read.dump import write_file, write_tar
from ..read.reader import Reader
from ..store.entry import KIND_DIR, KIND_FILE
from .context import Context, outcome



async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    cap = await ctx.resolve(ns.snapshot, ns.source, ns.host, ns.tag)
    out = sys.stdout.buffer
    if out.isatty() and not ns.force:
        raise UsageError("dump writes raw bytes (or a tar stream): redirect stdout to a file or a pipe, or "
                         "give --force")
    gw = await ctx.gateway()
    # A whole snapshot's tar reads the index; a path needs only the directories on its way.
    reader = Reader(gw, use_index=ns.path in ("", ".", "/"), jobs=ctx.config.operation.jobs)
    try:
        browser = Browser(reader, ahead=max(4, ctx.config.operation.jobs), remember=64)
        item = await browser.lookup(cap, ns.path)
        if item.kind == KIND_FILE:
            content = await write_file(reader, item, out)
            if content.matches is False:
                rep.problem(item.path, content.mismatch + " (the bytes written are what the grid holds)")
        elif item.kind == KIND_DIR or ns.path in ("", ".", "/"):
            await write_tar(browser, reader, item, out, rep.problem, rep.note_once)
        else:
            raise UsageError(f"{ns.path} is a {TYPE_NAMES.get(item.kind, item.kind)}: dump writes a file's "
                             "bytes, or a directory as a tar stream")
    finally:
        reader.close()
    return outcome(rep)
