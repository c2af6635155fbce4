"""The custodian's renewals: what the backups it keeps reference (resolved from its copies of their
manifests, once for each change of what it keeps), a full pass over all of it, and the turns of the slow
rotation that spreads the same work over ``custodian.renew_every``; each recorded in its state.

The renewing itself is handed in (``Renewal.renew``, on a joined grid): a function from targets to
renewals, with or without a census of the shares each server holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Protocol

from .leases import Renewal
from .manifest import FULL_EVERY, Manifest, ManifestError, resolve
from .policy import Rules, kept
from .rotation import END, Rotation, oldest, paint, plan_slice
from .state import Complete, Pass, Seen, State, StateDir, Tick
from .targets import Target, target_of, target_of_index, verify_cap_of

log = logging.getLogger(__name__)


class RenewFn(Protocol):
    """Renews the leases of the targets handed to it, with a census of the shares each server holds or
    without: the renewals (``Renewal.renew``, on a joined grid)."""

    def __call__(self, targets: list[Target], census: bool = ...) -> Awaitable[list[Renewal]]: ...


@dataclass(frozen=True)
class Resolved:
    """What the kept backups reference: the verify caps of their objects and of their manifests (each
    chain whole), the backups whose chain of local copies did not resolve (nothing of theirs is in the
    other two), and each resolved backup's own objects."""

    objects: set[str]
    manifests: set[str]
    unresolved: list[str]
    each: dict[str, frozenset[str]] = field(default_factory=dict)


def resolve_kept(backups: Iterable[Seen], copy: Callable[[str], Manifest | None]) -> Resolved:
    """What ``backups`` reference, their manifests resolved from the local copies (``copy`` gives one by
    its cap, None when there is none).  A backup whose chain does not resolve is left out and named
    (``unresolved``): the others are renewed."""
    memo: dict[str, frozenset[str]] = {}
    previous: dict[str, str | None] = {}
    objects: set[str] = set()
    manifests: set[str] = set()
    unresolved: list[str] = []
    each: dict[str, frozenset[str]] = {}

    def read(cap: str) -> Manifest:
        m = copy(cap)
        if m is None:
            raise ManifestError(what="chain", problem="a manifest of it was not copied")
        previous[cap] = m.previous
        return m
    for b in backups:
        try:
            found = resolve(b.manifest, read, memo)
            chain: list[str] = []
            at: str | None = b.manifest
            while at is not None and at not in manifests and len(chain) <= 4 * FULL_EVERY:
                chain.append(at)
                at = previous[at] if at in previous else read(at).previous
        except ManifestError as e:
            unresolved.append(b.key)
            log.warning("backup %s is not renewed: %s", b.key, e.message)
            continue
        objects |= found
        manifests.update(chain)
        each[b.key] = found
    return Resolved(objects, {v for v in (verify_cap_of(c) for c in manifests) if v is not None}, unresolved,
                    each)


@dataclass(frozen=True)
class Gathered:
    """Everything the kept backups reference, ready to renew: the distinct targets sorted by storage
    index (and those indexes), the backups resolved and those not; the backups that had not joined the
    renewal when it was gathered (``newcomers``), the targets new to the custodian among theirs
    (``fresh``: renewed at once when they join, wherever the rotation stands), and the position spans of
    backups whose span was not known (lowest and highest storage index, hex)."""

    key: tuple[tuple[str, ...], frozenset[str]]
    targets: list[Target]
    indexes: list[bytes]
    backups: int
    unresolved: list[str]
    newcomers: tuple[str, ...]
    fresh: list[Target]
    spans: dict[str, list[str] | None]


