"""``backup``: phase one (walk the source into the queue, in a thread), then phase two (upload), then record."""

from __future__ import annotations

import argparse
import glob
import hashlib
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator

from ..backup import settled
from ..backup.queue import QueueReader, write_queue
from ..backup.record import append_result, link_into
from ..backup.select import Selection, listed_paths, parse_if_present, parse_size, read_list
from ..backup.source import LocalSource, Source, is_url
from ..backup.upload import Settings, Uploader
from ..cache import move_aside
from ..errors import ExitCode, GatewayError, GridError, LafsBackupError, LocalError, QueueError, UsageError
from ..report import Progress
from ..store.entry import Entry
from ..store.snapshot import Child
from ..store.store import Store, StoreSettings
from .context import Context, iso, outcome, state_dir, this_host

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A thread's work was stopped because the command is being interrupted."""


def make_source(ctx: Context, arg: str | None) -> Source:
    """The source to back up: SOURCE or ``source.path``, a local directory (a glob picks one) or an
    fsspec URL (``s3://bucket/prefix``, with ``source.storage_options``)."""
    src = arg or ctx.config.source.path
    if src and is_url(src):
        from ..backup.remote import FsspecSource

        return FsspecSource(src, ctx.config.source.storage_options)
    return local_source(ctx, arg)


def local_source(ctx: Context, arg: str | None) -> LocalSource:
    src = arg or ctx.config.source.path
    if not src:
        raise UsageError("No source to back up: give SOURCE or set source.path")
    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(path) and glob.has_magic(path):
        path = pick(ctx, path)
    if not os.path.isdir(path):
        raise UsageError(f"Source {path} is not a directory")
    return LocalSource(os.fsencode(path))


def pick(ctx: Context, pattern: str) -> str:
    """The directory a glob source names, by ``source.pick_policy``; the backup is recorded under it."""
    policy = ctx.config.source.pick_policy
    found = [m for m in glob.glob(pattern) if os.path.isdir(m) and not os.path.islink(m)]
    if not found:
        raise UsageError(f"Source {pattern} matches no directory")

    def mtime(p: str) -> tuple[int, bytes]:
        return os.stat(p).st_mtime_ns, os.fsencode(p)

    if policy.startswith("mtime"):
        ordered = sorted(found, key=mtime)
    else:
        ordered = sorted(found, key=os.fsencode)
    chosen = ordered[-1] if policy in ("alphasort_last", "mtime_newest") else ordered[0]
    ctx.reporter.info(f"lafs-backup: backing up {chosen} ({policy} of {len(found)} directories matching "
                      f"{pattern})")
    return os.path.abspath(chosen)


def selection(ctx: Context, ns: argparse.Namespace, root: bytes) -> Selection:
    """The filter rules and selection options of this run: the configuration's, plus the options'."""
    c = ctx.config.source.select
    present = [*c.exclude_if_present, *(ns.exclude_if_present or ())]
    names = [n for n in (".gitignore" if (c.git_ignore or ns.git_ignore) else None, c.ignore_file) if n]
    lists: list[tuple[bytes, bool]] = []
    given = False
    for style, files in (("plain", [*c.files_from, *(ns.files_from or ())]),
                         ("verbatim", [*c.files_from_verbatim, *(ns.files_from_verbatim or ())]),
                         ("raw", [*c.files_from_raw, *(ns.files_from_raw or ())])):
        for f in files:
            given = True
            lists.extend((p, style == "plain") for p in read_list(f, style))
    if given and not lists:
        raise UsageError("--files-from: the lists name no path (nothing would be backed up)")
    return Selection(
        filter=ctx.config.filter,
        one_file_system=bool(c.one_file_system or ns.one_file_system),
        exclude_caches=bool(c.exclude_caches or ns.exclude_caches),
        if_present=tuple(parse_if_present(x) for x in present),
        larger_than=parse_size(ns.exclude_larger_than) if ns.exclude_larger_than is not None
        else c.exclude_larger_than,
        ignore_names=tuple(os.fsencode(n) for n in names),
        listed=listed_paths(root, lists) if lists else None)


def queue_path(ctx: Context, source: bytes, override: str | None) -> str:
    if override:
        return override
    if ctx.config.source.queue_path:
        return ctx.config.source.queue_path
    base = os.path.basename(source).decode("utf-8", "replace") or "root"
    digest = hashlib.sha256(source).hexdigest()[:12]
    return os.path.join(state_dir(), "queues", f"{base}.{digest}.queue")


