"""What the custodian decides, by its own clock (pure): which observed backups it keeps, which forget
requests take effect, how the leases of each kept backup stand, and what it alerts about."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .rotation import oldest, time_at
from .state import Forget, Seen, State

DAY = 86400.0
#: Readings of the inbox (``poll`` periods) a manifest may stay unreadable, or renewal keep failing,
#: before that is an alert: a passing fault of the gateway or the grid says nothing.
PATIENCE = 2


@dataclass(frozen=True)
class Rules:
    """The custodian's settings, in seconds: keep every backup first seen within ``keep_within`` (None:
    forever); a forget request takes effect ``grace`` after it arrived; the inbox is read every ``poll``;
    no new manifest for ``quiet_alert`` is a warning (None: never); every object renewed once per
    ``renew_every`` (a round of the slow rotation); leases last ``lease`` on the grid, and a kept backup
    whose earliest lease may end within ``behind`` is a critical alert."""

    keep_within: float | None = 90 * DAY
    grace: float = 30 * DAY
    poll: float = 600.0
    quiet_alert: float | None = 3 * DAY
    renew_every: float = 7 * DAY
    lease: float = 31 * DAY
    behind: float = 7 * DAY


class Level(enum.IntEnum):
    """An alert's level, and the exit code of ``custodian check`` (a monitoring plugin's)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Alert:
    level: Level
    topic: str
    message: str


def kept(state: State, now: float, rules: Rules) -> list[Seen]:
    """The backups the custodian keeps: every one it observed (its manifest accepted) and not forgotten,
    first seen within ``keep_within`` of ``now``; oldest first.  No rule counts backups: a host could
    add fakes to push real ones out."""
    out = [b for b in state.backups.values() if b.forgotten is None and b.refused is None
           and (rules.keep_within is None or now - b.seen <= rules.keep_within)]
    return sorted(out, key=lambda b: (b.seen, b.key))


def due(state: State, now: float, rules: Rules) -> list[Forget]:
    """The pending forget requests whose grace period has passed by ``now``."""
    return [f for f in state.forgets.values() if f.pending and now - f.seen >= rules.grace]


def pending(state: State) -> list[Forget]:
    return sorted((f for f in state.forgets.values() if f.pending), key=lambda f: (f.seen, f.key))


@dataclass(frozen=True)
class Leases:
    """How the leases of one kept backup stand, as the custodian renewed them: ``renewed``, when a slice
    or a pass last completed the renewal of all of its objects (the pass; its joining, when its new
    objects were renewed; the slice of each round that reaches its highest storage index); ``expires``,
    the earliest a lease of one of its objects may end: its oldest renewal plus the lease period.  None:
    not renewed yet, or its chain does not resolve (``expires`` also when it references no object)."""

    renewed: float | None
    expires: float | None


def leases(b: Seen, state: State, rules: Rules) -> Leases:
    """The leases of the kept backup ``b``.  Renewal times are kept per range of storage indexes, never
    per object, so the oldest renewal is that of the oldest range between its lowest and highest storage
    index: a bound no object of it falls below (for a backup of more than a few objects, it is the range
    the sweep reaches next)."""
    if b.joined is None or b.key in state.unresolved:
        return Leases(None, None)
    span = b.positions()
    if span is None:
        return Leases(b.joined, None)
    last = time_at(state.spans, span[1])
    first = oldest(state.spans, span[0], span[1])
    return Leases(b.joined if last is None else max(b.joined, last),
                  (b.joined if first is None else first) + rules.lease)


@dataclass(frozen=True)
class Report:
    """The custodian's standing at ``now``: its alerts, the backups it keeps and how their leases stand
    (``leases``, one for each), the pending forgets."""

    now: float
    alerts: tuple[Alert, ...]
    kept: tuple[Seen, ...]
    pending: tuple[Forget, ...]
    state: State
    rules: Rules
    leases: tuple[Leases, ...] = ()

    @property
    def level(self) -> Level:
        return max((a.level for a in self.alerts), default=Level.OK)

    def json(self) -> dict[str, Any]:
        st = self.state
        p, t, c, r = st.last_pass, st.last_tick, st.complete, st.rotation
        return {"type": "custodian-status", "time": self.now, "level": self.level.name, "code": int(self.level),
                "alerts": [{"level": a.level.name, "topic": a.topic, "message": a.message} for a in self.alerts],
                "kept": [{"backup": b.key, "seen": b.seen, "vanished": b.vanished, "size": b.size,
                          "renewed": x.renewed, "expires": x.expires} for b, x in zip(self.kept, self.leases)],
                "pending_forgets": [{"backup": f.key, "seen": f.seen, "takes_effect": f.seen + self.rules.grace}
                                    for f in self.pending],
                "renewal": {
                    "complete": None if c is None else {"started": c.started, "finished": c.finished, "by": c.by},
                    "rotation": None if r is None else {"started": r.started, "done": self.done(),
                                                        "period": self.rules.renew_every},
                    "last_tick": None if t is None else {"started": t.started, "finished": t.finished,
                                                         "objects": t.objects, "joining": t.joining,
                                                         "from": t.lo, "to": t.hi, "full": t.full},
                    "short": len(st.short), "lost": len(st.lost), "unanswered": st.unanswered,
                    "expires": min((x.expires for x in self.leases if x.expires is not None), default=None)},
                "last_pass": None if p is None else {"started": p.started, "finished": p.finished,
                                                     "backups": p.backups, "objects": p.objects,
                                                     "renewed": p.renewed, "short": len(p.short),
                                                     "lost": len(p.lost), "unanswered": p.unanswered,
                                                     "census": p.census},
                "last_manifest": st.last_new}

    def done(self) -> float | None:
        """The share of the current round of the rotation done (None: no rotation yet)."""
        r = self.state.rotation
        return None if r is None else r.at / float(1 << 128)


