"""``ls``: the entries of a snapshot (or of one directory in it), without restoring anything."""

from __future__ import annotations

import argparse
import json
import stat
import time

from ..read.browse import Browser, Item
from ..read.reader import Reader
from ..report import _printable
from ..store.entry import KIND_DIR, KIND_LINK
from .context import Context, outcome


def long_line(item: Item) -> str:
    """``ls -l``'s line: mode, owner, group, size, mtime (UTC), path, and a symlink's target."""
    meta = item.meta
    user = meta.get("user") if isinstance(meta.get("user"), str) else str(item.int_meta("uid"))
    group = meta.get("group") if isinstance(meta.get("group"), str) else str(item.int_meta("gid"))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.int_meta("mtime_ns") / 1e9))
    text = f"{stat.filemode(item.st_mode())} {user:<8} {group:<8} {item.size():>12} {when}  {shown(item)}"
    if item.kind == KIND_LINK and item.node.target is not None:
        text += " -> " + _printable(item.node.target.decode("utf-8", "surrogateescape"))
    return text


def shown(item: Item) -> str:
    name = item.path.decode("utf-8", "surrogateescape") or "."
    return _printable(name) + ("/" if item.kind == KIND_DIR and item.path else "")


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    cap = await ctx.resolve(ns.snapshot, ns.source, ns.host, ns.tag)
    # A recursive listing reads the snapshot's index (no request per directory); one directory
    # is cheaper read on its own.
    reader = Reader(await ctx.gateway(), use_index=ns.recursive, jobs=ctx.config.operation.jobs)
    browser = Browser(reader, ahead=max(4, ctx.config.operation.jobs), remember=64)
    top = await browser.lookup(cap, ns.path or "")
    items = [top] if top.kind != KIND_DIR else None

    def show(item: Item) -> None:
        if rep.json_mode:
            rep.output(json.dumps(item.json(), sort_keys=True))
        else:
            rep.output(long_line(item) if ns.long else shown(item))

    if items is not None:
        show(top)
    else:
        async for item in browser.walk(top, recursive=ns.recursive):
            show(item)
    return outcome(rep)