async def phase_one(ctx: Context, source: Source, qpath: str, totals: list[int], sel: Selection,
                    hooks: Any = None, settle: Any = None) -> int:
    """Walk the source into the queue, in a thread; the reactor stays free meanwhile.

    Interrupting the command stops the walk at its next entry; the previous
    queue, if any, is then left as it was.  ``settle``: see ``queue.write_queue``.
    """
    rep = ctx.reporter
    stop = threading.Event()
    warn, note = ctx.threadsafe(rep.warn), ctx.threadsafe(rep.note_once)

    def until_stopped(entries: Iterable[Entry]) -> Iterator[Entry]:
        for e in entries:
            if stop.is_set():
                raise Interrupted()
            totals[0] += 1
            if e.kind == "f":
                totals[1] += e.size
            yield e

    def work() -> int:
        return write_queue(qpath, source.label, until_stopped(source.walk(sel, warn, note, hooks)), settle)

    try:
        return int(await ctx.in_thread(work))
    except OSError as e:  # a full disk: the previous queue is still in place
        raise LocalError(path=qpath, problem=f"{e.strerror}; the previous queue file, if any, "
                         "is kept as it was") from None
    finally:
        stop.set()
        rep.excluded(sel.excluded.counts)


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    conf = ctx.config
    source = make_source(ctx, ns.source)
    if ns.dry_run:  # (argparse keeps it apart from --queue-only and --reuse-queue)
        from .dry_run import dry_run

        return await dry_run(ctx, ns, source, selection(ctx, ns, source.label))
    host = ns.host or this_host()
    queue_only, reuse_queue = ns.queue_only, ns.reuse_queue
    qpath = queue_path(ctx, source.label, queue_only if isinstance(queue_only, str) else (
        reuse_queue if isinstance(reuse_queue, str) else None))
    totals = [0, 0]  # entries, bytes of regular files
    if ctx.op is not None:
        ctx.op.totals, ctx.op.frame = totals, sys._getframe()
    # A backup that walks and uploads in one go keeps whole the subtrees unchanged since the last one.
    trees_at: str | None = settled.trees_path(await ctx.cache_path(), source.label)
    if ns.mode != "stat" or ns.rebuild_cache:
        # A new cache knows none of the rows the record builds on; another mode may store what
        # the record's directories do not hold (content changed under unchanged stat data).
        settled.forget(trees_at or "")
        trees_at = None
    kept: list[bytes] = []
    if reuse_queue is not False:
        queued: list[tuple[bytes, str]] = []
        await ctx.in_thread(_count_queue, qpath, source.label, totals, queued)
        trees = _queued_trees(ctx, trees_at, queued, qpath)
        kept = [p for p, _ in queued]
    else:
        trees = _settled_trees(ctx, trees_at) if queue_only is False and trees_at is not None else None
        n = await _walk(ctx, ns, source, qpath, totals, trees, kept, keep=trees_at is not None)
        if queue_only is not False:
            rep.info(f"queue: {n} entries written to {qpath}")
            if rep.json_mode:
                rep.record({"type": "queue", "path": qpath, "entries": n, "warnings": rep.stats.warnings})
            return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK

    gw = await ctx.gateway()
    await gw.preflight()
    while True:
        try:
            keeping = await _keeping(ctx, trees, kept)
            try:
                made = await phase_two(ctx, source, qpath, totals, host, tuple(ns.tag or ()), ns.mode,
                                       ns.rebuild_cache, incremental=keeping, trees_at=trees_at)
            finally:
                if keeping is not None and keeping.records is not None:
                    keeping.records.close()
            break
        except _Forgotten:  # (a cleanup forgot the previous backup meanwhile: walk again, keeping nothing)
            log.info("the previous backup was forgotten during the walk; walking again")
            settled.forget(trees_at or "")
            rep.stats = type(rep.stats)()
            totals[:] = [0, 0]
            trees, kept = None, []
            await _walk(ctx, ns, source, qpath, totals, None, kept, keep=True)
    rep.stats.requests = dict(gw.counts)
    copies = await _copy(ctx, made)
    if conf.destination.result.print_to_stdout and not rep.json_mode:
        rep.output(made.cap)
    rep.finish("backup", {"cap": made.cap, "generation": made.backup.generation, "copies": copies}
               if rep.json_mode else None)
    return outcome(rep)


