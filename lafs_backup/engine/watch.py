"""A watch: back up, then turn each quiet burst of changes into a new, incremental snapshot.

The first round is a normal backup (an interrupted one is resumed): it
walks the whole tree and puts an inotify watch on every directory it
enters.  Events only mark directories dirty (``backup/changes.py``).  Once
the tree has been quiet for ``settle`` seconds, a round rescans the dirty
directories and the directories above them, and keeps every other
directory's cap from the previous snapshot.  A full rescan runs every
``rescan_interval``, and whenever events were lost.  A round that the grid
cannot take is given back and tried again with a capped backoff; nothing
but a signal or a local error ends the command.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall

from ..backup import changes as ch
from ..backup.changes import Change, Changes, Round, parent_of
from ..backup.indexer import INDEX_CARRIED_MAX
from ..backup.scan import WalkHooks
from ..backup.select import CACHEDIR_TAG
from ..filters import parse_if_present
from ..backup.source import LocalSource
from ..config import Config
from ..errors import CacheBusyError, GridError, LockedError, UsageError
from ..history import iso
from ..protocols import GatewayLike
from ..report import Stats, size_text
from ..store.entry import Entry
from ..store.snapshot import Child, Node
from .backup import Incremental, Job, Made, SelectArgs, Target, phase_one, phase_two, selection
from .runtime import Runtime

if TYPE_CHECKING:  # (inotify is imported when a watch starts)
    from ..read.reader import Reader
    from ..system.inotify import Event

log = logging.getLogger(__name__)

#: Longest wait between two tries while the grid cannot be reached.
BACKOFF_MAX = 300.0
#: Seconds between full rescans while some directories have no watch (the kernel allowed no more).
EXHAUSTED_RESCAN = 600.0
#: Rounds a file may be held back as still being written; then it is stored as it is.
HOLDS_MAX = 2
#: The previous snapshot's directories listed in a round, by path: their edges by name, or the
#: waiters of a listing under way.
_Listings = dict[bytes, dict[bytes, Node] | list[Deferred[dict[bytes, Node]]]]


class DirNode:
    """A directory of the previous snapshot: its cap and its subdirectories (by name)."""

    __slots__ = ("cap", "dirs")

    def __init__(self, cap: str) -> None:
        self.cap = cap
        self.dirs: dict[bytes, DirNode] = {}

    def find(self, path: bytes) -> "DirNode | None":
        node: DirNode | None = self
        for part in path.split(b"/") if path else ():
            node = node.dirs.get(part) if node is not None else None
        return node


def _tree(made: dict[bytes, str], kept: dict[bytes, DirNode]) -> DirNode | None:
    """The directories of a finished round: those it made or found unchanged (``made``), with the
    subtrees it kept whole (``kept``: the previous snapshot's nodes, shared, never changed)."""
    nodes: dict[bytes, DirNode] = {}
    for path, cap in made.items():
        old = kept.get(path)
        nodes[path] = old if old is not None and old.cap == cap else DirNode(cap)
    for path in sorted(nodes, key=len, reverse=True):
        if path:
            parent = nodes.get(parent_of(path))
            if parent is not None and parent is not kept.get(parent_of(path)):
                parent.dirs[path.rpartition(b"/")[2]] = nodes[path]
    return nodes.get(b"")


def _change(e: Event) -> Change:
    """A kernel event (``system/inotify.Event``) as a change."""
    kind = (ch.CREATED if e.created else ch.DELETED if e.deleted else ch.MOVED_FROM if e.moved_from
            else ch.MOVED_TO if e.moved_to else ch.CHANGED)
    return Change(e.dir, e.name, kind, e.is_dir)


class _PreviousSnapshot:
    """The previous snapshot, as a round reads it for the files it holds back: one reader, its index
    (which may be all there is of its directories) loaded once, and closed when the round ends."""

    def __init__(self, target: "WatchTarget", cap: str | None) -> None:
        self._target = target
        self._cap = cap
        self._reader: "Reader | None" = None
        self._opening = DeferredLock()

    async def children(self, dircap: str) -> list[Node]:
        from ..read.reader import Reader

        await self._opening.acquire()
        try:
            if self._reader is None:
                reader = Reader(await self._target.gateway())
                try:
                    if self._cap is not None:
                        await reader.root(self._cap)
                except BaseException:
                    reader.close()
                    raise
                self._reader = reader
        finally:
            self._opening.release()
        return await self._reader.children(Node(b"", "d", dircap, {}))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class WatchTarget(Target, Protocol):
    """A backup target that can also find the grid again (the embedded one restarts after a failure)."""

    async def gateway(self) -> GatewayLike: ...

    def forget_gateway(self) -> None: ...


@dataclass(frozen=True)
class Timing:
    """When rounds run: after ``settle`` quiet seconds, at most every ``min_interval``, never more
    than ``max_delay`` after a change, and a full rescan every ``rescan_interval``."""

    settle: float
    rescan_interval: float
    min_interval: float
    max_delay: float

    @classmethod
    def of(cls, conf: Config, settle: float | None, rescan: float | None, min_interval: float | None) -> "Timing":
        """The configuration's ``watch.*``, with the options given (None: not given)."""
        w = conf.watch
        settle = settle if settle is not None else w.settle
        t = cls(settle, rescan if rescan is not None else w.rescan_interval,
                min_interval if min_interval is not None else w.min_interval, max(w.max_delay, settle))
        for name, value in (("--settle", t.settle), ("--rescan-interval", t.rescan_interval),
                            ("--min-interval", t.min_interval)):
            if value < 0:
                raise UsageError(f"{name} cannot be negative")
        return t


class Watcher:
    """One watch of a local source (see the module docstring)."""

    def __init__(self, rt: Runtime, conf: Config, target: WatchTarget, source: LocalSource, qpath: str,
                 timing: Timing, job: Job, sel: SelectArgs) -> None:
        from ..system.inotify import Notifier

        self.rt, self.conf, self.target = rt, conf, target
        self.ns = sel
        self.rep = rt.reporter
        self.clock = rt.reactor
        self.settle, self.rescan_interval = timing.settle, timing.rescan_interval
        self.min_interval, self.max_delay = timing.min_interval, timing.max_delay
        self.source = source
        self.job = job
        self.qpath = qpath
        self.changes = Changes(sensitive=self._sensitive())
        self.notifier = Notifier(rt.reactor, self._events)
        self.previous: DirNode | None = None
        self.made: Made | None = None
        self._wake: Deferred | None = None
        self._wake_call: IDelayedCall | None = None
        self._exhausted_said = False
        self._holds: dict[bytes, int] = {}
        self.rounds = 0

    def _sensitive(self) -> frozenset[bytes]:
        """Names whose change alters what the selection includes below their directory."""
        c = self.conf.source.select
        names = {os.fsencode(n) for n in (c.ignore_file, ".gitignore") if n}
        names.add(CACHEDIR_TAG)
        for item in [*c.exclude_if_present, *(self.ns.exclude_if_present or ())]:
            names.add(parse_if_present(item)[0])
        return frozenset(names)

    # -- events ---------------------------------------------------------------------------------
    def _events(self, events: list[Event] | None) -> None:
        now = self.clock.seconds()
        if events is None:
            self.rep.note_once("overflow", "events were lost (the kernel's inotify queue overflowed; raise the "
                                           "sysctl fs.inotify.max_queued_events): the next round rescans the "
                                           "whole tree")
            self.changes.lost(now)
        else:
            for e in events:
                for gone in self.changes.note(_change(e), now):
                    self.notifier.forget(gone)
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.called:
            d, self._wake = self._wake, None
            d.callback(None)

    async def _sleep(self, seconds: float | None) -> None:
        """Until ``seconds`` have passed or an event arrives (None: until an event)."""
        d: Deferred = Deferred(lambda _: self._cancel_wake())
        self._wake = d
        if seconds is not None:
            self._wake_call = self.clock.callLater(max(0.0, seconds), self._wakeup)
        try:
            await d
        finally:
            self._cancel_wake()

    def _cancel_wake(self) -> None:
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None

    def _watch_dir(self, rel: bytes, fd: int) -> None:
        """The walk entered a directory (in its thread): watch it."""
        from ..system.inotify import WATCHES_SYSCTL, WatchesExhausted

        try:
            self.notifier.watch(fd, rel)
        except WatchesExhausted:
            if not self._exhausted_said:
                self._exhausted_said = True
                self.rt.threadsafe(self.rep.note_once)(
                    "watches", f"the kernel allows no more inotify watches (raise the sysctl {WATCHES_SYSCTL}): "
                               "some directories are not watched, so every round rescans the whole tree")

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> int:
        if self.rt.op is not None:
            self.rt.op.frame = sys._getframe()
        self.rep.info(f"lafs-backup: watching {os.fsdecode(self.source.label)} (settle {self.settle:g}s, full "
                      f"rescan every {self.rescan_interval:g}s)")
        if self.conf.source.hooks.any:  # (why: see engine/hooks.py)
            self.rep.note_once("hooks", "watch runs no source.hooks: its rounds follow the changes of the live "
                                        "tree (run 'lafs-backup backup' on a timer for backups that need them)")
        pending: Round | None = Round.of((), everything=True)
        last_full = self.clock.seconds()
        failures = 0
        last_start: float | None = None
        try:
            while True:
                if pending is None:
                    now = self.clock.seconds()
                    # Out of watches, some directories are unwatched: full rescans, and more often.
                    exhausted = self.notifier.exhausted
                    next_full = last_full + (min(self.rescan_interval, EXHAUSTED_RESCAN) if exhausted
                                             else self.rescan_interval)
                    due = self.changes.due_in(now, self.settle, self.max_delay, self.min_interval, last_start)
                    if now < next_full and (due is None or due > 0):
                        await self._sleep(next_full - now if due is None else min(due, next_full - now))
                        continue
                    taken = self.changes.take()
                    full = now >= next_full or exhausted
                    pending = Round(taken.closure, taken.full, True, taken.changes) if full else taken
                last_start = self.clock.seconds()
                try:
                    await self._round(pending, failing=failures > 0)
                except (GridError, CacheBusyError, LockedError) as e:
                    self.changes.give_back(pending)
                    failures += 1
                    if not self.conf.destination.url and isinstance(e, GridError):
                        self.target.forget_gateway()  # the next try starts whatever part of the embedded grid died
                    delay = min(BACKOFF_MAX, 5.0 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                    self.rep.warn("grid" if isinstance(e, GridError) else "cache",
                                  f"{e.message}; still watching: the changes are kept and tried again in "
                                  f"{delay:.0f}s")
                    await self._sleep_through(delay)
                else:
                    if failures:
                        self.rep.info("lafs-backup: the grid answers again; the changes made meanwhile are "
                                      "backed up")
                    failures = 0
                    if pending.everything:
                        last_full = last_start
                pending = None
        finally:
            self.notifier.close()

    async def _sleep_through(self, seconds: float) -> None:
        """Wait ``seconds`` whatever arrives meanwhile (events are still recorded)."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            await self._sleep(end - self.clock.seconds())

    async def _round(self, r: Round, failing: bool = False) -> None:
        """One snapshot: a full walk (``r.everything``) or an incremental one."""
        full = r.everything or self.previous is None or self.made is None or self._index_full(self.made)
        self.rep.stats = Stats()
        self.rep._start = self.rep._now()
        gw = await self.target.gateway()
        if self.made is None or failing:
            await gw.preflight()  # a clear "does not answer" at once, rather than after every retry
        gw.resume()  # a failed round halted its uploads
        before = dict(gw.counts)
        t0 = time.monotonic()
        made_dirs: dict[bytes, str] = {}
        kept: dict[bytes, DirNode] = {}
        previous = self.previous

        def reuse(rel: bytes) -> str | None:  # (in the walk's thread; ``previous`` does not change meanwhile)
            if r.descend(rel) or previous is None:
                return None
            node = previous.find(rel)
            if node is None:
                return None
            kept[rel] = node
            return node.cap

        # A file modified within the last half of the settle window although the tree was quiet for
        # all of it was written where no event reached us yet (a directory still being made): it is
        # still being written, and waits for the next round.
        hooks = WalkHooks(on_dir=lambda rel, fd: self._watch_dir(rel, fd),
                          reuse=None if full else reuse,
                          hot_since_ns=None if full else int((time.time() - self.settle / 2) * 1e9))
        totals = [0, 0]
        if self.rt.op is not None:
            self.rt.op.totals = totals
        sel = selection(self.conf, self.ns, self.source.label)
        await phase_one(self.rt, self.source, self.qpath, totals, sel, hooks)
        held: list[bytes] = []
        listings: _Listings = {}
        earlier = _PreviousSnapshot(self.target, self.made.cap if self.made is not None else None)

        async def hold(e: Entry, save: Callable[[], Awaitable[Child | None]]) -> Child | None:
            n = self._holds.get(e.path, 0) + 1
            if n > HOLDS_MAX:  # written without pause: stored as it is, so no snapshot goes without it
                self._holds.pop(e.path, None)
                return await save()
            self._holds[e.path] = n
            held.append(e.parent or b"")
            return await self._previous_edge(previous, e, listings, earlier)

        inc = Incremental(None if full or self.made is None else self.made.generation,
                          frozenset() if full or self.made is None else self.made.packs,
                          frozenset() if full or self.made is None else self.made.objects,
                          on_dir=made_dirs.__setitem__, hold=None if full else hold,
                          previous=None if full or self.made is None else self.made.cap,
                          index=() if full or self.made is None else self.made.index,
                          previous_tree=None if full or self.made is None else self.made.tree)
        try:
            made = await phase_two(self.rt, self.conf, gw, self.target, self.source, self.qpath, totals, self.job,
                                   incremental=inc)
        finally:
            earlier.close()
        self.previous = _tree(made_dirs, kept)
        self.rounds += 1
        for d in held:  # still being written: backed up by a later round
            self.changes.mark(d, self.clock.seconds())
        if made.backup is None:
            self.rep.info(f"lafs-backup: {r.changes} change(s), nothing that is backed up changed; no new snapshot")
            return
        self.made = made
        self._report(r, full, made, gw, before, time.monotonic() - t0, len(held))
        if self.rt.monitor is not None:  # (each round is a run: recorded, the metrics file rewritten, pinged)
            await self.rt.monitor.round_done()

    def _index_full(self, made: Made) -> bool:
        """Must this round walk the whole tree because its directories live in the index alone,
        and the index it would carry over is missing or has reached its bound?"""
        return self.conf.destination.tree == "index" and (
            not made.index or len(made.index) >= INDEX_CARRIED_MAX)

    async def _previous_edge(self, previous: DirNode | None, e: Entry, listings: _Listings,
                             earlier: "_PreviousSnapshot") -> Child | None:
        """A file still being written keeps its edge from the previous snapshot (None: it had none).
        ``listings``: the previous directories listed in this round, each listed once, through
        ``earlier``."""
        parent = e.parent or b""
        node = previous.find(parent) if previous is not None else None
        if node is None:
            return None
        entry = listings.get(parent)
        if isinstance(entry, dict):
            got = entry
        elif isinstance(entry, list):  # being listed for another held file: wait for it
            d: Deferred = Deferred()
            entry.append(d)
            got = await d
        else:
            waiters: list[Deferred] = []
            listings[parent] = waiters
            try:
                nodes = await earlier.children(node.cap)
            except BaseException as err:
                del listings[parent]
                for w in waiters:
                    w.errback(err)
                raise
            got = listings[parent] = {n.name: n for n in nodes}
            for w in waiters:
                w.callback(got)
        n = got.get(e.name)
        if n is None:
            return None
        meta = {k: v for k, v in n.metadata.items() if k not in ("tahoe", "salt", "name_b64")}
        return Child(e.name, n.cap, meta)

    def _report(self, r: Round, full: bool, made: Made, gw: GatewayLike, before: dict[str, int], seconds: float,
                held: int) -> None:
        s = self.rep.stats
        requests = {k: v - before.get(k, 0) for k, v in gw.counts.items() if v - before.get(k, 0)}
        b = made.backup
        assert b is not None  # (a round that recorded nothing is not reported)
        event = {"type": "snapshot", "id": b.short_id, "generation": made.generation, "time": iso(b.ts),
                 "incremental": not full, "changes": r.changes, "dirs_rescanned": s.dirs if full else len(r.closure), "files": s.files, "files_uploaded": s.files_uploaded,
                 "files_changed": s.files_changed, "files_new": s.files_new, "bytes_uploaded": s.bytes_uploaded,
                 "bytes_sent": s.bytes_sent,
                 "dirs_created": s.dirs_new, "dirs_indexed": s.dirs_indexed, "held": held, "requests": requests,
                 "requests_total": sum(requests.values()), "warnings": s.warnings, "seconds": round(seconds, 3)}
        text = (f"snapshot {b.short_id} (generation {made.generation}, {iso(b.ts)}): "
                + ("full rescan" if full else f"{r.changes} change(s), {len(r.closure)} director(ies) rescanned")
                + f"; {s.files_uploaded} file(s) stored, {s.dirs_new} director(ies) made, "
                  f"{size_text(s.bytes_sent)} sent, {sum(requests.values())} request(s), {seconds:.1f}s"
                + (f"; {held} file(s) still being written wait for the next round" if held else ""))
        self.rep.emit(text, event, err=not self.rep.json_mode)

