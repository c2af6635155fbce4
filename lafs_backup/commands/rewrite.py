"""``rewrite``: new snapshots of backups without the paths some globs match (a leaked secret, a huge
file), each recorded with its original's time, host, source and tags; ``--forget`` forgets the originals."""

from __future__ import annotations

import argparse

from ..engine.rewrite import rewrite_backups
from ..errors import UsageError
from ..read.pick import Pick
from ..report import outcome, plural, size_text
from ..resources import Opener
from ..system.places import this_host
from . import options, which


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup rewrite latest --source ~/Documents --exclude secrets.txt --dry-run'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rewrite``."""
    options.snapshot(p, "the backups to rewrite", dest="snapshots", nargs="+")
    what = p.add_argument_group("what to remove (globs as backup's --exclude takes them, anchored at the "
                                "snapshot's root)")
    what.add_argument("--exclude", action="append", metavar="GLOB",
                      help="remove what GLOB matches (a directory with all it holds): with a '/' it is anchored at "
                           "the snapshot's root ('/notes/key.pem', 'docs/*.iso'), without it matches a name at any "
                           "depth ('secret.txt', '*.iso') (repeatable)")
    what.add_argument("--iexclude", action="append", metavar="GLOB", help="the same, ignoring case (repeatable)")
    what.add_argument("--exclude-file", action="append", metavar="FILE",
                      help="remove what the globs in FILE match, one a line ('#' comments) (repeatable)")
    p.add_argument("--forget", action="store_true",
                   help="forget each original backup once its rewrite is recorded (default: both are kept)")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="change nothing: list what would be removed, with sizes, and the total")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    layers = options.globs(ns, "exclude")
    if not layers:
        raise UsageError("say what to remove: --exclude GLOB, --iexclude GLOB or --exclude-file FILE")
    if ns.dry_run and ns.forget:
        raise UsageError("--forget forgets the originals of the backups a rewrite records: not with --dry-run")
    async with o.locked_cache() as cache:
        chosen = which.choose(o, await o.backups(), ns.snapshots, ns.source, ns.host, ns.tag)
        gw = await o.gateway()
        repo = None if ns.dry_run else await o.repository()
        totals = await rewrite_backups(rep, gw, repo, cache.history, chosen, Pick(exclude=layers), this_host(),
                                       ns.dry_run, ns.forget, o.config.operation.jobs)
    if rep.json_mode:
        rep.record({"type": "summary", "operation": "rewrite", "dry_run": ns.dry_run, **totals})
    elif ns.dry_run:
        rep.info(f"(dry run) {plural(totals['removed_files'], 'file')} ({size_text(totals['removed_bytes'])}) would "
                 f"be removed in all; {totals['unchanged']} backup(s) hold nothing that matches; nothing was written")
    else:
        forgot = f"; {plural(totals['forgotten'], 'original')} forgotten" if ns.forget else \
            "; the originals are kept (forget them with --forget, or 'lafs-backup cleanup')"
        rep.info(f"rewrote {plural(totals['rewritten'], 'backup')} ({plural(totals['removed_files'], 'file')}, "
                 f"{size_text(totals['removed_bytes'])} removed), {totals['unchanged']} left alone{forgot}.  Nothing "
                 "is deleted from the grid: immutable shares cannot be deleted, and the storage servers drop what "
                 "only the forgotten backups used once its leases lapse (within "
                 f"{o.config.destination.lease_days or 31:g} days)")
    return outcome(rep)
