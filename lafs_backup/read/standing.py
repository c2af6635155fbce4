"""Where the backups stand (pure): per host and source the last backup, its leases and next run; the grid; copies;
and the alerts, most urgent first, with the monitoring-plugin exit code (``status``, the web status page)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..history import Backup, Run, iso, lease_floors

#: Days of lease margin below which ``status`` warns, and below which it is critical.
LEASE_WARNING_DAYS = 14.0
LEASE_CRITICAL_DAYS = 7.0
DAY = 86400.0


class Level(enum.IntEnum):
    """A state in the monitoring-plugin convention (Nagios, Icinga): the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def urgency(self) -> int:
        """How urgent: critical first, then unknown (the grid cannot be asked), then warning, then OK."""
        return {Level.OK: 0, Level.WARNING: 1, Level.UNKNOWN: 2, Level.CRITICAL: 3}[self]


@dataclass(frozen=True)
class Alert:
    """Something ``status`` warns about: its level, what it is about (``grid``, ``leases``, ``backup``,
    ``check``, ``verify``, ``copies``) and a sentence for the user (never a cap)."""

    level: Level
    topic: str
    message: str

    def json(self) -> dict[str, Any]:
        return {"level": self.level.name.lower(), "topic": self.topic, "message": self.message}


# -- leases ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lease:
    """The leases of one kept backup: when a check last renewed every one of its objects' leases
    (None: never), the earliest time any of its objects may have been renewed (``floor``), and so
    when the first of them may run out if nothing renews them (None: the grid collects no garbage)."""

    id: str
    generation: int
    host: str
    source: str
    made: float
    renewed: float | None
    floor: float
    expires: float | None

    def margin_days(self, now: float) -> float | None:
        """Days from ``now`` until the earliest expiry (negative: past; None: leases never run out)."""
        return None if self.expires is None else (self.expires - now) / DAY

    def level(self, now: float) -> Level:
        margin = self.margin_days(now)
        if margin is None or margin >= LEASE_WARNING_DAYS:
            return Level.OK
        return Level.CRITICAL if margin < LEASE_CRITICAL_DAYS else Level.WARNING

    def json(self, now: float) -> dict[str, Any]:
        margin = self.margin_days(now)
        return {"id": self.id, "generation": self.generation, "host": self.host, "source": self.source,
                "made": iso(self.made), "renewed": iso(self.renewed) if self.renewed is not None else None,
                "expires": iso(self.expires) if self.expires is not None else None,
                "margin_days": round(margin, 2) if margin is not None else None,
                "level": self.level(now).name.lower()}


def leases(backups: Sequence[Backup], lease_days: float | None) -> list[Lease]:
    """The leases of every kept backup, oldest backup first (``lease_days``: how long a lease lasts on
    the grid, Tahoe's 31; None: the grid collects no garbage, so nothing expires)."""
    return [x for _, x in _leases(backups, lease_days)]


def _leases(backups: Sequence[Backup], lease_days: float | None) -> list[tuple[Backup, Lease]]:
    """(a sealed repository's backups beyond this host's window are left out: their leases are the custodian's)"""
    backups = [b for b in backups if not b.sealed]
    floors = lease_floors(backups)
    out = []
    for b in sorted(backups, key=lambda x: (x.ts, x.id)):
        floor = floors[b.id]
        out.append((b, Lease(b.short_id, b.generation, b.host or "", b.source_text, b.ts, b.ts_lease, floor,
                             None if lease_days is None else floor + lease_days * DAY)))
    return out


def lease_timeline(backups: Sequence[Backup], lease_days: float | None) -> list[Lease]:
    """When each kept backup's leases run out if nothing renews them: soonest first (backups whose
    leases never run out last, oldest first among them)."""
    return sorted(leases(backups, lease_days),
                  key=lambda x: (x.expires is None, x.expires or 0.0, x.made, x.id))