async def _copy(ctx: Context, made: "Made") -> list[str]:
    """``destination.copy_to``: the new backup copied to each other grid (a grid that cannot take it is a
    warning: the backup itself is done, and the next backup or ``copy`` catches up)."""
    from .copy import copy_backups

    done = []
    for url in ctx.config.destination.copy_to:
        try:
            summary = await copy_backups(ctx, url, [made.backup])
        except (LafsBackupError, OSError) as e:  # the backup itself is done and recorded: say so, go on
            why = e.message if isinstance(e, LafsBackupError) else (e.strerror or str(e))
            ctx.reporter.warn(url, f"the backup was not copied to this grid ({why}); 'lafs-backup copy "
                                   f"--to-url {url}' copies it later")
            continue
        done.append(url)
        ctx.reporter.info(f"copied to {url}: {summary['objects_copied']} objects, {summary['directories_made']} "
                          "directories")
    return done


@dataclass
class Incremental:
    """What a round of ``watch`` adds to a backup: the generation whose snapshot it builds on,
    that snapshot's packs and encoded objects (the unchanged subtrees still use them, and the
    new snapshot's ``objects`` directory must keep linking them), and the uploader's hooks."""

    base: int | None
    packs: frozenset[str] = frozenset()
    objects: frozenset[str] = frozenset()
    on_dir: Callable[[bytes, str], None] | None = None
    hold: Callable[[Entry, Any], Awaitable[Child | None]] | None = None
    #: The snapshot it builds on: a round that comes to the very same snapshot records nothing.
    previous: str | None = None
    #: The chunks of that snapshot's index (the kept directories' records are there).
    index: tuple[str, ...] = ()
    #: That snapshot's tree (the source root's edge).
    previous_tree: Child | None = None
    #: A backup's walk that kept subtrees of the last one whole: its trees file, and the index
    #: records of the kept subtrees (see ``settled``).
    settled: Any = None
    records: Any = None


@dataclass(frozen=True)
class Made:
    """A finished, recorded backup."""

    cap: str
    backup: Any  # None: the snapshot is the previous one, and nothing was recorded
    generation: int
    packs: frozenset[str]
    objects: frozenset[str]
    #: The chunks of its index (empty: it has none).
    index: tuple[str, ...] = ()
    tree: Child | None = None


