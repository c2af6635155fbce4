"""``ls``: the entries of a snapshot (or of one directory in it), without restoring anything."""

from __future__ import annotations

import argparse
import json
import stat
import time
from typing import AsyncIterator

from ..read.browse import Browser, Item
from ..read.locate import Paths
from ..read.reader import Reader
from .. import names
from ..report import _printable, outcome, size_text
from ..resources import Opener
from ..store.entry import KIND_DIR, KIND_LINK, unescape
from .which import resolve
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup ls -l latest notes'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``ls``."""
    options.snapshot(p, "the backup to list")
    p.add_argument("path", nargs="?", default="", help="a directory (or file) in the snapshot, written as ls prints it (default: its root)")
    p.add_argument("-l", "--long", action="store_true", help="mode, owner, group, size and mtime too")
    p.add_argument("--human-readable", action="store_true",
                   help="with -l: sizes as the rest of the tool prints them (785 B, 2.9 MiB), not in bytes")
    p.add_argument("-R", "--recursive", action="store_true", help="every entry below, not only the children")
    options.which(p)


def long_line(item: Item, human: bool = False) -> str:
    """``ls -l``'s line: mode, owner, group, size (in bytes; ``human``: as :func:`size_text` writes
    it), mtime (UTC), path, a symlink's target, and how a derived file is made."""
    meta = item.meta
    user = meta.get("user") if isinstance(meta.get("user"), str) else str(item.int_meta("uid"))
    group = meta.get("group") if isinstance(meta.get("group"), str) else str(item.int_meta("gid"))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.int_meta("mtime_ns") / 1e9))
    size = size_text(item.size()) if human else str(item.size())
    text = f"{stat.filemode(item.st_mode())} {user:<8} {group:<8} {size:>12} {when}  {shown(item)}"
    if item.kind == KIND_LINK and item.node.target is not None:
        text += " -> " + _printable(item.node.target.decode("utf-8", "surrogateescape"))
    made = item.recipe()
    if made is not None:
        text += f"  [derived: {made.rule}, {made.program} from {', '.join(_printable(i.path) for i in made.inputs)}]"
    return text


def shown(item: Item) -> str:
    name = item.path.decode("utf-8", "surrogateescape") or "."
    return _printable(name) + ("/" if item.kind == KIND_DIR and item.path else "")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    cap = await resolve(o, ns.snapshot, ns.source, ns.host, ns.tag)
    # A recursive listing reads the snapshot's index (no request per directory): below PATH, the
    # index chunks of PATH's subtree.  One directory is cheaper read on its own, or (when the
    # snapshot's directories live in its index alone) from the few index chunks on its path.
    reader = Reader(await o.gateway(), use_index=ns.recursive, jobs=o.config.operation.jobs)
    browser = Browser(reader, ahead=max(4, o.config.operation.jobs), remember=64)
    top = await Paths(browser).lookup(cap, names.parsed(ns.path or ""), below=ns.recursive)
    items = [top] if top.kind != KIND_DIR else None

    def line(item: Item) -> str:
        if rep.json_mode:
            return json.dumps(item.json(), sort_keys=True)
        return long_line(item, ns.human_readable) if ns.long else shown(item)

    def show(item: Item) -> None:
        rep.output(line(item))

    if items is not None:
        show(top)
    elif ns.recursive and not ns.long and not rep.json_mode and reader.has_index:
        # Names alone: the index's names of each directory, no body parsed, no item made.
        async for lines in names_walk(browser, top):
            rep.output("\n".join(lines))
    else:
        async for batch in browser.walk_batches(top, recursive=ns.recursive):
            rep.output("\n".join(map(line, batch)))  # (one write for a thousand lines, not one each)
    return outcome(rep)


async def names_walk(browser: Browser, top: Item, size: int = 5000) -> AsyncIterator[list[str]]:
    """The lines of ``ls -R`` below the directory ``top`` (as :func:`shown` writes them, a name at
    a time: see :func:`names.shown`), from each directory's names, up to ``size`` at a time."""
    prefix = shown(top) if top.path else ""
    levels = [(prefix, iter(await browser.names(top.node.cap)))]
    out: list[str] = []
    while levels:
        prefix, lines = levels[-1]
        text = next(lines, None)
        if text is None:
            levels.pop()
            continue
        kind, name = text[0], text[1:]
        if kind == KIND_DIR:
            name, _, cap = name.partition("\t")
        if "\\" in name or not name.isprintable():  # escaped as in the queue, or to be escaped
            name = names.shown(unescape(name) if "\\" in name else name.encode("utf-8"))
        line = prefix + name
        if kind == KIND_DIR:
            out.append(line + "/")
            levels.append((line + "/", iter(await browser.names(cap))))
        else:
            out.append(line)
        if len(out) >= size:
            yield out
            out = []
    if out:
        yield out
