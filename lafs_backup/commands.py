"""The commands: each wires the pipeline stages together for one CLI verb."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator

import platformdirs

from . import config as cfg
from . import encode, history, ratelimit
from .cache import EntryCache, move_aside
from .entry import Entry
from .errors import ExitCode, GatewayError, GridError, LocalError, QueueError, UsageError
from .filters import compile_from_config
from .gateway import Gateway, make_http_client
from .history import Backup
from .lock import CacheLock
from .queue import QueueReader, write_queue
from .record import append_result, link_into
from .report import Operation, Progress, Reporter
from .scan import scan
from .upload import Settings, Uploader

if TYPE_CHECKING:
    from .grid import LocalGrid

log = logging.getLogger(__name__)

APP = "lafs-backup"


def state_dir() -> str:
    return platformdirs.user_state_dir(APP)


def data_dir() -> str:
    return platformdirs.user_data_dir(APP)


class Interrupted(Exception):
    """A thread's work was stopped because the command is being interrupted."""


@dataclass
class Context:
    """Everything a command needs, injected by the CLI (or a test)."""

    tree: dict[str, Any]
    reactor: Any
    reporter: Reporter
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    #: The running operation, as the manhole shows it.
    op: Operation | None = None
    _gateway: Gateway | None = None
    _url: str | None = None

    def get(self, key: str) -> Any:
        return cfg.get(self.tree, key)

    # -- destination ---------------------------------------------------------
    def grid(self, directory: str | None = None) -> "LocalGrid":
        from .grid import GridSpec, LocalGrid

        d = directory or cfg.expand(self.get("grid.dir")) or os.path.join(data_dir(), "grid")
        return LocalGrid(GridSpec(d, self.get("grid.nodes"), self.get("grid.needed"), self.get("grid.happy")))

    def make_gateway(self, url: str, jobs: int | None = None, attempts: int | None = None) -> Gateway:
        policy = cfg.retry_policy(self.tree)
        if attempts is not None:
            policy = dataclasses.replace(policy, attempts=attempts)
        j = jobs or self.get("operation.jobs")
        return Gateway(url, make_http_client(self.reactor, j + 2), self.reactor, policy, j,
                       self.get("http.debug_requests"),
                       limit_bytes=ratelimit.make(self.get("operation.rate_limit.bytes"),
                                                  "operation.rate_limit.bytes", self.reactor),
                       limit_objects=ratelimit.make(self.get("operation.rate_limit.objects"),
                                                    "operation.rate_limit.objects", self.reactor))

    def upload_settings(self) -> Settings:
        return Settings(
            window=self.get("operation.window"),
            open_files=max(4, 2 * self.get("operation.jobs")),
            pack_max_file_size=self.get("destination.pack.max_file_size"),
            pack_target_size=self.get("destination.pack.target_size"),
            encoding=encode.compile_rules(self.get("destination.encoding.method"),
                                          self.get("destination.encoding.min_size"),
                                          self.get("destination.encoding.path_filter")),
        )

    async def url(self) -> str:
        """The gateway base URL, starting the embedded grid when none is configured."""
        if self._url is None:
            configured = self.get("destination.url")
            if configured:
                self._url = cfg.gateway_base(configured)
            else:
                self._url = await ensure_grid(self, self.grid())
        return self._url

    async def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = self.make_gateway(await self.url())
            if self.op is not None:
                self.op.gateway = self._gateway
        return self._gateway

    async def cache_path(self) -> str:
        path = cfg.expand(self.get("source.entry_cache.path"))
        if not path:
            name = "entry-cache.local.sqlite" if not self.get("destination.url") else (
                "entry-cache." + hashlib.sha256((await self.url()).encode()).hexdigest()[:12] + ".sqlite")
            path = os.path.join(state_dir(), name)
        return path

    async def cache(self, reader: bool = False) -> EntryCache:
        """The entry cache: a writer (the caller holds :meth:`lock`), or a reader, which works
        while another run writes."""
        url = await self.url()
        return EntryCache(await self.cache_path(), url, self.get("source.entry_cache.commit_after.rows"),
                          self.get("source.entry_cache.commit_after.seconds"), reader=reader)

    async def lock(self) -> CacheLock:
        """Take the entry cache's lock, waiting up to ``operation.lock_wait`` seconds for a holder."""
        path = await self.cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = CacheLock(path + ".lock", self.reporter)
        await lock.acquire_waiting(float(self.get("operation.lock_wait")), self.reactor)
        return lock

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work off the reactor thread, so signals, timers and the manhole stay live
        (inline when the injected reactor has no threads, as a test's memory reactor)."""
        from twisted.internet.interfaces import IReactorThreads
        from twisted.internet.threads import deferToThreadPool

        if not IReactorThreads.providedBy(self.reactor):
            return fn(*args)
        return await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn``, called on the reactor thread whoever calls it (a reporter method, from a thread)."""
        from twisted.internet.interfaces import IReactorThreads

        if not IReactorThreads.providedBy(self.reactor):
            return fn

        def call(*args: Any) -> None:
            self.reactor.callFromThread(fn, *args)
        return call


async def ensure_grid(ctx: Context, grid: "LocalGrid", quiet: bool = False) -> str:
    from .grid import wait_connected

    try:
        state, started = await ctx.in_thread(grid.start_processes)
    except BaseException:
        grid.cancel()  # interrupted: stop the thread's subprocess now
        raise
    if started and not quiet:
        print(f"lafs-backup: started the embedded local grid in {grid.dir}", file=ctx.err)
    gw = ctx.make_gateway(state["url"], jobs=2, attempts=1)
    await wait_connected(gw.connected_servers, state["happy"], ctx.get("grid.start_timeout"),
                         _sleeper(ctx.reactor), ctx.reactor.seconds)
    return str(state["url"])


def _sleeper(reactor: Any) -> Any:
    from twisted.internet.task import deferLater

    async def sleep(s: float) -> None:
        await deferLater(reactor, s, lambda: None)
    return sleep


def _source(ctx: Context, arg: str | None) -> bytes:
    src = arg or cfg.expand(ctx.get("source.path"))
    if not src:
        raise UsageError("No source to back up: give SOURCE or set source.path")
    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(path):
        raise UsageError(f"Source {path} is not a directory")
    return os.fsencode(path)


def _queue_path(ctx: Context, source: bytes, override: str | None) -> str:
    if override:
        return override
    configured = cfg.expand(ctx.get("source.queue.path"))
    if configured:
        return configured
    base = os.path.basename(source).decode("utf-8", "replace") or "root"
    digest = hashlib.sha256(source).hexdigest()[:12]
    return os.path.join(state_dir(), "queues", f"{base}.{digest}.queue")


def this_host() -> str:
    return socket.gethostname() or "localhost"


# -- backup -----------------------------------------------------------------------

async def _phase_one(ctx: Context, source: bytes, flt: Any, qpath: str, totals: list[int]) -> int:
    """Walk the source into the queue, in a thread; the reactor stays free meanwhile.

    Interrupting the command stops the walk at its next entry; the previous
    queue, if any, is then left as it was.
    """
    rep = ctx.reporter
    stop = threading.Event()
    warn, note = ctx.threadsafe(rep.warn), ctx.threadsafe(rep.note_once)

    def until_stopped(entries: Iterable[Entry]) -> Iterator[Entry]:
        for e in entries:
            if stop.is_set():
                raise Interrupted()
            yield e

    def work() -> int:
        return write_queue(qpath, source, until_stopped(_count(scan(source, flt, warn, note), totals)))

    try:
        return int(await ctx.in_thread(work))
    except OSError as e:  # a full disk: the previous queue is still in place
        raise LocalError(path=qpath, problem=f"{e.strerror}; the previous queue file, if any, "
                         "is kept as it was") from None
    finally:
        stop.set()


async def backup(ctx: Context, source_arg: str | None, queue_only: bool | str,
                 reuse_queue: bool | str, mode: str = "stat", rebuild_cache: bool = False,
                 host: str | None = None) -> int:
    rep = ctx.reporter
    source = _source(ctx, source_arg)
    host = host or this_host()
    flt = compile_from_config(ctx.get("filter"))  # bad rules fail before any work
    settings = dataclasses.replace(ctx.upload_settings(), mode=mode)
    for key in ("operation.rate_limit.bytes", "operation.rate_limit.objects"):
        if ctx.get(key) is not None:
            ratelimit.parse_spec(ctx.get(key), key)
    qpath = _queue_path(ctx, source, queue_only if isinstance(queue_only, str) else (
        reuse_queue if isinstance(reuse_queue, str) else None))
    totals = [0, 0]  # entries, bytes of regular files
    if ctx.op is not None:
        ctx.op.totals, ctx.op.frame = totals, sys._getframe()
    if reuse_queue is not False:
        def count() -> None:
            with QueueReader(qpath, expect_source=source) as r:  # refuse a bad queue up front
                for e in r:
                    totals[0] += 1
                    totals[1] += e.size if e.kind == "f" else 0
        await ctx.in_thread(count)
    else:
        t0 = time.monotonic()
        n = await _phase_one(ctx, source, flt, qpath, totals)
        log.info("phase one: %d entries in %.2fs", n, time.monotonic() - t0)
        if queue_only is not False:
            rep.info(f"queue: {n} entries written to {qpath}")
            if rep.json_mode:
                rep._json({"type": "queue", "path": qpath, "entries": n, "warnings": rep.stats.warnings})
            return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK

    gw = await ctx.gateway()
    await gw.preflight()
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
            gen = cache.begin_generation(source)
            uploader = Uploader(source, gw, cache, gen, rep, settings, ctx.reactor)
            if ctx.op is not None:
                ctx.op.uploader = uploader
            progress = Progress(rep, ctx.reactor, totals[0], totals[1])
            progress.start()
            try:
                with QueueReader(qpath, expect_source=source) as reader:
                    snap = await uploader.run(reader)
            except GatewayError as e:
                if e.unhappy:
                    raise await _unhappy(ctx, gw, e) from None
                raise
            finally:
                progress.stop()
            ts = time.time()
            link_dir = ctx.get("destination.result.append_to_lafs_dir")
            lname = await link_into(gw, link_dir, source, ts, snap) if link_dir else None
            result_file = cfg.expand(ctx.get("destination.result.append_to_file"))
            if result_file:
                try:
                    append_result(result_file, ts, source, snap)
                except OSError as e:  # the backup is complete on the grid: record it all the same
                    rep.warn(result_file, f"the result line could not be appended ({e.strerror}); the "
                                          "backup is recorded in the entry cache ('lafs-backup list')")
                    result_file = None
            b = cache.record_backup(gen, snap, source, os.path.basename(source).decode("utf-8", "replace"),
                                    ts, link_dir, lname, result_file, host)
            _warn_expiring(ctx, cache.backups())
        finally:
            try:
                ctx.reactor.removeSystemEventTrigger(shutdown)
            except ValueError:
                pass  # the reactor is already shutting down (a signal): the trigger ran
            cache.close()
    finally:
        lock.release()
    rep.stats.requests = dict(gw.counts)
    if ctx.get("destination.result.print_to_stdout") and not rep.json_mode:
        print(snap, file=ctx.out, flush=True)
    rep.finish("backup", {"cap": snap, "generation": b.generation} if rep.json_mode else None)
    return _outcome(rep)


async def _unhappy(ctx: Context, gw: Gateway, e: GatewayError) -> GridError:
    """Say why the grid refused an upload: usually storage servers are missing."""
    asked = re.search(r"asked to place shares on at least (\d+) server", e.body)
    after = "Nothing was recorded; what was uploaded is kept, so a rerun continues from there."
    try:
        have = len(await gw.connected_servers())
    except GatewayError as g:
        return GridError(problem=f"the grid refused an upload (UploadUnhappinessError) and the gateway "
                                 f"no longer answers ({g.reason or g}). {after}")
    want = int(asked.group(1)) if asked else await happy_for(ctx, gw)
    if have < want:
        return GridError(problem=f"only {have} of {want} required storage servers connected: the grid "
                                 f"refused an upload (UploadUnhappinessError). {after}")
    return GridError(problem=f"{e}. {after}")


def _outcome(rep: Reporter) -> int:
    if rep.stats.problems:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK


def _count(entries: Iterable[Entry], totals: list[int]) -> Iterator[Entry]:
    """Pass entries through, counting them and their bytes (for progress and ETA)."""
    for e in entries:
        totals[0] += 1
        if e.kind == "f":
            totals[1] += e.size
        yield e


def _warn_expiring(ctx: Context, backups: list[Backup]) -> None:
    """Warn about kept backups some of whose leases may end within a week."""
    days = ctx.get("destination.lease_days")
    if days is None or not backups:
        return
    soon = history.expiring(backups, time.time(), days)
    if soon:
        first = min(when for _, when in soon)
        gens = ", ".join(str(b.generation) for b, _ in soon[:10]) + (" ..." if len(soon) > 10 else "")
        ctx.reporter.advise("leases", f"{len(soon)} kept backup(s) (generation {gens}) may lose objects "
                                    f"whose leases end from {_iso(first)} on; run 'lafs-backup check' to "
                                    "renew them")


# -- list ---------------------------------------------------------------------------

def backup_json(b: Backup, floors: dict[int, float] | None = None) -> dict[str, Any]:
    floor = (floors or {}).get(b.id)
    return {"generation": b.generation, "time": _iso(b.ts), "timestamp": b.ts,
            "host": b.host, "source": b.source_text, "name": b.name, "cap": b.cap,
            "last_check": _iso(b.ts_check) if b.ts_check else None,
            "leases_renewed": _iso(b.ts_lease) if b.ts_lease else None,
            "leases_end": _iso(floor + history.LEASE_DAYS * 86400) if floor is not None else None}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def list_backups(ctx: Context, as_json: bool, source: str | None = None, host: str | None = None) -> int:
    cache = await ctx.cache(reader=True)
    try:
        everything = cache.backups()
    finally:
        cache.close()
    floors = history.lease_floors(everything)
    chosen = history.matching(everything, _source_filter(source), host)
    items = [backup_json(b, floors) for b in chosen]
    if as_json:
        print(json.dumps(items, indent=1), file=ctx.out)
    elif not items:
        print("no finished backups recorded", file=ctx.err)
    else:
        for it in items:
            renewed = it["leases_renewed"] or "never"
            print(f"{it['generation']:>5}  {it['time']}  {it['host'] or '-'}  {it['source']}  "
                  f"leases renewed: {renewed}  {it['cap']}", file=ctx.out)
    return ExitCode.OK


# -- snapshots by reference ---------------------------------------------------------

def _source_filter(source: str | None) -> bytes | None:
    return os.fsencode(os.path.abspath(os.path.expanduser(source))) if source else None


def snapshot_source(ctx: Context, source: str | None) -> bytes | None:
    """The source a ``latest`` refers to: the one given, else ``source.path``, else any."""
    return _source_filter(source or cfg.expand(ctx.get("source.path")))


async def resolve_snapshot(ctx: Context, ref: str, source: str | None = None, host: str | None = None) -> str:
    """The cap a SNAPSHOT argument names (a cap needs no record)."""
    if ref.startswith("URI:"):
        return ref
    cache = await ctx.cache(reader=True)
    try:
        everything = cache.backups()
    finally:
        cache.close()
    return history.resolve(everything, ref, snapshot_source(ctx, source), host).cap


# -- restore ------------------------------------------------------------------------

async def restore(ctx: Context, ref: str, paths: list[str], target: str, owners: bool | None = None,
                  numeric: bool = False, source: str | None = None, host: str | None = None) -> int:
    from .restore import Restorer

    cap = await resolve_snapshot(ctx, ref, source, host)
    gw = await ctx.gateway()
    r = Restorer(gw, ctx.reporter, target, window=max(256, 4 * ctx.get("operation.jobs")),
                 owners=owners, numeric=numeric, whole_packs=not paths)
    await r.run(cap, [os.fsencode(p) for p in paths])
    ctx.reporter.stats.requests = dict(gw.counts)
    ctx.reporter.finish("restore")
    return _outcome(ctx.reporter)


# -- check --------------------------------------------------------------------------------

def select_backups(ctx: Context, everything: list[Backup], refs: list[str], source: str | None = None,
                   host: str | None = None) -> list[Backup]:
    """Backups named by cap, generation number or 'latest'; all of them (of ``source`` and
    ``host``, if given) when ``refs`` is empty."""
    if not refs:
        return history.matching(everything, _source_filter(source), host)
    out: list[Backup] = []
    for ref in refs:
        b = history.resolve(everything, ref, snapshot_source(ctx, source), host)
        if b not in out:
            out.append(b)
    return out


async def happy_for(ctx: Context, gw: Gateway | None = None) -> int:
    """The happiness the grid asks of an upload: ``destination.happy``; the embedded grid's own;
    else, for another gateway, the number of storage servers it is connected to now."""
    configured = ctx.get("destination.happy")
    if configured is not None:
        return int(configured)
    if not ctx.get("destination.url"):
        state = ctx.grid().load()
        return int(state["happy"]) if state else int(ctx.get("grid.happy"))
    gw = gw or await ctx.gateway()
    return max(1, len(await gw.connected_servers()))


async def check(ctx: Context, refs: list[str], least_recent: bool, repair: bool, lease: bool,
                fmt: str, healthy_fmt: str | None, to_stderr: bool, as_json: bool,
                source: str | None = None, host: str | None = None) -> int:
    from .check import Checker, Verdict, format_line

    for f in (fmt, healthy_fmt):  # a bad format fails before any work
        if f is not None:
            try:
                format_line(f, Verdict("/x", "file", True, True, 3, "s"), {"name": "n", "generation": 1})
            except ValueError as e:
                raise UsageError(str(e))
    lock = await ctx.lock()
    try:
        cache = await ctx.cache()
        try:
            everything = cache.backups()
            chosen = select_backups(ctx, everything, refs, source, host)
            if not chosen:
                raise UsageError("no finished backups recorded: nothing to check")
            if least_recent:
                chosen = [min(chosen, key=lambda b: (b.ts_check or 0.0, b.ts))]
            gw = await ctx.gateway()
            happy = await happy_for(ctx, gw)
            out = ctx.err if to_stderr else ctx.out
            current: list[dict[str, Any]] = [{}]

            def seen(v: Verdict) -> None:
                info = current[0]
                if not v.healthy:
                    if as_json:
                        record = {**v.as_dict(), "object_type": v.type, "type": "unhealthy",
                                  "generation": info["generation"]}
                        print(json.dumps(record), file=out)
                    else:
                        print(format_line(fmt, v, info), file=out)
                elif healthy_fmt is not None and not as_json:
                    print(format_line(healthy_fmt, v, info), file=out)

            checker = Checker(gw, happy, lease, repair, seen, ctx.get("operation.jobs"))
            total_bad = 0
            # Newest first: the newest backup holds most of what the older ones share.
            for b in sorted(chosen, key=lambda x: (x.ts, x.id), reverse=True):
                info = current[0] = backup_json(b)
                started = time.time()
                result = await checker.check(b.cap)
                bad = result.unhealthy
                if result.error is not None:
                    bad.append(Verdict("?", "?", False, False, None, result.error))
                    msg = f"deep-check of generation {b.generation} stopped: {_redact(result.error)}"
                    print(json.dumps({"type": "error", "generation": b.generation, "message": msg})
                          if as_json else msg, file=out)
                else:
                    cache.set_checked([b.id], started, lease)
                total_bad += len(bad)
                summary = {"type": "checked", "generation": b.generation, "objects": result.checked,
                           "shared": result.shared, "unhealthy": len(bad),
                           "repaired": sum(1 for v in bad if v.repaired)}
                if as_json:
                    print(json.dumps(summary), file=out)
                else:
                    print(f"generation {b.generation} ({info['time']}): {result.checked} objects checked"
                          + (f" ({result.shared} more shared with backups checked before)" if result.shared
                             else "")
                          + f", {len(bad)} unhealthy" + (", leases renewed" if lease else ""), file=ctx.err)
            _warn_expiring(ctx, cache.backups())
        finally:
            cache.close()
    finally:
        lock.release()
    if total_bad:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if ctx.reporter.stats.warnings else ExitCode.OK


def _redact(text: str) -> str:
    from .log import redact

    return redact(text)


# -- cleanup ------------------------------------------------------------------------------

async def storage_indexes(gw: Gateway, cap: str) -> set[str]:
    """Storage indexes of every object reachable from ``cap`` (LIT objects have none)."""
    out: set[str] = set()
    buf = [b""]

    def sink(chunk: bytes) -> None:
        buf[0] += chunk
        *lines, buf[0] = buf[0].split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                si = json.loads(line).get("storage-index")
                if si:
                    out.add(si)

    await gw.stream_manifest(cap, sink)
    sink(b"\n")
    return out


async def cleanup(ctx: Context, refs: list[str], generations: list[int], up_to: bool, policy: Any,
                  dry_run: bool, enumerate_to: str | None, enumerate_only: bool, as_json: bool,
                  group_by: tuple[str, ...] = ("host", "source"), source: str | None = None,
                  host: str | None = None) -> int:
    from .record import remove_result_line
    from .retention import decide

    if enumerate_only and enumerate_to is None:
        raise UsageError("-n/--enumerate-only needs -e/--enumerate-shares")
    if (refs or generations) and not policy.empty:
        raise UsageError("give either backups to forget, or a --keep-* policy, not both")
    lock = await ctx.lock()
    try:
        cache = await ctx.cache()
        try:
            return await _cleanup(ctx, cache, refs, generations, up_to, policy, dry_run, enumerate_to,
                                  enumerate_only, as_json, group_by, source, host, decide, remove_result_line)
        finally:
            cache.close()
    finally:
        lock.release()


async def _cleanup(ctx: Context, cache: EntryCache, refs: list[str], generations: list[int], up_to: bool,
                   policy: Any, dry_run: bool, enumerate_to: str | None, enumerate_only: bool, as_json: bool,
                   group_by: tuple[str, ...], source: str | None, host: str | None, decide: Any,
                   remove_result_line: Any) -> int:
    everything = cache.backups()
    scope = history.matching(everything, _source_filter(source), host)
    reasons: dict[int, str] = {}
    kept_reasons: dict[int, list[str]] = {}
    if not policy.empty:
        # Each group (by default: each source on each host) keeps its own backups: a source's
        # newest backup is never forgotten because another source has a newer one.
        for key, members in history.groups(scope, group_by).items():
            d = decide([(b.id, b.ts) for b in members], policy, time.time())
            label = " on ".join(reversed(key)) if key else ""
            for i in d.future:
                b = next(x for x in members if x.id == i)
                ctx.reporter.warn(f"generation {b.generation}",
                                  "stamped in the future: kept, and not used to expire others")
            reasons.update({i: "not kept by the policy" + (f" for {label}" if label else "") for i in d.forget})
            kept_reasons.update(d.keep)
    else:
        chosen = select_backups(ctx, everything, refs, source, host) if refs else []
        for g in generations:
            chosen += [b for b in everything if b.generation == g]
            if not any(b.generation == g for b in everything):
                from .errors import SnapshotError

                raise SnapshotError(what=str(g), problem="no backup of that generation is recorded")
        if not chosen:
            raise UsageError("nothing to forget: name backups (caps or generations, -g) or give a "
                             "--keep-* policy")
        reasons = {b.id: "named" for b in chosen}
        if up_to:
            for b in list(chosen):
                same = history.group_key(b, group_by)
                for other in everything:
                    if other.ts <= b.ts and history.group_key(other, group_by) == same:
                        reasons.setdefault(other.id, "older than a named backup (--up-to)")
    forget = [b for b in everything if b.id in reasons]
    keep = [b for b in everything if b.id not in reasons]
    for b in forget:
        info = backup_json(b)
        line = {"type": "forget", "generation": b.generation, "time": info["time"], "host": b.host,
                "source": info["source"], "reason": reasons[b.id]}
        # A dry run's listing is its product (stdout); otherwise it is a report (stderr),
        # and stdout stays free for -e's storage indexes.
        print(json.dumps(line) if as_json else
              f"{'would forget' if dry_run else 'forget'}: generation {b.generation} ({info['time']}, "
              f"{info['source']}): {reasons[b.id]}", file=ctx.out if dry_run else ctx.err)
    if dry_run:
        for b in keep:
            why = ", ".join(kept_reasons.get(b.id, [])) or ("not named" if policy.empty else "not in scope")
            print(json.dumps({"type": "keep", "generation": b.generation, "reason": why}) if as_json
                  else f"keep: generation {b.generation} ({backup_json(b)['time']}): {why}", file=ctx.out)
        return _outcome(ctx.reporter)
    gw = await ctx.gateway() if (enumerate_to is not None or any(b.link_dir for b in forget)) else None
    if enumerate_to is not None and gw is not None:
        gone: set[str] = set()
        for b in forget:
            gone |= await storage_indexes(gw, b.cap)
        for b in keep:
            gone -= await storage_indexes(gw, b.cap)
        text = "".join(f"{si}\n" for si in sorted(gone))
        if enumerate_to == "-":
            ctx.out.write(text)
        else:
            fd = os.open(enumerate_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        if enumerate_only:
            return _outcome(ctx.reporter)
    for b in forget:
        if b.link_dir and b.link_name and gw is not None:
            await gw.unlink(b.link_dir, b.link_name)
        if b.result_file:
            remove_result_line(b.result_file, b.cap)
    rows = cache.forget([b.id for b in forget])
    msg = (f"forgot {len(forget)} backup(s), kept {len(keep)}; {rows} cache row(s) that no kept "
           "backup uses were deleted (nothing is deleted from the grid: leases simply stop being renewed)")
    print(json.dumps({"type": "summary", "forgotten": len(forget), "kept": len(keep), "rows_deleted": rows})
          if as_json else msg, file=ctx.err if not as_json else ctx.out)
    return _outcome(ctx.reporter)


# -- diff -------------------------------------------------------------------------------

async def diff(ctx: Context, a: str, b: str | None, live: bool, as_json: bool, source: str | None = None,
               host: str | None = None) -> int:
    from .diff import Change, LiveDiff, SnapshotDiff

    if live == (b is not None):
        raise UsageError("give either two snapshots (diff A B) or one and --live")
    found: list[Change] = []

    def emit(c: Change) -> None:
        found.append(c)
        print(json.dumps(c.as_dict()) if as_json else c.line(), file=ctx.out)

    cap_a = await resolve_snapshot(ctx, a, source, host)
    gw = await ctx.gateway()
    if b is not None:
        await SnapshotDiff(gw, emit).run(cap_a, await resolve_snapshot(ctx, b, source, host))
    else:
        cache = await ctx.cache(reader=True)
        try:
            rec = next((x for x in cache.backups() if x.cap == cap_a), None)
        finally:
            cache.close()
        src = rec.source if rec is not None else snapshot_source(ctx, source)
        if not src or not os.path.isdir(src):
            raise UsageError("--live needs the snapshot's source directory: it is not recorded for this "
                             "snapshot and source.path is not set")
        flt = compile_from_config(ctx.get("filter"))
        await LiveDiff(gw, src, emit, flt).run(cap_a)
    if not as_json:
        print(f"{len(found)} difference(s)", file=ctx.err)
    return 1 if found else 0


# -- verify ---------------------------------------------------------------------------

async def verify(ctx: Context, ref: str, sample: float, source: str | None = None, host: str | None = None) -> int:
    from .verify import Verifier

    if not 0 < sample <= 100:
        raise UsageError(f"--sample must be a percentage above 0 and at most 100, not {sample}")
    cap = await resolve_snapshot(ctx, ref, source, host)
    gw = await ctx.gateway()
    v = Verifier(gw, ctx.reporter, sample, ctx.get("operation.jobs"))
    await v.run(cap)
    ctx.reporter.stats.files = v.files_read
    ctx.reporter.finish("verify")
    return _outcome(ctx.reporter)


# -- grid -------------------------------------------------------------------------------

async def grid_command(ctx: Context, action: str, directory: str | None) -> int:
    grid = ctx.grid(directory)
    if action == "up":
        url = await ensure_grid(ctx, grid)
        print(url, file=ctx.out)
        return ExitCode.OK
    if action == "down":
        stopped = await ctx.in_thread(grid.stop)
        print(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""),
              file=ctx.err)
        return ExitCode.OK
    state = grid.load()
    if state is None:
        raise GridError(problem=f"no local grid in {grid.dir} (run 'lafs-backup grid up')")
    print(f"url: {state['url']}", file=ctx.out)
    print(f"directory: {grid.dir}", file=ctx.out)
    print(f"encoding: {state['needed']}-of-{state['nodes']}, happy={state['happy']}", file=ctx.out)
    for name in grid.node_names(state):
        print(f"node {name}: {'running' if grid.alive(state, name) else 'stopped'}", file=ctx.out)
    if grid.alive(state, "gateway"):
        gw = ctx.make_gateway(state["url"], jobs=1, attempts=1)
        servers = await gw.connected_servers()
        print(f"connected servers: {len(servers)} ({', '.join(sorted(servers))})", file=ctx.out)
        return ExitCode.OK if len(servers) >= state["happy"] else ExitCode.GRID
    return ExitCode.GRID


def dump_config(ctx: Context) -> int:
    ctx.out.write(cfg.dump(ctx.tree))
    return ExitCode.OK


__all__ = ["Context", "backup", "list_backups", "restore", "grid_command", "dump_config", "QueueError"]
