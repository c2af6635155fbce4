"""A backup run: phase one walks the source into the queue (in a thread), phase two uploads it under the
source's lock on the entry cache (runs of other sources go on beside it), and the finished backup is
recorded and published (see ``engine.publish``).

Unchanged subtrees of the last backup are kept whole (``backup.settled``); a
cleanup that forgets that backup meanwhile makes the run walk again."""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import AsyncContextManager, Awaitable, Callable, Iterable, Iterator, Protocol

from .. import history
from ..backup import subtrees
from ..backup.queue import QueueReader, SettleFn, write_queue
from ..backup.scan import WalkHooks
from ..backup.subtrees import Records, Trees
from ..backup.select import Selection, compile_globs, listed_paths, read_globs, read_list
from ..filters import parse_if_present, parse_size
from ..backup.source import LocalSource, Source, is_url
from ..backup.indexer import Indexer
from ..backup.derive import InputCheck, InputsChanged, Prover, unsafe_dirs
from ..backup.upload import Settings, Uploader
from ..config import Config
from ..db.local import LocalDB
from ..errors import GatewayError, LocalError, QueueError, UsageError
from ..history import Backup
from ..grid.gateway import Gateway
from ..protocols import GatewayLike
from ..report import Progress, Reporter
from ..repository import Repository
from ..store.entry import Entry
from ..store.snapshot import Child
from ..store.store import Store, StoreSettings
from ..system.lock import source_scope
from ..system.places import state_dir
from ..system.programs import Programs, Runner
from . import hooks
from .inbox import publish_manifest
from .publish import publish, rebuild_cache, record_backup, unhappy
from .sealing import Window
from .runtime import Runtime

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A thread's work was stopped because the command is being interrupted."""


class Target(Protocol):
    """Where a backup is written, as the resource opener (``resources.Opener``) opens it."""

    def locked_cache(self, fresh: bool = False, scope: str | None = None) -> AsyncContextManager[LocalDB]: ...

    async def wait_for_lock(self, scope: str | None = None) -> None:
        """Wait, as :meth:`locked_cache` would, until no other run holds that lock (``scope``: a
        source's; None: the whole cache's), then let it go; raises as it would."""
        ...

    async def cache_path(self) -> str: ...

    async def repository(self, create: bool = False) -> Repository | None: ...

    async def backups(self) -> list[Backup]: ...

    def forget_backups(self) -> None: ...

    async def happy(self, gw: GatewayLike | None = None) -> int: ...


@dataclass(frozen=True)
class Job:
    """What one backup is asked: recorded for ``host`` with ``tags``, in ``mode``; with
    ``rebuild_cache``, the entry cache is set aside and made anew; with ``skip_if_unchanged``, a
    snapshot that is the last one of the source on ``host`` is not recorded again."""

    host: str
    tags: tuple[str, ...] = ()
    mode: str = "stat"
    rebuild_cache: bool = False
    skip_if_unchanged: bool = False


@dataclass(frozen=True)
class SelectArgs:
    """The selection options given on the command line (each adds to its ``source.*`` key)."""

    exclude_if_present: tuple[str, ...] = ()
    git_ignore: bool = False
    files_from: tuple[str, ...] = ()
    files_from_verbatim: tuple[str, ...] = ()
    files_from_raw: tuple[str, ...] = ()
    one_file_system: bool = False
    exclude_caches: bool = False
    exclude_larger_than: str | None = None
    #: Globs (``--exclude``), case-insensitive globs (``--iexclude``), files of globs (``--exclude-file``).
    exclude: tuple[str, ...] = ()
    iexclude: tuple[str, ...] = ()
    exclude_file: tuple[str, ...] = ()

    @classmethod
    def of(cls, ns: argparse.Namespace) -> "SelectArgs":
        """From parsed arguments (absent ones are the defaults)."""
        def many(name: str) -> tuple[str, ...]:
            return tuple(getattr(ns, name, None) or ())

        def flag(name: str) -> bool:
            return bool(getattr(ns, name, False))

        return cls(exclude_if_present=many("exclude_if_present"), git_ignore=flag("git_ignore"),
                   files_from=many("files_from"), files_from_verbatim=many("files_from_verbatim"),
                   files_from_raw=many("files_from_raw"), one_file_system=flag("one_file_system"),
                   exclude_caches=flag("exclude_caches"), exclude_larger_than=getattr(ns, "exclude_larger_than", None),
                   exclude=many("exclude"), iexclude=many("iexclude"), exclude_file=many("exclude_file"))


