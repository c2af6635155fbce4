"""What the custodian decides, by its own clock (pure): which observed backups it keeps, which forget
requests take effect, and what it alerts about."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .state import Forget, Seen, State

DAY = 86400.0
#: Readings of the inbox (``poll`` periods) a manifest may stay unreadable, or renewal keep failing,
#: before that is an alert: a passing fault of the gateway or the grid says nothing.
PATIENCE = 2


@dataclass(frozen=True)
class Rules:
    """The custodian's settings, in seconds: keep every backup first seen within ``keep_within`` (None:
    forever); a forget request takes effect ``grace`` after it arrived; the inbox is read every ``poll``;
    no new manifest for ``quiet_alert`` is a warning (None: never); a full renewal pass every
    ``renew_every``; leases last ``lease`` on the grid."""

    keep_within: float | None = 90 * DAY
    grace: float = 30 * DAY
    poll: float = 600.0
    quiet_alert: float | None = 3 * DAY
    renew_every: float = 7 * DAY
    lease: float = 31 * DAY


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
    return [f for f in state.forgets.values() if f.honoured is None and now - f.seen >= rules.grace]


def pending(state: State) -> list[Forget]:
    return sorted((f for f in state.forgets.values() if f.honoured is None), key=lambda f: (f.seen, f.key))


def pass_due(state: State, now: float, rules: Rules) -> bool:
    """Is a full renewal pass due (none finished within ``renew_every``)?"""
    return state.last_pass is None or now - state.last_pass.started >= rules.renew_every


@dataclass(frozen=True)
class Report:
    """The custodian's standing at ``now``: its alerts, the backups it keeps, the pending forgets."""

    now: float
    alerts: tuple[Alert, ...]
    kept: tuple[Seen, ...]
    pending: tuple[Forget, ...]
    state: State
    rules: Rules

    @property
    def level(self) -> Level:
        return max((a.level for a in self.alerts), default=Level.OK)

    def json(self) -> dict[str, Any]:
        p = self.state.last_pass
        return {"type": "custodian-status", "time": self.now, "level": self.level.name, "code": int(self.level),
                "alerts": [{"level": a.level.name, "topic": a.topic, "message": a.message} for a in self.alerts],
                "kept": [{"backup": b.key, "seen": b.seen, "vanished": b.vanished, "size": b.size} for b in self.kept],
                "pending_forgets": [{"backup": f.key, "seen": f.seen, "takes_effect": f.seen + self.rules.grace}
                                    for f in self.pending],
                "last_pass": None if p is None else {"started": p.started, "finished": p.finished,
                                                     "backups": p.backups, "objects": p.objects,
                                                     "renewed": p.renewed, "short": len(p.short),
                                                     "lost": len(p.lost), "unanswered": p.unanswered},
                "last_manifest": self.state.last_new}


def report(state: State, now: float, rules: Rules) -> Report:
    """The alerts (see docs/custodian.md): manifests gone from the inbox and refused ones (critical),
    manifests unreadable for longer than ``PATIENCE`` polls (warning), forget requests pending (warning),
    no new manifest for ``quiet_alert`` (warning), the renewal pass behind (warning past 1.5
    ``renew_every``, critical when a lease may end within 7 days), renewal failing for longer than
    ``PATIENCE`` polls (warning), kept backups whose chain did not resolve in the last pass (critical),
    objects with too few shares (critical when fewer than rebuild them or none)."""
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
    p = state.last_pass
    since = p.started if p is not None else state.started
    if keep and since is not None and now - since > rules.lease - 7 * DAY:
        alerts.append(Alert(Level.CRITICAL, "renewal", f"no complete renewal pass for {_days(now - since)}: the "
                            "first leases may end within 7 days"))
    elif keep and since is not None and (p is None or now - since > 1.5 * rules.renew_every):
        alerts.append(Alert(Level.WARNING, "renewal", "no renewal pass yet" if p is None else
                            f"the last complete renewal pass started {_days(now - since)} ago "
                            f"(custodian.renew_every: {rules.renew_every / DAY:g} days)"))
    failing = state.failing_since
    if failing is not None and now - failing > PATIENCE * rules.poll:
        alerts.append(Alert(Level.WARNING, "failing", f"renewal passes have failed for {_days(now - failing)}, "
                            "tried again at each reading of the inbox" +
                            (f" (the last: {state.failure})" if state.failure else "")))
    if p is not None and p.unresolved:
        alerts.append(Alert(Level.CRITICAL, "unresolved", f"{len(p.unresolved)} kept backups could not be "
                            "resolved from the custodian's copies of their manifests, so the last pass did not "
                            "renew their objects: " + ", ".join(p.unresolved[:20])))
    if p is not None and p.lost:
        alerts.append(Alert(Level.CRITICAL, "shares", f"{len(p.lost)} objects have fewer shares than rebuild them "
                            "(the owner's 'lafs-backup check --repair' may save them): " + ", ".join(p.lost[:20])))
    if p is not None and p.short:
        alerts.append(Alert(Level.WARNING, "shares", f"{len(p.short)} objects have fewer shares than they were "
                            "made with (the owner repairs them with 'lafs-backup check --repair'): " +
                            ", ".join(p.short[:20])))
    if p is not None and p.unanswered:
        alerts.append(Alert(Level.WARNING, "servers", f"{p.unanswered} answers were missing in the last pass "
                            "(a storage server down or silent)"))
    return Report(now, tuple(alerts), tuple(keep), tuple(waiting), state, rules)


def _days(seconds: float) -> str:
    s = abs(seconds)
    text = f"{s / DAY:.1f} days" if s >= DAY else f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.0f}m"
    return text if seconds >= 0 else f"{text} ago"