class Keeper:
    """The custodian's renewals, recorded in ``state`` (saved through ``store``), by ``now``."""

    def __init__(self, store: StateDir, rules: Rules, now: Callable[[], float]) -> None:
        self._store = store
        self._rules = rules
        self._now = now
        self._gathered: Gathered | None = None

    def gather(self, state: State, keep: list[Seen], dirs: frozenset[str]) -> Gathered:
        """What the kept backups ``keep`` and the directories ``dirs`` (verify caps) reference.  Kept from
        one call to the next while the backups kept and the directories stay the same, and every chain
        resolved: resolving every chain and parsing every cap is the costly part, and it changes about
        once a backup."""
        key = (tuple(b.key for b in keep), dirs)
        if self._gathered is not None and self._gathered.key == key and not self._gathered.unresolved:
            return self._gathered
        found = resolve_kept(keep, self._store.manifest)
        by_cap = {c: target_of(c) for c in found.objects | found.manifests | dirs}
        distinct = {t.storage_index: t for t in by_cap.values()}
        indexes = sorted(distinct)
        newcomers = [b for b in keep if b.joined is None and b.key in found.each]
        known: set[str] = set()
        for b in keep:
            if b.joined is not None and b.key in found.each:
                known |= found.each[b.key]
        fresh: dict[bytes, Target] = {}
        for b in newcomers:
            for c in found.each[b.key] - known:
                fresh[by_cap[c].storage_index] = by_cap[c]
            v = verify_cap_of(b.manifest)
            if v is not None and v in by_cap:
                fresh[by_cap[v].storage_index] = by_cap[v]
        spans: dict[str, list[str] | None] = {}
        for b in keep:
            if b.span is None and b.key in found.each:
                sis = [by_cap[c].storage_index for c in found.each[b.key]]
                spans[b.key] = [min(sis).hex(), max(sis).hex()] if sis else None
        self._gathered = Gathered(key, [distinct[si] for si in indexes], indexes, len(found.each),
                                  list(found.unresolved), tuple(b.key for b in newcomers),
                                  [fresh[si] for si in sorted(fresh)], spans)
        log.debug("gathered %d objects of %d kept backups (%d unresolved, %d joining with %d new objects)",
                  len(indexes), len(keep), len(found.unresolved), len(newcomers), len(fresh))
        return self._gathered

    async def full(self, state: State, dirs: frozenset[str], renew: RenewFn, census: bool) -> Pass:
        """One full pass: renew the custodian's lease on every object of every backup it keeps, their
        manifests and its directories, each distinct object once, with a census of the shares the servers
        hold or without; it starts the rotation when none stands.  Recorded and saved."""
        started = self._now()
        keep = kept(state, started, self._rules)
        g = self.gather(state, keep, dirs)
        renewals = await renew(list(g.targets), census=census)
        finished = self._now()
        self._joined(state, g, started, everyone=True)
        state.spans = list(paint(state.spans, 0, END, started))
        if state.rotation is None:
            state.rotation = Rotation(started)
        state.complete = Complete(started, finished, "pass")
        if census:
            self._found(state, renewals, 0, END)
        else:
            # (nothing new is known of shares: what an earlier census found stands, for what is still kept)
            names = {t.name for t in g.targets}
            state.short = [n for n in state.short if n in names]
            state.lost = [n for n in state.lost if n in names]
        short = sorted(r.target.name for r in renewals if r.short() and not lost(r))
        gone = sorted(r.target.name for r in renewals if lost(r))
        p = Pass(started, finished, g.backups, len(renewals), sum(1 for r in renewals if r.holding),
                 sum(len(r.answers) for r in renewals), short, gone, sum(r.unanswered for r in renewals),
                 list(g.unresolved), census)
        state.last_pass = p
        self._done(state, g, renewals)
        log.info("renewal pass%s: %d backups, %d objects, %d short, %d lost, %d unresolved",
                 "" if census else " (no census)", p.backups, p.objects, len(short), len(gone), len(g.unresolved))
        return p

    async def turn(self, state: State, dirs: frozenset[str], renew: RenewFn) -> Tick:
        """One turn of the slow rotation: renew, with a census, the new objects of the backups that
        joined since the last turn and the slice of everything kept that is due now (see
        :func:`~lafs_backup.custodian.rotation.plan_slice`).  A full pass without a census instead when no
        rotation stands yet (the first turn), or when some range was last renewed longer ago than the
        lease period less ``behind`` (or two rounds, if longer: after an outage, or renewals that kept
        failing): the cheapest way to put every lease out of danger at once.  Recorded and saved; a
        renewal that raises records nothing, and the next turn takes up where this one stood."""
        now = self._now()
        first = oldest(state.spans, 0, END - 1)
        behind = max(self._rules.lease - self._rules.behind, 2 * self._rules.renew_every)
        if state.rotation is None or first is None or now - first > behind:
            p = await self.full(state, dirs, renew, census=False)
            t = Tick(p.started, p.finished, 0.0, 1.0, p.objects, 0, p.renewed, p.requests, p.unanswered,
                     wrapped=True, full=True)
            state.last_tick = t
            self._store.save(state)
            return t
        started = self._now()
        keep = kept(state, started, self._rules)
        g = self.gather(state, keep, dirs)
        rotation = state.rotation
        s = plan_slice(g.indexes, rotation, started, self._rules.renew_every)
        waiting = any(k in state.backups and state.backups[k].joined is None for k in g.newcomers)
        joining = list(g.fresh) if waiting else []
        todo = joining + g.targets[s.first:s.stop]
        renewals = await renew(todo, census=True) if todo else []
        finished = self._now()
        self._joined(state, g, started, everyone=False)
        state.spans = list(paint(state.spans, s.lo, s.hi, started))
        state.rotation = s.next
        if s.wrapped:
            state.complete = Complete(rotation.started, finished, "rotation")
        self._found(state, renewals, s.lo, s.hi)
        t = Tick(started, finished, s.lo / END, s.hi / END, len(renewals), len(joining),
                 sum(1 for r in renewals if r.holding), sum(len(r.answers) for r in renewals),
                 sum(r.unanswered for r in renewals), sum(1 for r in renewals if r.short() and not lost(r)),
                 sum(1 for r in renewals if lost(r)), s.wrapped)
        state.last_tick = t
        self._done(state, g, renewals)
        log.debug("rotation turn: %d objects (%d joining) from %.6f to %.6f of the round%s", t.objects,
                  t.joining, t.lo, t.hi, ", which it ends" if s.wrapped else "")
        return t

    def _joined(self, state: State, g: Gathered, at: float, everyone: bool) -> None:
        """The backups renewed whole at ``at`` (``everyone``: a full pass) or whose new objects were, have
        joined; those that did not resolve have left (they join again, and are renewed at once, when they
        resolve); spans newly known are kept."""
        unresolved = set(g.unresolved)
        for key in g.key[0]:
            b = state.backups.get(key)
            if b is None:
                continue
            if key in unresolved:
                b.joined = None
            elif b.joined is None and (everyone or key in g.newcomers):
                b.joined = at
            if key in g.spans:
                b.span = g.spans[key]

    def _found(self, state: State, renewals: list[Renewal], lo: int, hi: int) -> None:
        """What a census of the objects from ``lo`` to ``hi`` (and of those in ``renewals``) found replaces
        what was known of them: objects short or lost there before and not now leave the lists."""
        asked = {r.target.name for r in renewals if r.census}

        def stays(name: str) -> bool:
            return name not in asked and not lo <= int.from_bytes(target_of_index(name).storage_index, "big") < hi

        census = [r for r in renewals if r.census]
        state.short = sorted({n for n in state.short if stays(n)} |
                             {r.target.name for r in census if r.short() and not lost(r)})
        state.lost = sorted({n for n in state.lost if stays(n)} | {r.target.name for r in census if lost(r)})

    def _done(self, state: State, g: Gathered, renewals: list[Renewal]) -> None:
        state.unresolved = list(g.unresolved)
        state.unanswered = sum(r.unanswered for r in renewals)
        state.failing_since = None
        state.failure = None
        self._store.save(state)


def lost(r: Renewal) -> bool:
    """Fewer shares kept than rebuild the object (as its verify cap tells; else: none at all), by a census."""
    return r.census and len(r.shares) < (r.target.needed or 1)
