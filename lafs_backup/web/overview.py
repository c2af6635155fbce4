"""The dashboard's overview pages: status, the lease timeline, and a diff of two backups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..history import Backup, Run, iso
from ..names import parsed
from ..read.diff import Change, SnapshotDiff
from ..read.standing import Lease, StatusReport, lease_timeline
from ..report import plural, size_text
from .html import Table, backup_url, esc, link, page
from .svg import DAY, Point, lease_chart, margin_class, sizes_chart
from .svg import Lease as Bar

if TYPE_CHECKING:
    from .pages import Dashboard

#: Differences a diff page lists, at most.
DIFF_ROWS = 2000


def _label(b: Backup) -> str:
    return f"{b.short_id} gen {b.generation}"


# -- status ----------------------------------------------------------------------------------------
async def status(d: Dashboard) -> bytes:
    """The status page: ``status``'s report (its alerts, each host and source, the grid, the last
    check and verify, copies), and the charts of sizes and lease margins."""
    report = await d.status()
    everything = await d.backups()
    return page("Status", render_report(report) + _sizes(everything) + _margins(report.leases, report.now))


def _run(r: Run | None) -> str:
    if r is None:
        return "never (as far as this machine knows)"
    took = f", {r.seconds:.0f} s" if r.seconds is not None else ""
    found = ", ".join(f"{k} {v}" for k, v in r.details.items() if k != "cap" and isinstance(v, (int, float, str)))
    return esc(f"{iso(r.ts)}: exit code {r.code}{took}" + (f" ({found})" if found else ""))


def render_report(report: StatusReport) -> str:
    """A status report as a page body: its state, its alerts (most urgent first), a row per host and
    source, the grid, copies, the last check and verify, and the timers."""
    now = report.now
    state = report.level.name.lower()
    out = [f'<h1>Status <span class="badge {state}">{state}</span></h1>'
           f'<p class="muted">as of {esc(iso(now))}</p>']
    if report.alerts:
        out.append('<ul class="warnings">' + "".join(
            f'<li class="{esc(a.level.name.lower())}"><b>{esc(a.level.name.lower())}</b> '
            f"({esc(a.topic)}): {esc(a.message)}</li>" for a in report.alerts) + "</ul>")
    rows = Table(["host", "source", "last backup", "age", "result", "added", "took", "kept", "leases renewed",
                  "earliest lease end", "margin", "next run"])
    for r in report.sources:
        margin = r.margin_days(now)
        level = "ok" if margin is None else {"late": "critical", "soon": "warning", "fine": "ok"}[margin_class(margin)]
        rows.rows.append([
            esc(r.host or "-"), esc(r.source),
            link(backup_url(r.last_id, "tree"), f"<code>{esc(r.last_id)}</code>") + f" {esc(iso(r.last_time))}",
            esc(_age(r.age(now))), esc(r.last_result + (f" ({r.last_warnings})" if r.last_warnings else "")),
            ("n", _size(r.last_added)), ("n", esc(f"{r.last_seconds:.0f} s") if r.last_seconds is not None else "-"),
            ("n", esc(r.kept)), esc(iso(r.renewed) if r.renewed is not None else "not all"),
            esc(iso(r.expires) if r.expires is not None else "never"),
            ("n " + level, esc(f"{margin:.1f} days") if margin is not None else "-"),
            esc(iso(r.next_run) if r.next_run is not None else "-")])
    out.append("<h2>Backups by host and source</h2>" + (rows.render() if report.sources else
                                                        "<p>No finished backups are recorded.</p>"))
    g = report.grid
    grid = Table(["", ""])
    if not g.reachable:
        grid.rows.append(["gateway", f'<span class="unknown">{esc(g.problem)}</span>'])
    else:
        short = g.happy is not None and len(g.connected) < g.happy
        cls = "critical" if short else "warning" if g.missing else "ok"
        need = f" (uploads need {g.happy})" if g.happy is not None else " (the servers uploads need: not known)"
        grid.rows.append(["servers connected",
                          f'<span class="{cls}">{len(g.connected)} of {len(g.servers)}</span>{esc(need)}'])
        if g.missing:
            grid.rows.append(["not connected", esc(", ".join(g.missing))])
        grid.rows.append(["free space", _size(g.free) if g.free is not None else "not reported"])
    grid.rows.append(["copies", esc(f"{len(report.copies.short)} backups on fewer than {report.copies.want} grids"
                                    if report.copies.short else f"every backup on {report.copies.want} grid(s) "
                                    "or more (destination.copies)")])
    grid.rows.append(["last backup run", _run(report.last_backup_run)])
    grid.rows.append(["last check", _run(report.last_check)])
    grid.rows.append(["last verify", _run(report.last_verify)])
    if report.timers is not None:
        for t in report.timers:
            grid.rows.append([esc(t.unit), esc(f"next {iso(t.next)}" if t.next else "not scheduled")])
    out.append("<h2>Grid and upkeep</h2>" + grid.render())
    return "".join(out)


def _sizes(backups: list[Backup]) -> str:
    points = [Point(b.ts, int(b.summary["bytes_uploaded"]), f"{b.short_id} {iso(b.ts)}") for b in backups
              if isinstance(b.summary.get("bytes_uploaded"), int)]
    return f"<h2>Bytes added by each backup</h2>{sizes_chart(points)}" if points else ""


def _margins(kept: tuple[Lease, ...] | list[Lease], now: float, most: int = 60) -> str:
    timeline = sorted((x for x in kept if x.expires is not None), key=lambda x: (x.expires or 0.0, x.made))
    bars = [Bar(f"{x.id} gen {x.generation}", x.expires) for x in timeline[:most] if x.expires is not None]
    return f"<h2>Lease margin (soonest {len(bars)})</h2>{lease_chart(bars, now)}" if bars else ""


# -- leases ----------------------------------------------------------------------------------------
async def leases(d: Dashboard) -> bytes:
    everything = await d.backups()
    now = d.clock.seconds()
    timeline = lease_timeline(everything, d.lease_days)
    table = Table(["backup", "made", "host", "source", "leases renewed", "earliest lease end", "margin"])
    for x in timeline:
        margin = x.margin_days(now)
        table.rows.append([link(backup_url(x.id, "tree"), f"<code>{esc(x.id)}</code>"),
                           esc(iso(x.made)), esc(x.host or "-"), esc(x.source),
                           esc(iso(x.renewed) if x.renewed else "never"),
                           esc(iso(x.expires) if x.expires is not None else "never (no lease expiry)"),
                           ("n " + x.level(now).name.lower(), esc(f"{margin:.1f} days") if margin is not None else "-")])
    chart = _margins(timeline, now)
    shown = sum(1 for x in timeline if x.expires is not None)
    body = ("<h1>Lease timeline</h1><p>When each kept backup's first lease runs out if nothing renews it "
            "(<code>lafs-backup check</code> renews them all).</p>"
            + (chart or "<p>No lease of a kept backup runs out.</p>")
            + (f'<p class="muted">the {shown - 60} later ones are in the table</p>' if shown > 60 else "")
            + table.render())
    return page("Leases", body)


# -- diff ------------------------------------------------------------------------------------------
async def diff(d: Dashboard, a: str | None, b: str | None) -> bytes:
    everything = await d.backups()
    choices = [(x.short_id, f"{x.short_id}  gen {x.generation}  {iso(x.ts)}  {x.source_text}")
               for x in reversed(everything)]

    def pick(name: str, chosen: str | None) -> str:
        opts = "".join(f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(t)}</option>'
                       for v, t in choices)
        return f'<label>{esc(name)}<select name="{esc(name)}">{opts}</select></label>'

    form = (f'<form class="filters" method="get" action="/diff">{pick("a", a)}{pick("b", b)}'
            '<button type="submit">Compare</button></form>')
    if not a or not b:
        return page("Diff", f"<h1>Diff</h1><p>What changed between two backups.</p>{form}")
    ba, bb = await d.backup(a), await d.backup(b)
    found: list[Change] = []
    reader = d.fresh_reader()
    try:
        await reader.load_differences(ba.cap, bb.cap)
        await SnapshotDiff(reader, found.append).run(ba.cap, bb.cap)
    finally:
        reader.close()
    table = Table(["", "path", "changed"])
    for c in found[:DIFF_ROWS]:
        where = bb if c.what != "-" else ba
        cell = esc(c.path)
        if c.path != "/":
            try:
                cell = link(backup_url(where.short_id, "file", parsed(c.path.lstrip("/"))), esc(c.path))
            except Exception:  # (a path the names module cannot read back: shown, not linked)
                pass
        table.rows.append([f"<code>{esc(c.what)}</code>", cell, esc(", ".join(c.aspects))])
    more = f"<p>… and {len(found) - DIFF_ROWS} more</p>" if len(found) > DIFF_ROWS else ""
    counts = {w: sum(1 for c in found if c.what == w) for w in "+-M"}
    summary = (f"{plural(len(found), 'difference')} between <code>{esc(ba.short_id)}</code> and "
               f"<code>{esc(bb.short_id)}</code>: {counts['+']} added, {counts['-']} removed, {counts['M']} changed")
    return page("Diff", f"<h1>Diff</h1>{form}<p>{summary}</p>{table.render()}{more}")


def _size(n: object) -> str:
    return esc(size_text(n)) if isinstance(n, int) else "-"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"
