"""``status``: am I safe?  Where the backups stand, on one screen or as one JSON document, with the exit code of a
monitoring plugin (Nagios, Icinga): 0 OK, 1 warning, 2 critical, 3 unknown."""

from __future__ import annotations

import argparse

from ..history import Run, iso
from ..read.standing import Level, StatusReport
from ..read.status import gather
from ..report import size_text
from ..resources import Opener

#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup status --json'

#: Its ``--help`` ends with its own exit codes: they differ from every other command's.
EPILOG = """\
exit codes (a monitoring plugin's, unlike every other command's): 0 OK; 1 warning (a lease ends within 14
  days, a storage server is missing, the last backup skipped entries or check found unhealthy objects,
  fewer grids hold a backup than destination.copies); 2 critical (a lease ends within 7 days, fewer
  servers connected than happy, the last backup run failed, verify found damage); 3 unknown (the grid
  cannot be asked, or the command was misused).
"""


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``status``: none of its own (``--json`` prints one JSON document)."""


async def run(o: Opener, ns: argparse.Namespace) -> int:
    report = await gather(o, o.rt.reactor.seconds())
    rep = o.rt.reporter
    if rep.json_mode:
        rep.record(report.json())
    else:
        for line in lines(report):
            rep.output(line)
    return report.code


def _ago(seconds: float) -> str:
    """A time span as people read it: 42s, 12m, 5.2h, 3.1 days."""
    s = abs(seconds)
    text = f"{s:.0f}s" if s < 60 else f"{s / 60:.0f}m" if s < 3600 else f"{s / 3600:.1f}h" if s < 86400 \
        else f"{s / 86400:.1f} days"
    return text if seconds >= 0 else f"in {text}"


def _run(name: str, r: Run | None, now: float) -> str:
    if r is None:
        return f"last {name}: never run from this machine"
    d = r.details
    what = f"last {name}: {iso(r.ts)} ({_ago(now - r.ts)} ago), exit code {r.code}"
    if name == "check" and "unhealthy" in d:
        what += (f": {d.get('backups', '?')} backups, {d.get('objects', '?')} objects, {d['unhealthy']} unhealthy, "
                 f"{d.get('repaired', 0)} repaired" + (", leases renewed" if d.get("leases_renewed") else ""))
    elif name == "verify" and "problems" in d:
        what += f": backup {d.get('id') or '?'}, {d['problems']} problems, {d.get('files_read', '?')} files read back"
    elif "error" in d:
        what += f": {d['error']}"
    return what


def lines(r: StatusReport) -> list[str]:
    """The report as text: the verdict, the grid, a block per host and source, the last check and
    verify, copies, then the alerts, most urgent first."""
    now = r.now
    counts = {lvl: sum(1 for a in r.alerts if a.level is lvl) for lvl in Level}
    said = ", ".join(f"{n} {lvl.name.lower()}" for lvl, n in counts.items() if n and lvl is not Level.OK)
    out = [f"lafs-backup status: {r.level.name}" + (f" ({said})" if said else "")]
    g = r.grid
    if not g.reachable:
        out.append(f"grid: cannot be asked ({g.problem})")
    else:
        missing = f"; not connected: {', '.join(g.missing)}" if g.missing else ""
        free = f"; {size_text(g.free)} free" if g.free is not None else ""
        needed = f"{g.happy} needed (happy)" if g.happy is not None else "happy unknown (destination.happy)"
        out.append(f"grid: {len(g.connected)} of {len(g.servers)} storage servers connected, {needed}{missing}{free}")
    for s in r.sources:
        out.append(f"{s.host or '?'}  {s.source}  ({s.kept} kept)")
        took = f" in {s.last_seconds:.1f}s" if s.last_seconds is not None else ""
        added = f", {size_text(s.last_added)} added" if s.last_added is not None else ""
        result = "ok" if s.last_result == "ok" else f"{s.last_warnings} entries skipped"
        out.append(f"  last backup: {s.last_id} (generation {s.last_generation}), {iso(s.last_time)}, "
                   f"{_ago(s.age(now))} ago: {result}{added}{took}")
        if s.next_run is not None:
            out.append(f"  next backup: {iso(s.next_run)} ({_ago(now - s.next_run)})")
        margin = s.margin_days(now)
        renewed = f"last renewed {iso(s.renewed)}" if s.renewed is not None else "not all renewed by a check yet"
        if s.expires is None:
            out.append(f"  leases: {renewed}; they never run out (destination.lease_days: null)")
        else:
            assert margin is not None
            out.append(f"  leases: {renewed}; the first may run out {iso(s.expires)} (backup {s.expires_id}), "
                       f"{margin:.1f} days from now")
    if not r.sources:
        out.append("no finished backup recorded")
    if r.timers is not None and not any(s.next_run is not None for s in r.sources):
        out.append("next backup: no lafs-backup timer scheduled" if not r.timers else
                   "next runs: " + ", ".join(f"{t.unit} {iso(t.next) if t.next else 'not scheduled'}"
                                             for t in r.timers))
    out.append(_run("backup run", r.last_backup_run, now) if r.last_backup_run is not None and
               not r.last_backup_run.ok else "")
    out.append(_run("check", r.last_check, now))
    out.append(_run("verify", r.last_verify, now))
    c = r.copies
    out.append(f"copies: every backup made here is on {c.want} grid(s) or more (destination.copies: {c.want})"
               if not c.short else f"copies: {len(c.short)} backups on fewer than {c.want} grids "
                                   f"(destination.copies): {', '.join(i for i, _, _ in c.short[:10])}")
    for a in r.alerts:
        out.append(f"{a.level.name}: {a.topic}: {a.message}")
    return [line for line in out if line]
