"""``restore``: a snapshot, or some of its subtrees, into a target directory (or an fsspec URL)."""

from __future__ import annotations

import argparse
import os

from ..read.reader import Reader
from ..read.restore import Restorer
from ..report import outcome
from ..resources import Opener
from .which import resolve
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup restore latest --source ~/Documents --target /tmp/restored notes/2026'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``restore``."""
    p.add_argument("snapshot", help="a snapshot cap, a generation number, or 'latest'")
    p.add_argument("paths", nargs="*", metavar="PATH", help="restore only these subtrees")
    p.add_argument("-t", "--target", required=True, metavar="DIR", help="directory to restore into")
    p.add_argument("--no-owner", action="store_true", help="don't restore ownership (as tar --no-same-owner)")
    p.add_argument("--numeric-owner", action="store_true",
                   help="restore the recorded uid/gid, not the user and group names (as tar)")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    cap = await resolve(o, ns.snapshot, ns.source, ns.host, ns.tag)
    gw = await o.gateway()
    # A full restore wants most of every pack: each is fetched whole, once.  A few paths want a
    # few members: one Range GET each.
    reader = Reader(gw, whole_packs=not ns.paths)
    try:
        from ..backup.source import is_url
        from ..read.fsspec_target import RemoteRestorer

        if is_url(ns.target):
            await RemoteRestorer(reader, o.rt.reporter, ns.target, o.config.source.storage_options,
                                 in_thread=o.rt.in_thread).run(
                cap, [os.fsencode(p) for p in ns.paths])
            o.rt.reporter.stats.requests = dict(gw.counts)
            o.rt.reporter.finish("restore")
            return outcome(o.rt.reporter)
        r = Restorer(reader, o.rt.reporter, ns.target, window=max(256, 4 * o.config.operation.jobs),
                     owners=False if ns.no_owner else None, numeric=ns.numeric_owner, clock=o.rt.reactor)
        await r.run(cap, [os.fsencode(p) for p in ns.paths])
    finally:
        reader.close()
    o.rt.reporter.stats.requests = dict(gw.counts)
    o.rt.reporter.finish("restore")
    return outcome(o.rt.reporter)