def make_source(conf: Config, rep: Reporter, arg: str | None) -> Source:
    """The source to back up: SOURCE or ``source.path``, a local directory (a glob picks one) or an
    fsspec URL (``s3://bucket/prefix``, with ``source.storage_options``)."""
    src = arg or conf.source.path
    if src and is_url(src):
        from ..backup.fsspec_source import FsspecSource

        return FsspecSource(src, conf.source.storage_options)
    return local_source(conf, rep, arg)


def local_source(conf: Config, rep: Reporter, arg: str | None) -> LocalSource:
    """The local directory SOURCE (or ``source.path``) names, recorded under the path as given: a
    symlink to a directory is walked through, but its backups are the link's.  Raises
    :class:`UsageError` for a path that does not exist or is not a directory."""
    src = arg or conf.source.path
    if not src:
        raise UsageError("No source to back up: give SOURCE or set source.path")
    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(path) and glob.has_magic(path):
        path = pick(conf.source.pick_policy, rep, path)
    if not os.path.exists(path):
        raise UsageError(f"Source {path} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"Source {path} is not a directory")
    # The walk opens its root without following a symlink: it is given the directory the path
    # resolves to, and records the backup under the path.
    return LocalSource(os.fsencode(os.path.realpath(path)), label=os.fsencode(path))


def pick(policy: str, rep: Reporter, pattern: str) -> str:
    """The directory a glob source names, by ``source.pick_policy``; the backup is recorded under it."""
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
    rep.info(f"lafs-backup: backing up {chosen} ({policy} of {len(found)} directories matching "
                      f"{pattern})")
    return os.path.abspath(chosen)


def selection(conf: Config, ns: SelectArgs, root: bytes) -> Selection:
    """The filter rules and selection options of this run: the configuration's, plus the options'."""
    c = conf.source.select
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
    globs = []
    if ns.exclude:
        globs.append(compile_globs(ns.exclude, "--exclude"))
    if ns.iexclude:
        globs.append(compile_globs(ns.iexclude, "--iexclude", fold=True))
    for f in ns.exclude_file:
        globs.append(compile_globs(read_globs(f), f"--exclude-file {f}"))
    return Selection(
        filter=conf.filter,
        one_file_system=bool(c.one_file_system or ns.one_file_system),
        exclude_caches=bool(c.exclude_caches or ns.exclude_caches),
        if_present=tuple(parse_if_present(x) for x in present),
        larger_than=parse_size(ns.exclude_larger_than) if ns.exclude_larger_than is not None
        else c.exclude_larger_than,
        ignore_names=tuple(os.fsencode(n) for n in names),
        listed=listed_paths(root, lists) if lists else None,
        globs=tuple(globs))


def queue_path(conf: Config, source: bytes, override: str | None) -> str:
    """Where the queue of ``source`` is written: the option's path, ``source.queue_path``, or one of
    the state directory's queues, named for the source."""
    if override:
        return override
    if conf.source.queue_path:
        return conf.source.queue_path
    base = os.path.basename(source).decode("utf-8", "replace") or "root"
    digest = hashlib.sha256(source).hexdigest()[:12]
    return os.path.join(state_dir(), "queues", f"{base}.{digest}.queue")


async def phase_one(rt: Runtime, source: Source, qpath: str, totals: list[int], sel: Selection,
                    hooks: WalkHooks | None = None, settle: SettleFn | None = None) -> int:
    """Walk the source into the queue, in a thread; the reactor stays free meanwhile.

    Interrupting the command stops the walk at its next entry; the previous
    queue, if any, is then left as it was.  ``settle``: see ``queue.write_queue``.
    """
    rep = rt.reporter
    stop = threading.Event()
    warn, note = rt.threadsafe(rep.warn), rt.threadsafe(rep.note_once)

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
        return int(await rt.in_thread(work))
    except OSError as e:  # a full disk: the previous queue is still in place
        raise LocalError(path=qpath, problem=f"{e.strerror}; the previous queue file, if any, "
                         "is kept as it was") from None
    finally:
        stop.set()
        rep.excluded(sel.excluded.counts)


@dataclass(frozen=True)
class Queued:
    """What ``--queue-only`` made: the queue file and its entry count (nothing was uploaded)."""

    path: str
    entries: int


class BackupRun:
    """One backup of ``source``: walk (or reuse a queue), upload, record, publish.

    It is given everything it works with: the runtime, the configuration,
    the gateway (None: a run that only writes the queue), the target (the
    entry cache under its lock, the repository), and where the queue and
    the trees file are.
    """

    def __init__(self, rt: Runtime, conf: Config, gw: GatewayLike | None, target: Target, source: Source, job: Job,
                 sel: Selection, qpath: str, trees_at: str | None) -> None:
        self.rt, self.conf, self.gw, self.target = rt, conf, gw, target
        self.source, self.job, self.sel, self.qpath = source, job, sel, qpath
        self.totals = [0, 0]  # entries, bytes of regular files
        if rt.op is not None:  # (the manhole's op.progress)
            rt.op.totals = self.totals
        if job.mode != "stat" or job.rebuild_cache or not getattr(source, "keeps_trees", True):
            # A new cache knows none of the rows the record builds on; another mode may store what
            # the record's directories do not hold (content changed under unchanged stat data); a
            # stream (``backup.stream``) is read anew each time.
            subtrees.forget(trees_at or "")
            trees_at = None
        #: A backup that walks and uploads in one go keeps whole the subtrees unchanged since the last one.
        self.trees_at = trees_at

    async def queue_only(self) -> Queued:
        """Phase one alone: the queue is written, nothing is uploaded."""
        n = await self._walk(None, [], keep=self.trees_at is not None)
        return Queued(self.qpath, n)

    async def run(self, reuse_queue: bool = False) -> "Made":
        """The backup, within the source's hooks (``engine.hooks``).  A run that the lock of its
        source (or, rebuilding the cache, of the whole cache) would refuse is refused, or waits, here:
        before its hooks and its walk, not after them.  (The lock itself is taken by phase two: a run
        that starts in between is refused there, as before.)"""
        await self.target.wait_for_lock(None if self.job.rebuild_cache else source_scope(self.source.label))
        return await hooks.around(self.rt, self.conf.source.hooks, self.source.label, lambda: self._run(reuse_queue))

    async def _run(self, reuse_queue: bool) -> "Made":
        """Walk (or take the queue phase one left, with ``reuse_queue``), then phase two."""
        kept: list[bytes] = []
        if reuse_queue:
            queued: list[tuple[bytes, str]] = []
            await self.rt.in_thread(_count_queue, self.qpath, self.source.label, self.totals, queued)
            trees = _queued_trees(self.conf, self.trees_at, queued, self.qpath)
            kept = [p for p, _ in queued]
        else:
            trees = _settled_trees(self.conf, self.trees_at) if self.trees_at is not None else None
            await self._walk(trees, kept, keep=self.trees_at is not None)
        gw = self.gw
        assert gw is not None  # (only a run that writes the queue alone has none)
        await gw.preflight()
        while True:
            try:
                keeping = await _keeping(gw, self.conf, trees, kept)
                try:
                    return await phase_two(self.rt, self.conf, gw, self.target, self.source, self.qpath,
                                           self.totals, self.job, incremental=keeping, trees_at=self.trees_at)
                finally:
                    if keeping is not None and keeping.records is not None:
                        keeping.records.close()
            except Forgotten:  # (a cleanup forgot the previous backup meanwhile: walk again, keeping nothing)
                log.info("the previous backup was forgotten during the walk; walking again")
                subtrees.forget(self.trees_at or "")
                self.rt.reporter.stats = type(self.rt.reporter.stats)()
                self.totals[:] = [0, 0]
                trees, kept = None, []
                await self._walk(None, kept, keep=True)

    async def _walk(self, trees: subtrees.Trees | None, kept: list[bytes], keep: bool = True) -> int:
        """Phase one; with ``keep``, the queue's directories carry the digests of their subtrees (for
        this backup's trees file), and those ``trees`` knows are kept whole."""
        def settle(path: bytes, digest: bytes) -> str | None:
            cap = trees.cap(path, digest) if trees is not None else None
            if cap is not None:
                kept.append(path)
            return cap

        t0 = time.monotonic()
        n = await phase_one(self.rt, self.source, self.qpath, self.totals, self.sel,
                            settle=settle if keep else None)
        log.info("phase one: %d entries in %.2fs%s", n, time.monotonic() - t0,
                 f"; {len(kept)} directories as in the last backup" if trees is not None else "")
        return n


@dataclass
class Incremental:
    """What a round of ``watch`` adds to a backup: the generation whose snapshot it builds on,
    that snapshot's packs and encoded objects (the unchanged subtrees still use them, and the
    new snapshot's ``objects`` directory must keep linking them), and the uploader's hooks."""

    base: int | None
    packs: frozenset[str] = frozenset()
    objects: frozenset[str] = frozenset()
    on_dir: Callable[[bytes, str], None] | None = None
    hold: Callable[[Entry, Callable[[], Awaitable[Child | None]]], Awaitable[Child | None]] | None = None
    #: The snapshot it builds on: a round that comes to the very same snapshot records nothing.
    previous: str | None = None
    #: The chunks of that snapshot's index (the kept directories' records are there).
    index: tuple[str, ...] = ()
    #: That snapshot's tree (the source root's edge).
    previous_tree: Child | None = None
    #: A backup's walk that kept subtrees of the last one whole: its trees file, and the index
    #: records of the kept subtrees (see ``subtrees``).
    settled: Trees | None = None
    records: Records | None = None


@dataclass(frozen=True)
class Made:
    """A finished, recorded backup."""

    cap: str
    backup: Backup | None  # None: the snapshot is the previous one, and nothing was recorded
    generation: int
    packs: frozenset[str]
    objects: frozenset[str]
    #: The chunks of its index (empty: it has none).
    index: tuple[str, ...] = ()
    tree: Child | None = None
    #: ``skip_if_unchanged`` found the snapshot to be this backup's, the last one: it stands for it.
    kept: Backup | None = None


async def phase_two(rt: Runtime, conf: Config, gw: GatewayLike, target: Target, source: Source, qpath: str,
                    totals: list[int], job: Job, incremental: Incremental | None = None,
                    trees_at: str | None = None) -> Made:
    """Upload a queue and record the backup: under the source's lock on the cache (a run of another
    source may write it at the same time), into the repository.
    ``trees_at``: where to write the trees file of this backup, for the next one's walk.

    When the inputs of derived files change between their proof and their storing, the queue is
    uploaded again (everything but those files is stored by then), those files as bytes."""
    demoted: frozenset[bytes] = frozenset()
    walked = copy.deepcopy(rt.reporter.stats)  # (what phase one counted: its warnings, what it left out)
    while True:
        try:
            return await _phase_two(rt, conf, gw, target, source, qpath, totals, job, incremental, trees_at, demoted)
        except InputsChanged as e:
            log.info("%s; storing them as bytes", e)
            demoted |= e.outputs
            rt.reporter.stats = copy.deepcopy(walked)


async def _prove(rt: Runtime, conf: Config, source: Source, qpath: str, db: LocalDB, gen: int, store: Store,
                 demoted: frozenset[bytes]) -> InputCheck | None:
    """The derived files of the queue proven (``backup/derive.py``), for phase two; None: no rules, or a
    source that is not a local directory."""
    root = getattr(source, "root", None)
    if not conf.derive.rules or not isinstance(root, bytes):
        return None
    d = conf.derive
    prover = Prover(d.rules, Programs(d.allowed_programs), Runner(d.timeout), root, source.label, rt.in_thread,
                    rt.reactor, db.proofs.lookup, lambda rows: db.proofs.remember(rows, gen), d.jobs, d.batch,
                    demoted)
    proofs = await prover.run(qpath)
    rt.reporter.stats.derived_not.update(proofs.not_derived)
    return InputCheck(proofs, await store.pointer()) if proofs.edges else None


async def _phase_two(rt: Runtime, conf: Config, gw: GatewayLike, target: Target, source: Source, qpath: str,
                     totals: list[int], job: Job, incremental: Incremental | None, trees_at: str | None,
                     demoted: frozenset[bytes]) -> Made:
    rep = rt.reporter
    sent_before = gw.bytes_sent
    async with target.locked_cache(fresh=job.rebuild_cache, scope=source_scope(source.label)) as db:
        cache = db.objects  # what the store and the uploader look up and record
        repo = await target.repository(create=True)
        assert repo is not None  # (made if there was none)
        if incremental is not None and incremental.settled is not None and not subtrees.still_kept(
                incremental.settled, db.history.with_cap(incremental.settled.snapshot)):
            raise Forgotten()
        gen = cache.begin_generation(source.label, incremental.base if incremental is not None else None)
        if job.rebuild_cache or not cache.has_objects():
            await rebuild_cache(rep, await target.backups(), gw, cache, gen, source.label, job.host)
        dest = conf.destination
        store = Store(gw, cache, gen, StoreSettings(dest.pack_max_file_size, dest.pack_target_size,
                                                    max(1, conf.operation.window // 2), dest.encoding,
                                                    mode=job.mode, tree=dest.tree),
                      rep.stats, rt.reactor, rt.in_thread)
        inc = incremental or Incremental(None)
        store.packs_used |= inc.packs
        store.encoded_used |= inc.objects
        indexer = Indexer(store, rep.stats, on_dir=inc.on_dir, base=inc.index if incremental is not None else None,
                          settled=inc.settled, records=inc.records)
        derived = await _prove(rt, conf, source, qpath, db, gen, store, demoted)
        uploader = Uploader(source, store, cache, gen, rep,
                            Settings(conf.operation.window, max(4, 2 * conf.operation.jobs), job.mode),
                            rt.reactor, hold=inc.hold, indexer=indexer, derived=derived)
        if rt.op is not None:
            rt.op.uploader = uploader
        progress = Progress(rep, rt.reactor, totals[0], totals[1], uploader)
        progress.start()
        try:
            with QueueReader(qpath, expect_source=source.label) as reader:
                snap = await uploader.run(reader)
        except GatewayError as e:
            if e.unhappy:
                raise await unhappy(gw, e, target.happy) from None
            raise
        finally:
            progress.stop()
        b: Backup | None
        kept: Backup | None = None
        if incremental is not None and incremental.previous_tree is not None and _same_tree(
                uploader.tree, incremental.previous_tree):
            # Nothing that is backed up changed (events about excluded names, say): the previous
            # snapshot stands (this one differs from it in its index's chunks alone).
            b, snap = None, incremental.previous or snap
        elif job.skip_if_unchanged and (kept := history.unchanged(await target.backups(), source.label, job.host,
                                                                  snap)) is not None:
            b = None  # (the last backup stands; its trees file describes this snapshot too)
        else:
            b = await record_backup(rep, dest.result, db.history, gw, gen, snap, source.label, job.host, job.tags,
                                    repo.key.sealed)
            if trees_at is not None:
                _save_trees(trees_at, snap, gen, store, uploader, incremental, _derive_fp(conf),
                            unsafe_dirs(derived.proofs) if derived is not None else frozenset())
            await publish(rep, repo, db.history, source.label)
            if repo.key.sealed:  # (each snapshot walked once: the manifests, and the window)
                window = Window(gw)
                await window.send(rep, repo.key.writecap, db.history, source.label)
                await window.keep(db.history, conf.repository.window, gw.kept if isinstance(gw, Gateway) else None)
            else:
                await publish_manifest(rep, gw, repo.key.writecap, b)  # (when a custodian's inbox is configured)
            target.forget_backups()
        if incremental is None or incremental.settled is not None:  # (not each round of watch)
            # Of the backups this machine made (as the metrics file says them): listing every
            # machine's from the repository would make each backup pay for the whole history.
            said = history.expiring_warning(db.history.backups(), time.time(), dest.lease_days)
            if said:
                rep.advise("leases", said)
    rep.stats.bytes_sent = gw.bytes_sent - sent_before  # (the repository's records included)
    return Made(snap, b, gen, frozenset(store.packs_used), frozenset(store.encoded_used), uploader.index_caps,
                uploader.tree, kept)


class Forgotten(Exception):
    """The backup whose subtrees the walk kept is no longer kept itself."""


def _load_trees(conf: Config, at: str) -> subtrees.Trees | None:
    """The trees file at ``at``, if it was made with this configuration's settings."""
    return subtrees.load(at, subtrees.fingerprint(conf.destination.pack_max_file_size == 0,
                                                      conf.destination.tree, _derive_fp(conf)))


def _derive_fp(conf: Config) -> str:
    """The derive rules and allowed programs, as the trees file's fingerprint holds them ("": none)."""
    d = conf.derive
    if not d.rules:
        return ""
    return hashlib.sha256(repr(([r.digest for r in d.rules.rules], d.allowed_programs)).encode()).hexdigest()[:16]


def _settled_trees(conf: Config, at: str) -> subtrees.Trees | None:
    """The trees file of the last backup, if the next walk may keep subtrees of it (see ``subtrees``).
    Whether that backup is still kept is asked under the cache's lock (``phase_two``): if it is not,
    the walk is made again, keeping nothing."""
    trees = _load_trees(conf, at)
    if trees is None or not trees.index or trees.chain >= subtrees.CHAIN_MAX:
        return None
    return trees


async def _keeping(gw: GatewayLike, conf: Config, trees: subtrees.Trees | None, kept: list[bytes]) -> Incremental | None:
    """What phase two needs of the last backup when the walk kept subtrees of it: its packs and
    objects, its generation as the base, and (unless the whole tree was kept) its index records."""
    if trees is None or not kept:
        return None
    records = None
    if b"" not in kept:
        from ..read.reader import Reader

        reader = Reader(gw, jobs=conf.operation.jobs)
        await reader.load_index(list(trees.index))
        records = subtrees.Records(trees, reader.index)
    return Incremental(trees.generation, trees.packs, trees.objects, settled=trees, records=records)


def _same_tree(a: Child | None, b: Child) -> bool:
    """The same source root: its directory, and its own metadata (mode, owner, ACLs, times...)."""
    return a is not None and a.cap == b.cap and dict(a.metadata) == dict(b.metadata)


def _save_trees(at: str, snap: str, gen: int, store: Store, uploader: Uploader,
                incremental: Incremental | None, derive_fp: str, unsafe: frozenset[bytes] = frozenset()) -> None:
    """Write the trees file of the backup just recorded (a failure costs the next backup time only)."""
    before = incremental.settled if incremental is not None else None
    trees = subtrees.Trees(snap, gen, subtrees.fingerprint(store.settings.plain, store.settings.tree, derive_fp),
                          before.chain + 1 if before else 1, uploader.index_caps, frozenset(store.packs_used), frozenset(store.encoded_used),
                          [t for t in uploader.trees if t[0] not in unsafe])
    try:
        subtrees.save(at, trees)
    except OSError as e:
        subtrees.forget(at)
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


def _queued_trees(conf: Config, at: str | None, queued: list[tuple[bytes, str]], qpath: str) -> subtrees.Trees | None:
    """For ``--reuse-queue``: the trees file the queue's kept directories came from (they must all
    be in it as they are in the queue: else the queue is refused, to be made again)."""
    if not queued:
        return None
    trees = _load_trees(conf, at) if at else None
    if trees is None or any(trees.cap_of(p) != cap for p, cap in queued):
        raise QueueError(path=qpath, problem="it keeps directories of a backup that is no longer the last one "
                                             "(or with another --mode); make it again: run the backup without "
                                             "--reuse-queue")
    return trees