async def phase_two(ctx: Context, source: Source, qpath: str, totals: list[int], host: str, tags: tuple[str, ...],
                    mode: str, rebuild_cache: bool = False, incremental: Incremental | None = None,
                    trees_at: str | None = None) -> Made:
    """Upload a queue and record the backup: under the cache's lock, into the repository.
    ``trees_at``: where to write the trees file of this backup, for the next one's walk."""
    rep = ctx.reporter
    conf = ctx.config
    gw = await ctx.gateway()
    lock = await ctx.lock()
    try:
        if rebuild_cache:
            cpath = await ctx.cache_path()
            if os.path.exists(cpath):
                moved = move_aside(cpath)
                rep.note_once("cache", f"moved the entry cache aside to {moved} (it still lists the backups "
                                       "recorded before); starting a new one")
        cache = await ctx.cache()
        shutdown = ctx.reactor.addSystemEventTrigger("before", "shutdown", cache.close)
        try:
            repo = await ctx.repository(create=True)
            if incremental is not None and incremental.settled is not None and not settled.still_kept(
                    incremental.settled, cache.backups()):
                raise _Forgotten()
            gen = cache.begin_generation(source.label, incremental.base if incremental is not None else None)
            if rebuild_cache or not cache.has_objects():
                await _rebuild(ctx, cache, gw, gen, source.label, host)
            dest = conf.destination
            store = Store(gw, cache, gen, StoreSettings(dest.pack_max_file_size, dest.pack_target_size,
                                                        max(1, conf.operation.window // 2), dest.encoding,
                                                        mode=mode),
                          rep.stats, ctx.reactor, ctx.in_thread)
            if incremental is not None:
                store.packs_used |= incremental.packs
                store.encoded_used |= incremental.objects
            uploader = Uploader(source, store, cache, gen, rep,
                                Settings(conf.operation.window, max(4, 2 * conf.operation.jobs), mode),
                                ctx.reactor, on_dir=incremental.on_dir if incremental is not None else None,
                                hold=incremental.hold if incremental is not None else None,
                                index_base=incremental.index if incremental is not None else None,
                                settled=incremental.settled if incremental is not None else None,
                                records=incremental.records if incremental is not None else None)
            if ctx.op is not None:
                ctx.op.uploader = uploader
            progress = Progress(rep, ctx.reactor, totals[0], totals[1])
            progress.start()
            try:
                with QueueReader(qpath, expect_source=source.label) as reader:
                    snap = await uploader.run(reader)
            except GatewayError as e:
                if e.unhappy:
                    raise await _unhappy(ctx, gw, e) from None
                raise
            finally:
                progress.stop()
            if incremental is not None and incremental.previous_tree is not None and _same_tree(
                    uploader.tree, incremental.previous_tree):
                # Nothing that is backed up changed (events about excluded names, say): the previous
                # snapshot stands (this one differs from it in its index's chunks alone).
                b, snap = None, incremental.previous or snap
            else:
                b = await _record(ctx, cache, gw, gen, snap, source.label, host, tags)
                if trees_at is not None:
                    _save_trees(ctx, trees_at, snap, gen, store, uploader, incremental)
                await _publish(ctx, repo, cache)
            if incremental is None or incremental.settled is not None:  # (not each round of watch)
                ctx.warn_expiring(await ctx.backups())
        finally:
            try:
                ctx.reactor.removeSystemEventTrigger(shutdown)
            except ValueError:
                pass  # the reactor is already shutting down (a signal): the trigger ran
            cache.close()
    finally:
        lock.release()
    return Made(snap, b, gen, frozenset(store.packs_used), frozenset(store.encoded_used), uploader.index_caps,
                uploader.tree)


class _Forgotten(Exception):
    """The backup whose subtrees the walk kept is no longer kept itself."""


def _load_trees(ctx: Context, at: str) -> settled.Trees | None:
    """The trees file at ``at``, if it was made with this configuration's settings."""
    return settled.load(at, settled.fingerprint(ctx.config.destination.pack_max_file_size == 0))


def _settled_trees(ctx: Context, at: str) -> settled.Trees | None:
    """The trees file of the last backup, if the next walk may keep subtrees of it (see ``settled``).
    Whether that backup is still kept is asked under the cache's lock (``phase_two``): if it is not,
    the walk is made again, keeping nothing."""
    trees = _load_trees(ctx, at)
    if trees is None or not trees.index or trees.chain >= settled.CHAIN_MAX:
        return None
    return trees


async def _walk(ctx: Context, ns: argparse.Namespace, source: Source, qpath: str, totals: list[int],
                trees: settled.Trees | None, kept: list[bytes], keep: bool = True) -> int:
    """Phase one; with ``keep``, the queue's directories carry the digests of their subtrees (for
    this backup's trees file), and those ``trees`` knows are kept whole."""
    def settle(path: bytes, digest: bytes) -> str | None:
        cap = trees.cap(path, digest) if trees is not None else None
        if cap is not None:
            kept.append(path)
        return cap

    t0 = time.monotonic()
    n = await phase_one(ctx, source, qpath, totals, selection(ctx, ns, source.label),
                        settle=settle if keep else None)
    log.info("phase one: %d entries in %.2fs%s", n, time.monotonic() - t0,
             f"; {len(kept)} directories as in the last backup" if trees is not None else "")
    return n


async def _keeping(ctx: Context, trees: settled.Trees | None, kept: list[bytes]) -> Incremental | None:
    """What phase two needs of the last backup when the walk kept subtrees of it: its packs and
    objects, its generation as the base, and (unless the whole tree was kept) its index records."""
    if trees is None or not kept:
        return None
    records = None
    if b"" not in kept:
        from ..read.reader import Reader

        reader = Reader(await ctx.gateway(), jobs=ctx.config.operation.jobs)
        await reader.load_index(list(trees.index))
        records = settled.Records(trees, reader.index)
    return Incremental(trees.generation, trees.packs, trees.objects, settled=trees, records=records)


def _same_tree(a: Child | None, b: Child) -> bool:
    """The same source root: its directory, and its own metadata (mode, owner, ACLs, times...)."""
    return a is not None and a.cap == b.cap and dict(a.metadata) == dict(b.metadata)


def _save_trees(ctx: Context, at: str, snap: str, gen: int, store: Store, uploader: Uploader,
                incremental: Incremental | None) -> None:
    """Write the trees file of the backup just recorded (a failure costs the next backup time only)."""
    before = incremental.settled if incremental is not None else None
    trees = settled.Trees(snap, gen, settled.fingerprint(store.settings.plain), before.chain + 1 if before else 1,
                          uploader.index_caps, frozenset(store.packs_used), frozenset(store.encoded_used),
                          uploader.trees)
    try:
        settled.save(at, trees)
    except OSError as e:
        settled.forget(at)
        log.warning("the record of this backup's directories (%s) could not be written (%s); the next backup "
                    "decides every entry again", at, e.strerror)


def _count_queue(qpath: str, label: bytes, totals: list[int], kept: list[tuple[bytes, str]] | None = None) -> None:
    """Count a queue's entries and bytes (refusing a bad queue up front); ``kept``: where to list
    the directories the walk kept whole, with their caps."""
    with QueueReader(qpath, expect_source=label) as r:
        for e in r:
            totals[0] += 1
            totals[1] += e.size if e.kind == "f" else 0
            if kept is not None and e.kind == "d" and e.extra("settled") is not None:
                kept.append((e.path, (e.extra("reuse") or b"").decode("ascii", "replace")))


def _queued_trees(ctx: Context, at: str | None, queued: list[tuple[bytes, str]], qpath: str) -> settled.Trees | None:
    """For ``--reuse-queue``: the trees file the queue's kept directories came from (they must all
    be in it as they are in the queue: else the queue is refused, to be made again)."""
    if not queued:
        return None
    trees = _load_trees(ctx, at) if at else None
    if trees is None or any(trees.cap_of(p) != cap for p, cap in queued):
        raise QueueError(path=qpath, problem="it keeps directories of a backup that is no longer the last one "
                                             "(or with another --mode); make it again: run the backup without "
                                             "--reuse-queue")
    return trees


async def _record(ctx: Context, cache: Any, gw: Any, gen: int, snap: str, source: bytes, host: str,
                  tags: tuple[str, ...]) -> Any:
    """Record a finished backup: the link, the result file, and (made durable) the cache row."""
    result = ctx.config.destination.result
    ts = time.time()
    lname = await link_into(gw, result.append_to_lafs_dir, source, ts, snap) if result.append_to_lafs_dir else None
    result_file = result.append_to_file
    if result_file:
        try:
            append_result(result_file, ts, source, snap)
        except OSError as e:  # the backup is complete on the grid: record it all the same
            ctx.reporter.warn(result_file, f"the result line could not be appended ({e.strerror}); the "
                                           "backup is recorded in the entry cache ('lafs-backup list')")
            result_file = None
    st = ctx.reporter.stats
    summary = {k: getattr(st, k) for k in ("files", "files_new", "files_changed", "files_unchanged", "dirs",
                                           "symlinks", "bytes_read", "bytes_uploaded", "packs", "warnings")}
    return cache.record_backup(gen, snap, source, os.path.basename(source).decode("utf-8", "replace"),
                               ts, result.append_to_lafs_dir, lname, result_file, host, tags, summary)


async def _publish(ctx: Context, repo: Any, cache: Any) -> None:
    """Record in the repository every backup of this cache it does not hold yet (this one, and any a
    run before could not record there)."""
    from ..repository import Record

    for b in cache.backups():
        if b.record or b.row is None:
            continue
        try:
            placed = await repo.add(Record(b.cap, b.host or this_host(), b.source, b.ts, b.generation, b.tags,
                                           b.summary))
        except (GatewayError, GridError) as e:
            ctx.reporter.warn("repository", f"the backup is not recorded in the repository yet ({e.message}); it "
                                            "is kept in the local cache, and the next backup records it there")
            return
        cache.set_recorded(b.row, placed.writer, placed.name)
    ctx._history = None


async def _rebuild(ctx: Context, cache: Any, gw: Any, gen: int, source: bytes, host: str) -> None:
    """A new cache (a new machine, or one set aside): fill it from the newest recorded backup of this
    source, so that what is stored already is not uploaded again."""
    from .. import history
    from ..backup.rebuild import Rebuilder
    from ..read.reader import Reader

    everything = await ctx.backups()
    mine = history.matching(everything, source, host) or history.matching(everything, source)
    if not mine:
        return
    newest = mine[-1]
    t0 = time.monotonic()
    rows = await Rebuilder(Reader(gw), cache, gen).snapshot(newest.cap)
    ctx.reporter.note_once("rebuilt", f"the entry cache was rebuilt from the backup of {iso(newest.ts)} "
                                      f"({rows} rows in {time.monotonic() - t0:.1f}s): content already stored is "
                                      "not uploaded again")


async def _unhappy(ctx: Context, gw: Any, e: GatewayError) -> GridError:
    """Say why the grid refused an upload: usually storage servers are missing."""
    asked = re.search(r"asked to place shares on at least (\d+) server", e.body)
    after = "Nothing was recorded; what was uploaded is kept, so a rerun continues from there."
    try:
        have = len(await gw.connected_servers())
    except GatewayError as g:
        return GridError(problem=f"the grid refused an upload (UploadUnhappinessError) and the gateway "
                                 f"no longer answers ({g.reason or g}). {after}")
    want = int(asked.group(1)) if asked else await ctx.happy(gw)
    if have < want:
        return GridError(problem=f"only {have} of {want} required storage servers connected: the grid "
                                 f"refused an upload (UploadUnhappinessError). {after}")
    return GridError(problem=f"{e}. {after}")
