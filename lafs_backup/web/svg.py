"""Charts drawn on the server as SVG (pure): backup sizes over time, and lease margins.

No script and no style attribute: the page's stylesheet colours them (the
dashboard's content security policy allows no inline style).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..report import size_text
from .html import esc

DAY = 86400.0


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


@dataclass(frozen=True)
class Point:
    """One backup on the size chart: its time, the bytes it added, and a label for its tooltip."""

    ts: float
    size: int
    label: str


def sizes_chart(points: list[Point], width: int = 760, height: int = 220) -> str:
    """Bars of the bytes each backup added, placed by time ("" when there is nothing to draw)."""
    if not points:
        return ""
    left, right, top, bottom = 70, 10, 12, 28
    w, h = width - left - right, height - top - bottom
    t0, t1 = min(p.ts for p in points), max(p.ts for p in points)
    span = max(t1 - t0, 1.0)
    most = max(max(p.size for p in points), 1)
    bar = max(2.0, min(24.0, w / max(len(points), 1) * 0.7))
    out = [f'<svg class="chart" role="img" aria-label="bytes added by each backup, over time" '
           f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<line class="axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>',
           f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + h}"/>',
           f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{esc(size_text(most))}</text>',
           f'<text x="{left - 6}" y="{top + h}" text-anchor="end">0</text>',
           f'<text x="{left}" y="{height - 8}">{esc(_day(t0))}</text>',
           f'<text x="{left + w}" y="{height - 8}" text-anchor="end">{esc(_day(t1))}</text>']
    for p in sorted(points, key=lambda p: p.ts):
        x = left + (p.ts - t0) / span * (w - bar) if len(points) > 1 else left + (w - bar) / 2
        bh = max(1.0, p.size / most * h)
        out.append(f'<rect class="bar" x="{x:.1f}" y="{top + h - bh:.1f}" width="{bar:.1f}" height="{bh:.1f}">'
                   f"<title>{esc(p.label)}: {esc(size_text(p.size))}</title></rect>")
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Lease:
    """One kept backup on the lease chart: when its earliest lease ends if nothing renews it."""

    label: str
    ends: float


def margin_class(days: float, warn: float = 14, critical: float = 7) -> str:
    """The colour of a lease margin: ``late`` (within ``critical`` days, or past), ``soon``, ``fine``."""
    return "late" if days < critical else "soon" if days < warn else "fine"


def lease_chart(leases: list[Lease], now: float, width: int = 760, row: int = 18) -> str:
    """A bar per backup from now to the end of its earliest lease, coloured by its margin, on an
    axis of days from now ("" when there is nothing to draw)."""
    if not leases:
        return ""
    left, right, top, bottom = 150, 20, 20, 24
    w = width - left - right
    days = [(lz.ends - now) / DAY for lz in leases]
    lo, hi = min(0.0, min(days)), max(31.0, max(days))
    height = top + bottom + row * len(leases)

    def x(d: float) -> float:
        return left + (d - lo) / (hi - lo) * w

    out = [f'<svg class="chart" role="img" aria-label="days until each kept backup loses a lease" '
           f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for mark in (0, 7, 14, 31):
        if lo <= mark <= hi:
            out.append(f'<line class="{"now" if mark == 0 else "axis"}" x1="{x(mark):.1f}" y1="{top - 4}" '
                       f'x2="{x(mark):.1f}" y2="{height - bottom}"/>'
                       f'<text x="{x(mark):.1f}" y="{top - 7}" text-anchor="middle">'
                       f'{"now" if mark == 0 else f"+{mark} d"}</text>')
    for i, (lz, d) in enumerate(zip(leases, days)):
        y = top + i * row
        a, b = sorted((x(0), x(d)))
        out.append(f'<text x="{left - 6}" y="{y + row - 5}" text-anchor="end">{esc(lz.label)}</text>'
                   f'<rect class="{margin_class(d)}" x="{a:.1f}" y="{y + 3}" width="{max(b - a, 1.0):.1f}" '
                   f'height="{row - 6}"><title>{esc(lz.label)}: {d:.1f} days ({esc(_day(lz.ends))})</title></rect>')
    out.append(f'<text x="{left}" y="{height - 6}">{esc(_day(now + lo * DAY))}</text>'
               f'<text x="{left + w}" y="{height - 6}" text-anchor="end">{esc(_day(now + hi * DAY))}</text></svg>')
    return "".join(out)
