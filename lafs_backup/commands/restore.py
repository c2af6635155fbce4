"""``restore``: a snapshot, or some of its subtrees, into a target directory (or an fsspec URL)."""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import UsageError
from .. import names
from ..read.reader import Reader
from ..read.restore import OVERWRITE_POLICIES, RestoreCounts, Restorer
from ..report import outcome
from ..resources import Opener
from .which import resolve_backup
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup restore latest --source ~/Documents --target /tmp/restored notes/2026'

#: The :class:`~lafs_backup.report.Stats` counters a restore's summary holds (with its own counts).
COUNTERS = ("files", "dirs", "symlinks", "specials", "bytes_written", "requests")


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``restore``."""
    options.snapshot(p, "the backup to restore")
    p.add_argument("paths", nargs="*", metavar="PATH", help="restore only these subtrees")
    p.add_argument("-t", "--target", required=True, metavar="DIR", help="directory to restore into")
    p.add_argument("--no-owner", action="store_true", help="don't restore ownership (as tar --no-same-owner)")
    p.add_argument("--numeric-owner", action="store_true",
                   help="restore the recorded uid/gid, not the user and group names (as tar)")
    p.add_argument("--overwrite", choices=OVERWRITE_POLICIES, default="always",
                   help="what to do with a file already in DIR: 'always' replace it (default); 'if-changed' "
                        "only if its size or SHA-256 differs from the snapshot's (else only its attributes "
                        "are restored); 'if-newer' only if the snapshot's mtime is newer; 'never' leave it")
    p.add_argument("--delete", action="store_true",
                   help="remove what DIR (below the PATHs restored, if given) holds that the snapshot does not")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="change nothing: list each file that would be written, overwritten, skipped or deleted")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    cap, backup = await resolve_backup(o, ns.snapshot, ns.source, ns.host, ns.tag)
    short_id = backup.short_id if backup is not None else None
    gw = await o.gateway()
    # A full restore wants most of every pack: each is fetched whole, once.  A few paths want a
    # few members: one Range GET each.
    reader = Reader(gw, whole_packs=not ns.paths)
    counts = RestoreCounts()
    try:
        from ..backup.source import is_url
        from ..read.fsspec_target import RemoteRestorer

        if is_url(ns.target):
            if ns.overwrite != "always" or ns.delete or ns.dry_run:
                raise UsageError("--overwrite, --delete and --dry-run need a local target directory")
            await RemoteRestorer(reader, o.rt.reporter, ns.target, o.config.source.storage_options,
                                 in_thread=o.rt.in_thread).run(
                cap, [names.parsed(p) for p in ns.paths])
            counts.written = o.rt.reporter.stats.files
        else:
            r = Restorer(reader, o.rt.reporter, ns.target, window=max(256, 4 * o.config.operation.jobs),
                         owners=False if ns.no_owner else None, numeric=ns.numeric_owner, clock=o.rt.reactor,
                         overwrite=ns.overwrite, delete=ns.delete, dry_run=ns.dry_run, in_thread=o.rt.in_thread)
            await r.run(cap, [names.parsed(p) for p in ns.paths])
            counts = r.counts
    finally:
        reader.close()
    o.rt.reporter.stats.requests = dict(gw.counts)
    o.rt.reporter.finish("restore", {"id": short_id, "dry_run": ns.dry_run, "overwrite": ns.overwrite,
                                     "delete": ns.delete, **dataclasses.asdict(counts)}, counters=COUNTERS)
    return outcome(o.rt.reporter)