def report(state: State, now: float, rules: Rules) -> Report:
    """The alerts (see docs/custodian.md): manifests gone from the inbox and refused ones (critical),
    manifests unreadable for longer than ``PATIENCE`` polls (warning), forget requests pending (warning),
    no new manifest for ``quiet_alert`` (warning), renewal behind (critical when a kept backup's earliest
    lease may end within ``behind``; warning when no complete renewal of everything ended within 1.5
    ``renew_every``), renewal failing for longer than ``PATIENCE`` polls (warning), kept backups whose
    chain did not resolve (critical), objects with too few shares (critical when fewer than rebuild
    them or none)."""
    alerts: list[Alert] = []
    keep = kept(state, now, rules)
    gone = [b for b in keep if b.vanished is not None]
    if gone:
        alerts.append(Alert(Level.CRITICAL, "vanished", f"{len(gone)} manifests were removed from the inbox (the "
                            "host unlinked them; their backups are still kept): " + ", ".join(b.key for b in gone)))
    refused = [b for b in state.backups.values() if b.refused is not None]
    if refused:
        alerts.append(Alert(Level.CRITICAL, "refused", f"{len(refused)} manifests were refused: " +
                            "; ".join(f"{b.key}: {b.refused}" for b in refused)))
    stuck = sorted(k for k, since in state.unreadable.items() if now - since > PATIENCE * rules.poll)
    if stuck:
        alerts.append(Alert(Level.WARNING, "unreadable", f"{len(stuck)} manifests in the inbox could not be read "
                            f"for more than {PATIENCE} readings of it (tried again at each; their backups are "
                            "not kept until they are read): " + ", ".join(stuck)))
    waiting = pending(state)
    if waiting:
        alerts.append(Alert(Level.WARNING, "forget", f"{len(waiting)} forget requests arrived; each takes effect "
                            f"{rules.grace / DAY:g} days after it arrived: " +
                            ", ".join(f"{f.key} (in {_days(f.seen + rules.grace - now)})" for f in waiting)))
    last = state.last_new if state.last_new is not None else state.started
    if rules.quiet_alert is not None and last is not None and now - last > rules.quiet_alert:
        alerts.append(Alert(Level.WARNING, "quiet", f"no new manifest for {_days(now - last)} (custodian.quiet_alert: "
                            f"{rules.quiet_alert / DAY:g} days): is the host still backing up?"))
    status = tuple(leases(b, state, rules) for b in keep)
    # (a backup not renewed yet counts from when it was first seen: the host's own lease at best)
    ends = [(b, x.expires if x.expires is not None else b.seen + rules.lease) for b, x in zip(keep, status)
            if x.expires is not None or x.renewed is None]
    behind = sorted(((end, b.key) for b, end in ends if end - now <= rules.behind))
    c = state.complete
    if behind:
        alerts.append(Alert(Level.CRITICAL, "renewal", f"the leases of {len(behind)} kept backups may end within "
                            f"{rules.behind / DAY:g} days (custodian.behind_days): renewal is behind: " +
                            ", ".join(f"{k} (earliest expiry {_when(e - now)})" for e, k in behind[:20])))
    elif keep and (c is None or now - c.finished > 1.5 * rules.renew_every):
        alerts.append(Alert(Level.WARNING, "renewal", "no complete renewal yet" if c is None else
                            f"the last complete renewal of everything ended {_days(now - c.finished)} ago "
                            f"(custodian.renew_every: {rules.renew_every / DAY:g} days)"))
    failing = state.failing_since
    if failing is not None and now - failing > PATIENCE * rules.poll:
        alerts.append(Alert(Level.WARNING, "failing", f"renewals have failed for {_days(now - failing)}, "
                            "tried again at each reading of the inbox" +
                            (f" (the last: {state.failure})" if state.failure else "")))
    unresolved = [k for k in state.unresolved if k in {b.key for b in keep}]
    if unresolved:
        alerts.append(Alert(Level.CRITICAL, "unresolved", f"{len(unresolved)} kept backups could not be "
                            "resolved from the custodian's copies of their manifests, so their objects are not "
                            "renewed: " + ", ".join(unresolved[:20])))
    if state.lost:
        alerts.append(Alert(Level.CRITICAL, "shares", f"{len(state.lost)} objects have fewer shares than rebuild "
                            "them (the owner's 'lafs-backup check --repair' may save them): " +
                            ", ".join(state.lost[:20])))
    if state.short:
        alerts.append(Alert(Level.WARNING, "shares", f"{len(state.short)} objects have fewer shares than they were "
                            "made with (the owner repairs them with 'lafs-backup check --repair'): " +
                            ", ".join(state.short[:20])))
    if state.unanswered:
        alerts.append(Alert(Level.WARNING, "servers", f"{state.unanswered} answers were missing in the last "
                            "renewal (a storage server down or silent)"))
    return Report(now, tuple(alerts), tuple(keep), tuple(waiting), state, rules, status)


def _days(seconds: float) -> str:
    s = abs(seconds)
    text = f"{s / DAY:.1f} days" if s >= DAY else f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.0f}m"
    return text if seconds >= 0 else f"{text} ago"


def _when(seconds: float) -> str:
    return f"in {_days(seconds)}" if seconds >= 0 else _days(seconds)
