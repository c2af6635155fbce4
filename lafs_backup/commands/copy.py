"""``copy``: keep backups on a second grid, each recorded in that grid's repository as a copy of its original."""

from __future__ import annotations

import argparse

from ..engine.copy import copy_backups
from ..report import outcome, size_text
from ..resources import Opener
from ..system.lock import copy_scope
from .which import choose
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup copy --to-url http://127.0.0.1:3457/'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``copy``."""
    options.snapshot(p, "only these backups (default: all)", dest="snapshots", nargs="*")
    p.add_argument("--to-url", required=True, metavar="URL", help="the second grid's gateway")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="objects copied at once (operation.jobs)")
    p.add_argument("--to-repo", metavar="KEY|FILE|-", help="the second grid's repository (its recovery key, a file "
                    "holding it, or - for stdin; default: this machine's for that grid, made on first use)")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    chosen = choose(o, await o.backups(), ns.snapshots, ns.source, ns.host, ns.tag)
    gw = await o.gateway()
    dest, dst_gw, repo = await o.other_grid(ns.to_url, ns.to_repo)
    summary = await copy_backups(o.rt, o.config.operation.jobs, gw, dst_gw, dest, repo,
                                 lambda: o.locked_cache(scope=copy_scope(repo.key.writecap)), chosen)
    if rep.json_mode:
        rep.record({"type": "summary", "operation": "copy", **summary})
    else:
        same = {True: "the grids encode alike: every cap is the same", False: "directories rebuilt with the "
                "destination's caps", None: "nothing new to store"}[summary["same_caps"]]
        rep.info(f"copy finished in {summary['seconds']:.1f}s: {summary['snapshots_copied']} backup(s) copied to "
                 f"{summary['to']}, {summary['snapshots_held_already']} held there already\n"
                 f"  objects stored: {summary['objects_copied']} ({size_text(summary['bytes_copied'])}), directories "
                 f"made: {summary['directories_made']}, already there: {summary['reused']}; {same}")
    return outcome(rep)
