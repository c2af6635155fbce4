"""``restore``: a snapshot, or some of its subtrees, into a target directory (or an fsspec URL)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..errors import ExitCode, RemakeError, UsageError
from .. import names
from ..read import remake
from ..read.browse import Browser
from ..read.locate import Paths
from ..read.pick import Pick
from ..read.reader import Reader
from ..read.restore import OVERWRITE_POLICIES, RestoreCounts, Restorer
from ..report import outcome
from ..resources import Opener
from .which import resolve_backup
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup restore latest --source ~/Documents --target /tmp/restored notes/2026'

#: Range reads of one pack after which a restore of some paths fetches the pack whole: a restore
#: of many small files waits on requests more than on bytes (a pack is 4 MiB by default, and a
#: ranged read of a member fetches at least one whole 128 KiB segment of it).
RANGES_BEFORE_WHOLE = 4

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
    p.add_argument("--skip-derived", action="store_true",
                   help="leave out derived files (stored as the recipe that makes them: see derive in the "
                        "configuration) rather than make them again; they are counted in the summary")
    pick = p.add_argument_group("what to restore (globs as backup's --exclude takes them, anchored at the "
                                "snapshot's root; what they leave out is neither restored nor deleted)")
    pick.add_argument("--include", action="append", metavar="GLOB",
                      help="restore only what GLOB matches (a directory with all it holds), and the directories "
                           "on the way to it: with a '/' it is anchored at the snapshot's root ('/etc/', "
                           "'docs/*.pdf'), without it matches a name at any depth ('*.conf') (repeatable)")
    pick.add_argument("--iinclude", action="append", metavar="GLOB", help="the same, ignoring case (repeatable)")
    pick.add_argument("--include-file", action="append", metavar="FILE",
                      help="restore only what the globs in FILE match, one a line ('#' comments) (repeatable)")
    pick.add_argument("--exclude", action="append", metavar="GLOB",
                      help="leave out what GLOB matches (a directory with all it holds), as backup --exclude "
                           "does (repeatable)")
    pick.add_argument("--iexclude", action="append", metavar="GLOB", help="the same, ignoring case (repeatable)")
    pick.add_argument("--exclude-file", action="append", metavar="FILE",
                      help="leave out what the globs in FILE match, one a line ('#' comments) (repeatable)")
    options.which(p)


def pick_of(ns: argparse.Namespace) -> Pick:
    """The paths --include and --exclude (and their kin) take: each option's globs a layer of their own."""
    return Pick(options.globs(ns, "include"), options.globs(ns, "exclude"))


async def run(o: Opener, ns: argparse.Namespace) -> int:
    pick = pick_of(ns)
    cap, backup = await resolve_backup(o, ns.snapshot, ns.source, ns.host, ns.tag)
    short_id = backup.short_id if backup is not None else None
    gw = await o.gateway()
    # A full restore wants most of every pack: each is fetched whole, once.  Some paths (or what
    # --include and --exclude take) want a few members of a pack, one Range GET each, or many:
    # a pack read by range RANGES_BEFORE_WHOLE times is then fetched whole.
    reader = Reader(gw, whole_packs=not ns.paths and not pick.narrows, ranges_before_whole=RANGES_BEFORE_WHOLE)
    # Derived files are made again from their inputs, read from the same snapshot (never from DIR).
    remake.make(reader, o.config.derive, o.rt.in_thread, remake.lookup_in(Paths(Browser(reader)), cap))
    counts = RestoreCounts()
    unmade: list[tuple[bytes, str]] = []
    try:
        from ..backup.source import is_url
        from ..read.fsspec_target import RemoteRestorer

        if is_url(ns.target):
            if ns.overwrite != "always" or ns.delete or ns.dry_run or pick.narrows or ns.skip_derived:
                raise UsageError("--overwrite, --delete, --dry-run, --include, --exclude and --skip-derived need a "
                                 "local target directory")
            await RemoteRestorer(reader, o.rt.reporter, ns.target, o.config.source.storage_options,
                                 in_thread=o.rt.in_thread).run(
                cap, [names.parsed(p) for p in ns.paths])
            counts.written = o.rt.reporter.stats.files
        else:
            r = Restorer(reader, o.rt.reporter, ns.target, window=max(256, 4 * o.config.operation.jobs),
                         owners=False if ns.no_owner else None, numeric=ns.numeric_owner, clock=o.rt.reactor,
                         overwrite=ns.overwrite, delete=ns.delete, dry_run=ns.dry_run, in_thread=o.rt.in_thread,
                         pick=pick, skip_derived=ns.skip_derived)
            await r.run(cap, [names.parsed(p) for p in ns.paths])
            counts, unmade = r.counts, r.unmade
    finally:
        reader.close()
    o.rt.reporter.stats.requests = dict(gw.counts)
    o.rt.reporter.finish("restore", {"id": short_id, "dry_run": ns.dry_run, "overwrite": ns.overwrite,
                                     "delete": ns.delete, **dataclasses.asdict(counts)}, counters=COUNTERS)
    if unmade:
        err = RemakeError(count=len(unmade), files=_listed([os.fsdecode(p) for p, _ in unmade]))
        err.exit_code = ExitCode(outcome(o.rt.reporter))
        raise err
    return outcome(o.rt.reporter)


def _listed(paths: list[str], most: int = 10) -> str:
    """Paths for one line: the first ``most``, then how many more."""
    shown = ", ".join(paths[:most])
    return shown if len(paths) <= most else f"{shown} and {len(paths) - most} more"