# -- the grid ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    """A storage server the gateway knows: its nickname, whether it is connected, and the bytes it
    says it has free (None: it does not say)."""

    name: str
    connected: bool
    free: int | None = None


@dataclass(frozen=True)
class GridState:
    """The grid as the gateway sees it, against the happiness uploads need (``problem``: why the
    gateway could not be asked; then nothing else is known)."""

    servers: tuple[Server, ...] = ()
    #: The storage servers an upload needs (shares.happy; None: not known, for a gateway of another
    #: machine's grid when ``destination.happy`` is not set).
    happy: int | None = None
    problem: str | None = None

    @property
    def reachable(self) -> bool:
        return self.problem is None

    @property
    def connected(self) -> list[str]:
        return [s.name for s in self.servers if s.connected]

    @property
    def missing(self) -> list[str]:
        return [s.name for s in self.servers if not s.connected]

    @property
    def free(self) -> int | None:
        """Bytes free on the connected servers that say (None: none says)."""
        said = [s.free for s in self.servers if s.connected and s.free is not None]
        return sum(said) if said else None

    def json(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "problem": self.problem, "happy": self.happy,
                "connected": len(self.connected), "free_bytes": self.free,
                "servers": [{"name": s.name, "connected": s.connected, "free_bytes": s.free} for s in self.servers]}


def grid_state(welcome: Mapping[str, Any], happy: int | None) -> GridState:
    """The grid from the gateway's welcome page (``GET /?t=json``): its ``servers``, each with its
    ``connection_status`` (connected when it starts so) and ``available_space``."""
    servers = []
    for s in welcome.get("servers", []) or []:
        name = str(s.get("nickname") or s.get("nodeid") or "?")
        connected = str(s.get("connection_status", "")).lower().startswith("connected")
        space = s.get("available_space")
        free = space if isinstance(space, int) and not isinstance(space, bool) and space >= 0 else None
        servers.append(Server(name, connected, free))
    return GridState(tuple(sorted(servers, key=lambda x: (not x.connected, x.name))), happy)


# -- per host and source -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timer:
    """A systemd timer of lafs-backup's: its unit, the service it starts, when it next fires (None:
    not scheduled) and when it last did."""

    unit: str
    activates: str
    next: float | None
    last: float | None = None


@dataclass(frozen=True)
class SourceRow:
    """One host and source: its kept backups, the last one, its leases, and its next scheduled run."""

    host: str
    source: str
    kept: int
    last_id: str
    last_generation: int
    last_time: float
    #: "ok", or "warnings" when the last backup skipped entries.
    last_result: str
    last_warnings: int
    #: Bytes the last backup added (its contents and index, after compression; None: not recorded).
    last_added: int | None
    #: Seconds the last backup took (None: not recorded, a backup made by an older version).
    last_seconds: float | None
    #: When a check last renewed the leases of every kept backup of it (None: some never were).
    renewed: float | None
    #: The earliest time a lease of one of its kept backups may run out (None: never).
    expires: float | None
    #: The kept backup whose lease runs out first (its short id).
    expires_id: str | None
    next_run: float | None

    def age(self, now: float) -> float:
        return now - self.last_time

    def margin_days(self, now: float) -> float | None:
        return None if self.expires is None else (self.expires - now) / DAY

    def json(self, now: float) -> dict[str, Any]:
        margin = self.margin_days(now)
        return {"host": self.host, "source": self.source, "kept": self.kept,
                "last": {"id": self.last_id, "generation": self.last_generation, "time": iso(self.last_time),
                         "timestamp": self.last_time, "age_seconds": round(self.age(now), 1),
                         "result": self.last_result, "warnings": self.last_warnings,
                         "bytes_added": self.last_added, "seconds": self.last_seconds},
                "leases": {"renewed": iso(self.renewed) if self.renewed is not None else None,
                           "expires": iso(self.expires) if self.expires is not None else None,
                           "first_to_expire": self.expires_id,
                           "margin_days": round(margin, 2) if margin is not None else None},
                "next_run": iso(self.next_run) if self.next_run is not None else None}


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def source_rows(backups: Sequence[Backup], lease_days: float | None, next_run: float | None = None,
                host: str | None = None) -> list[SourceRow]:
    """A row per host and source of the kept ``backups``, by host then source.  ``next_run``: when
    this machine's backup timer fires next (one timer backs up every source), shown on the rows of
    ``host`` (this machine's name) alone."""
    by_lease = {b.id: x for b, x in _leases(backups, lease_days)}
    groups: dict[tuple[str, str], list[Backup]] = {}
    for b in sorted(backups, key=lambda x: (x.ts, x.id)):
        groups.setdefault((b.host or "", b.source_text), []).append(b)
    rows = []
    for (who, source), kept in sorted(groups.items()):
        last = kept[-1]
        mine = [by_lease[b.id] for b in kept if b.id in by_lease]
        if not mine:  # (every one sealed: a sealed repository's, beyond this host's window)
            continue
        renewals = [x.renewed for x in mine]
        first = min(mine, key=lambda x: (x.expires is None, x.expires or 0.0))
        warnings = _number(last.summary.get("warnings")) or 0
        seconds = last.summary.get("seconds")
        rows.append(SourceRow(
            who, source, len(kept), last.short_id, last.generation, last.ts, "warnings" if warnings else "ok",
            warnings, _number(last.summary.get("bytes_uploaded")),
            float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
            None if any(r is None for r in renewals) else min(r for r in renewals if r is not None),
            first.expires, first.id if first.expires is not None else None, next_run if who == host else None))
    return rows


def next_backup(timers: Sequence[Timer] | None) -> float | None:
    """When the next backup is scheduled: the soonest timer that starts a backup (``lafs-backup.service``
    or ``lafs-backup-watch``'s kin aside, any ``lafs-backup*`` unit that is not check or cleanup)."""
    if not timers:
        return None
    due = [t.next for t in timers if t.next is not None and not any(
        word in t.activates for word in ("check", "cleanup", "web"))]
    return min(due) if due else None


# -- the report ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CopiesState:
    """Backups made here held by fewer grids than ``destination.copies`` asks: (short id, generation, grids)."""

    want: int
    short: tuple[tuple[str, int, int], ...] = ()

    def json(self) -> dict[str, Any]:
        return {"wanted": self.want, "short": [{"id": i, "generation": g, "grids": n} for i, g, n in self.short]}


def copies_state(backups: Sequence[Backup], want: int) -> CopiesState:
    short = tuple((b.short_id, b.generation, 1 + len(b.copies)) for b in sorted(backups, key=lambda x: (x.ts, x.id))
                  if b.original is None and 1 + len(b.copies) < want)
    return CopiesState(want, short)


@dataclass(frozen=True)
class StatusReport:
    """Where the backups stand at ``now``: what ``status`` prints and the web status page shows.  Holds no cap."""

    now: float
    sources: tuple[SourceRow, ...]
    leases: tuple[Lease, ...]
    grid: GridState
    copies: CopiesState
    last_backup_run: Run | None
    last_check: Run | None
    last_verify: Run | None
    #: The systemd timers of lafs-backup (None: systemd does not run here, or could not be asked).
    timers: tuple[Timer, ...] | None
    alerts: tuple[Alert, ...]

    @property
    def level(self) -> Level:
        """The worst state, by :attr:`Level.urgency` (OK when nothing is wrong)."""
        return max((a.level for a in self.alerts), key=lambda x: x.urgency, default=Level.OK)

    @property
    def code(self) -> int:
        """The exit code, in the monitoring-plugin convention: 0 OK, 1 warning, 2 critical, 3 unknown."""
        return int(self.level)

    def json(self) -> dict[str, Any]:
        def run(r: Run | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {"time": iso(r.ts), "timestamp": r.ts, "seconds": r.seconds, "exit_code": r.code,
                    "details": {k: v for k, v in r.details.items() if k != "cap"},
                    "last_success": iso(r.ts_ok) if r.ts_ok is not None else None}

        return {"type": "status", "state": self.level.name.lower(), "code": self.code, "time": iso(self.now),
                "sources": [s.json(self.now) for s in self.sources],
                "leases": [x.json(self.now) for x in self.leases],
                "grid": self.grid.json(), "copies": self.copies.json(),
                "last_backup_run": run(self.last_backup_run), "last_check": run(self.last_check),
                "last_verify": run(self.last_verify),
                "timers": None if self.timers is None else [
                    {"unit": t.unit, "activates": t.activates, "next": iso(t.next) if t.next else None,
                     "last": iso(t.last) if t.last else None} for t in self.timers],
                "alerts": [a.json() for a in self.alerts]}


def _days(d: float) -> str:
    return f"{d:.1f} days"


def assess(now: float, backups: Sequence[Backup], grid: GridState, runs: Mapping[str, Run],
           lease_days: float | None, copies_wanted: int, timers: Sequence[Timer] | None = None,
           host: str | None = None) -> StatusReport:
    """Judge where the backups stand at ``now``: the rows, and the alerts most urgent first.  ``runs``:
    the last run of each command (the local history's); ``timers``: this machine's (``host``) systemd
    timers, None where systemd does not run.

    Critical: a kept backup's leases may run out within :data:`LEASE_CRITICAL_DAYS` (or have run out),
    fewer storage servers connected than uploads need (happy), the last backup run failed after the
    last backup, verify found damage.  Warning: leases within :data:`LEASE_WARNING_DAYS`, a connected
    server short of those known, the last backup skipped entries, the last check found unhealthy
    objects it did not repair, fewer grids hold a backup than ``destination.copies`` asks, no backup
    at all.  Unknown: the grid cannot be asked.
    """
    alerts: list[Alert] = []
    if not grid.reachable:
        alerts.append(Alert(Level.UNKNOWN, "grid", f"the grid cannot be asked: {grid.problem}"))
    else:
        have, missing = grid.connected, grid.missing
        names = f" (not connected: {', '.join(missing)})" if missing else ""
        if grid.happy is not None and len(have) < grid.happy:
            alerts.append(Alert(Level.CRITICAL, "grid", f"only {len(have)} of the {grid.happy} storage servers "
                                                        f"uploads need are connected{names}: a backup would fail"))
        elif missing:
            alerts.append(Alert(Level.WARNING, "grid", f"{len(have)} of {len(grid.servers)} storage servers "
                                                       f"connected{names}" + (
                                                           "" if grid.happy is not None else
                                                           "; set destination.happy to tell whether uploads "
                                                           "still succeed")))
    kept = leases(backups, lease_days)
    for x in sorted(kept, key=lambda x: (x.expires or 0.0, x.id)):
        level = x.level(now)
        if level is Level.OK:
            continue
        margin = x.margin_days(now)
        assert margin is not None and x.expires is not None
        when = (f"may have run out {_days(-margin)} ago ({iso(x.expires)})" if margin < 0
                else f"may run out in {_days(margin)} ({iso(x.expires)})")
        renewed = f"last renewed {iso(x.renewed)}" if x.renewed is not None else "never renewed by a check"
        alerts.append(Alert(level, "leases", f"backup {x.id} (generation {x.generation}, {x.source} on "
                                             f"{x.host or '?'}): leases {when}, {renewed}; run 'lafs-backup check'"))
    last_run = runs.get("backup")
    newest = max((b.ts for b in backups), default=None)
    if last_run is not None and not last_run.ok and (newest is None or last_run.ts > newest):
        alerts.append(Alert(Level.CRITICAL, "backup", f"the last backup run failed (exit code {last_run.code}) "
                                                      f"at {iso(last_run.ts)}"))
    rows = source_rows(backups, lease_days, next_backup(timers), host)
    for row in rows:
        if row.last_warnings:
            alerts.append(Alert(Level.WARNING, "backup", f"the last backup of {row.source} on {row.host or '?'} "
                                                         f"({row.last_id}) skipped {row.last_warnings} entries "
                                                         "with a warning"))
    if not backups and grid.reachable:
        alerts.append(Alert(Level.WARNING, "backup", "no finished backup is recorded"))
    check = runs.get("check")
    if check is not None:
        unhealthy = _number(check.details.get("unhealthy")) or 0
        repaired = _number(check.details.get("repaired")) or 0
        if unhealthy > repaired:
            alerts.append(Alert(Level.WARNING, "check", f"the last check ({iso(check.ts)}) found "
                                                        f"{unhealthy - repaired} unhealthy objects it did not repair; "
                                                        "run 'lafs-backup check --repair'"))
    verify = runs.get("verify")
    if verify is not None and (_number(verify.details.get("problems")) or 0):
        alerts.append(Alert(Level.CRITICAL, "verify", f"the last verify ({iso(verify.ts)}) found "
                                                      f"{verify.details['problems']} damaged objects"))
    copies = copies_state(backups, copies_wanted)
    if copies.short:
        alerts.append(Alert(Level.WARNING, "copies", f"{len(copies.short)} backups are held by fewer than "
                                                     f"{copies.want} grids (destination.copies); run "
                                                     "'lafs-backup copy --to-url URL'"))
    alerts.sort(key=lambda a: -a.level.urgency)  # (stable: within a level, in the order found)
    return StatusReport(now, tuple(rows), tuple(kept), grid, copies, last_run, check, verify,
                        None if timers is None else tuple(timers), tuple(alerts))
