"""``watch``: back up a local directory, then snapshot each settled burst of changes (``engine.watch``)."""

from __future__ import annotations

import argparse

from ..backup.source import is_url
from ..engine.backup import Job, SelectArgs, local_source, queue_path
from ..engine.watch import Timing, Watcher
from ..errors import UsageError
from ..resources import Opener
from ..system.places import this_host
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup watch ~/Documents --settle 30'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``watch``."""
    p.add_argument("source", nargs="?", help="directory to watch and back up (default: source.path)")
    p.add_argument("--settle", type=float, metavar="SECONDS",
                   help="quiet time before a round backs up what changed (watch.settle; default 10)")
    p.add_argument("--rescan-interval", type=float, metavar="SECONDS",
                   help="seconds between full rescans of the tree (watch.rescan_interval; default 21600)")
    p.add_argument("--min-interval", type=float, metavar="SECONDS",
                   help="seconds at least between two rounds (watch.min_interval; default 30)")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="requests in flight (operation.jobs)")
    p.add_argument("--host", metavar="NAME", help="record the backups as made on this host (default: the host name)")
    p.add_argument("--tag", action="append", metavar="TAG", type=options.tag,
                   help="record this tag with every backup (repeatable)")
    options.selection(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    conf = o.config
    timing = Timing.of(conf, ns.settle, ns.rescan_interval, ns.min_interval)
    src = ns.source or conf.source.path
    if src and is_url(src):
        raise UsageError(f"{src.partition('://')[0]}:// sources can be backed up, not watched: inotify sees "
                         "only local file systems (run 'lafs-backup backup' on a timer instead)")
    source = local_source(conf, o.rt.reporter, ns.source)
    qpath = queue_path(conf, source.label, None) + ".watch"
    job = Job(ns.host or this_host(), tuple(ns.tag or ()))
    return await Watcher(o.rt, conf, o, source, qpath, timing, job, SelectArgs.of(ns)).run()
