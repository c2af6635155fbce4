"""``backup``: open the grid and the source, run the engine's backup, copy it on, report."""

from __future__ import annotations

import argparse
import os
import sys

from ..backup.select import Selection
from ..backup.source import Source
from ..backup.subtrees import trees_path
from ..engine.backup import BackupRun, Job, SelectArgs, make_source, queue_path, selection
from ..engine.copy import copy_backups
from ..engine.stream import stream_request, stream_source
from ..errors import LafsBackupError, UsageError
from ..history import Backup
from ..log import redact
from ..report import outcome
from ..resources import Opener
from ..system.lock import copy_scope
from ..system.places import this_host
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup backup ~/Documents'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``backup``."""
    p.add_argument("source", nargs="*", metavar="SOURCE",
                   help="directory to back up (default: source.path); several are each backed up and recorded as "
                        "their own source, one after the other; with --stdin-from-command, the command and its "
                        "arguments, after '--'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--queue-only", nargs="?", const=True, default=False, metavar="PATH",
                   help="only build the queue (phase one), optionally at PATH")
    g.add_argument("--reuse-queue", nargs="?", const=True, default=False, metavar="PATH",
                   help="skip phase one and upload an existing complete queue for this source")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="requests in flight (operation.jobs)")
    p.add_argument("--mode", choices=["stat", "checksum", "verify", "force"], default="stat",
                   help="stat: trust unchanged size/mtime/ctime/inode (default); checksum: re-hash every "
                        "file; verify: re-hash and report content changed under unchanged stat data; "
                        "force: upload everything again")
    p.add_argument("--rebuild-cache", action="store_true",
                   help="move the entry cache aside (e.g. a damaged one) and start a new one; content "
                        "already on the grid is found again through convergence")
    p.add_argument("--host", metavar="NAME", help="record the backup as made on this host (default: the "
                                                 "host name)")
    p.add_argument("--tag", action="append", metavar="TAG", type=options.tag,
                   help="record this tag with the backup (repeatable)")
    p.add_argument("--skip-if-unchanged", action="store_true",
                   help="record no new backup when the snapshot is the same as the last backup of the source (on "
                        "this host): nothing changed; the summary says so and the exit code is 0")
    g.add_argument("--dry-run", action="store_true",
                   help="walk and plan only: say what would be uploaded (files and bytes, after dedup against "
                        "the cache); nothing is written to the grid or the cache")
    st = p.add_argument_group("a stream instead of a directory (stored as one file of a new snapshot)")
    one_stream = st.add_mutually_exclusive_group()
    one_stream.add_argument("--stdin", action="store_true",
                            help="back up what is piped into lafs-backup (pg_dump mydb | lafs-backup backup --stdin), "
                                 "recorded as the source stdin://NAME")
    one_stream.add_argument("--stdin-from-command", action="store_true",
                            help="run the command given after '--' (no shell) and back up its output; a non-zero "
                                 "exit fails the backup and nothing is recorded")
    st.add_argument("--stdin-filename", metavar="NAME",
                    help="the name of the stream's file, and of its source stdin://NAME (default: stdin)")
    options.selection(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    conf = o.config
    stream = stream_request(ns.stdin, ns.stdin_from_command, ns.stdin_filename, ns.source, _not_for_streams(ns),
                            _stdin_is_tty() if ns.stdin else False)
    if stream is not None:
        async with stream_source(o.rt, stream) as piped:
            return await one(o, ns, piped, Selection())
    given: list[str | None] = list(ns.source) or [None]
    if len(given) > 1 and (ns.queue_only is not False or ns.reuse_queue is not False) and (
            isinstance(ns.queue_only, str) or isinstance(ns.reuse_queue, str) or conf.source.queue_path):
        raise UsageError("--queue-only PATH and --reuse-queue PATH (or source.queue_path) name one queue: with "
                         "several sources, leave the PATH out (each source has its own queue), or back them up "
                         "one at a time")
    # Every source and its selection first: a mistake in any of them stops the command before a backup.
    runs = []
    for arg in given:
        source = make_source(conf, o.rt.reporter, arg)
        runs.append((source, selection(conf, SelectArgs.of(ns), source.label)))
    if len(runs) == 1:
        return await one(o, ns, *runs[0])
    worst = 0
    for i, (source, sel) in enumerate(runs):
        if i:
            o.rt.reporter.stats = type(o.rt.reporter.stats)()
        o.rt.reporter.info(f"lafs-backup: backing up {os.fsdecode(source.label)}")
        try:
            code = await one(o, ns, source, sel)
        except LafsBackupError as e:  # the other sources are still backed up
            o.rt.reporter.error(f"{os.fsdecode(source.label)}: {redact(e.message)}")
            code = int(e.exit_code)
        worst = max(worst, code)
    return worst


def _stdin_is_tty() -> bool:
    return os.isatty(0)  # (False when there is no standard input at all: reading it then says so)


def _not_for_streams(ns: argparse.Namespace) -> list[str]:
    """The options given that a stream's backup refuses: selection, and the queue's."""
    given = [f"--{k.replace('_', '-')}" for k, v in vars(SelectArgs.of(ns)).items() if v]
    queue = (("--queue-only", ns.queue_only), ("--reuse-queue", ns.reuse_queue))
    return given + [flag for flag, v in queue if v is not False]


async def one(o: Opener, ns: argparse.Namespace, source: Source, sel: Selection) -> int:
    """Back up one source."""
    rep, conf = o.rt.reporter, o.config
    if ns.dry_run:  # (argparse keeps it apart from --queue-only and --reuse-queue)
        from ..engine.dry_run import dry_run

        return await dry_run(o.rt, conf, source, sel, ns.mode, await o.cache_place())
    queue_only, reuse_queue = ns.queue_only, ns.reuse_queue
    qpath = queue_path(conf, source.label, queue_only if isinstance(queue_only, str) else (
        reuse_queue if isinstance(reuse_queue, str) else None))
    if o.rt.op is not None:
        o.rt.op.frame = sys._getframe()
    job = Job(ns.host or this_host(), tuple(ns.tag or ()), ns.mode, ns.rebuild_cache,
              skip_if_unchanged=bool(getattr(ns, "skip_if_unchanged", False)))
    if queue_only is not False:  # (no gateway asked: the cache of the grid its URL led to last, if known)
        known = o.known_cache_path()
        backup = BackupRun(o.rt, conf, None, o, source, job, sel, qpath,
                           trees_path(known, source.label) if known else None)
        queued = await backup.queue_only()
        rep.info(f"queue: {queued.entries} entries written to {qpath}")
        if rep.json_mode:
            rep.record({"type": "queue", "path": qpath, "entries": queued.entries, "warnings": rep.stats.warnings})
        return outcome(rep)
    gw = await o.gateway()
    backup = BackupRun(o.rt, conf, gw, o, source, job, sel, qpath, trees_path(await o.cache_path(), source.label))
    made = await backup.run(reuse_queue=reuse_queue is not False)
    rep.stats.requests = dict(gw.counts)
    if made.kept is not None:  # --skip-if-unchanged: the last backup is this snapshot already
        return await skipped(o, made.kept)
    recorded = made.backup
    assert recorded is not None  # (only a round of watch may come to the previous snapshot and record nothing)
    copies = []
    for url in conf.destination.copy_to:  # the backup is done and recorded: a grid that cannot take it is a warning
        try:
            dest, dst_gw, repo = await o.other_grid(url)
            summary = await copy_backups(o.rt, conf.operation.jobs, gw, dst_gw, dest, repo,
                                         lambda: o.locked_cache(scope=copy_scope(repo.key.writecap)), [recorded])
        except (LafsBackupError, OSError) as e:
            why = e.message if isinstance(e, LafsBackupError) else (e.strerror or str(e))
            rep.warn(url, f"the backup was not copied to this grid ({why}); 'lafs-backup copy --to-url {url}' "
                          "copies it later")
            continue
        copies.append(url)
        rep.info(f"copied to {url}: {summary['objects_copied']} objects, {summary['directories_made']} directories")
    sid = recorded.short_id
    cap = await _shown_cap(o, made.cap)
    if conf.destination.result.print_to_stdout and not rep.json_mode:
        rep.output(cap or sid)
    rep.finish("backup", {"id": sid, "cap": cap, "generation": recorded.generation, "copies": copies,
                          "skipped": False} if rep.json_mode else None)
    rep.info(f"snapshot {sid} saved (generation {recorded.generation})")
    return outcome(rep)


async def _shown_cap(o: Opener, cap: str) -> str | None:
    """The cap to print of a finished backup: none in a sealed repository (its id is printed), unless
    ``destination.result.cap_when_sealed``."""
    key = await o.repo_key()
    return cap if key is None or not key.sealed or o.config.destination.result.cap_when_sealed else None


async def skipped(o: Opener, last: Backup) -> int:
    """Report a backup --skip-if-unchanged did not record: the ``last`` one is the same snapshot."""
    rep = o.rt.reporter
    cap = None if last.sealed else await _shown_cap(o, last.cap)
    if o.config.destination.result.print_to_stdout and not rep.json_mode:
        rep.output(cap or last.short_id)
    rep.finish("backup", {"id": last.short_id, "cap": cap, "generation": last.generation, "copies": [],
                          "skipped": True} if rep.json_mode else None)
    rep.info(f"nothing changed since snapshot {last.short_id} (generation {last.generation}): no new backup "
             "recorded (--skip-if-unchanged)")
    return outcome(rep)
