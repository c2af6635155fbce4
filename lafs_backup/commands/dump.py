"""``dump``: one file's exact bytes on stdout, or a directory as a tar stream."""

from __future__ import annotations

import argparse
import sys

from .. import names
from ..errors import UsageError
from ..read import remake
from ..read.browse import TYPE_NAMES, Browser
from ..read.dump import write_file, write_tar
from ..read.locate import Paths
from ..read.reader import Reader
from ..report import outcome
from ..resources import Opener
from ..store.entry import KIND_DIR, KIND_FILE
from .which import resolve
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup dump latest notes/todo.txt > todo.txt'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dump``."""
    options.snapshot(p, "the backup to read from")
    p.add_argument("path", help="the file or directory in the snapshot, written as ls prints it ('.' for all of it)")
    p.add_argument("--force", action="store_true", help="write to stdout even when it is a terminal")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    cap = await resolve(o, ns.snapshot, ns.source, ns.host, ns.tag)
    out = sys.stdout.buffer
    if out.isatty() and not ns.force:
        raise UsageError("dump writes raw bytes (or a tar stream): redirect stdout to a file or a pipe, or "
                         "give --force")
    gw = await o.gateway()
    # A whole snapshot's tar reads the index; a path needs only the directories on its way (where
    # they live in the index alone: the index chunks on its way, and those of its subtree for a tar).
    reader = Reader(gw, use_index=ns.path in ("", ".", "/"), jobs=o.config.operation.jobs)
    try:
        browser = Browser(reader, ahead=max(4, o.config.operation.jobs), remember=64)
        paths = Paths(browser)
        # A derived file is made again from its inputs, found through the same paths.
        remake.make(reader, o.config.derive, o.rt.in_thread, remake.lookup_in(paths, cap))
        item = await paths.lookup(cap, names.parsed(ns.path), below=True)
        if item.kind == KIND_FILE:
            content = await write_file(reader, item, out)
            if content.problem is not None:  # (a derived file this machine cannot make as recorded)
                rep.warn(item.path, content.problem + "; nothing was written")
            elif content.matches is False:
                rep.problem(item.path, content.mismatch + " (the bytes written are what the grid holds)")
        elif item.kind == KIND_DIR or ns.path in ("", ".", "/"):
            await write_tar(browser, reader, item, out, rep.problem, rep.note_once)
        else:
            raise UsageError(f"{ns.path} is a {TYPE_NAMES.get(item.kind, item.kind)}: dump writes a file's "
                             "bytes, or a directory as a tar stream")
    finally:
        reader.close()
    return outcome(rep)
