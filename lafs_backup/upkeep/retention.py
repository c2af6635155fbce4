"""Retention policies with restic's semantics: which backups to keep, and why (pure)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import UsageError


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float | None = None  # seconds

    @property
    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within is not None)


@dataclass
class Decision:
    keep: dict[Any, list[str]] = field(default_factory=dict)  # backup id -> reasons
    forget: list[Any] = field(default_factory=list)
    future: list[Any] = field(default_factory=list)


_UNITS = {"y": 365 * 86400, "m": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600}


def parse_duration(text: str) -> float:
    """restic's ``--keep-within`` form: ``1y2m3d4h`` (also ``w``); returns seconds."""
    parts = re.fullmatch(r"(?:\d+[ymwdh])+", text.strip())
    if not parts:
        raise UsageError(f"--keep-within takes a duration like 30d or 1y6m, not {text!r}")
    return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([ymwdh])", text)))


def _buckets() -> list[tuple[str, Callable[[time.struct_time], tuple[int, ...]]]]:
    return [
        ("hourly", lambda t: (t.tm_year, t.tm_yday, t.tm_hour)),
        ("daily", lambda t: (t.tm_year, t.tm_yday)),
        ("weekly", lambda t: tuple(int(x) for x in time.strftime("%G %V", t).split())),
        ("monthly", lambda t: (t.tm_year, t.tm_mon)),
        ("yearly", lambda t: (t.tm_year,)),
    ]


def decide(backups: Sequence[tuple[Any, float]], policy: Policy, now: float) -> Decision:
    """Apply ``policy`` to ``(id, timestamp)`` pairs.

    As in restic: walking from the newest, ``last`` keeps the n newest; each
    of hourly/daily/weekly/monthly/yearly keeps the newest backup of each of
    the n most recent periods that have one; ``within`` keeps everything
    within that long of the newest backup.  Backups stamped in the future
    are kept, listed in ``future``, and never used to expire others (the
    newest is taken among the others).
    """
    d = Decision()
    future = [(i, ts) for i, ts in backups if ts > now]
    present = sorted(((i, ts) for i, ts in backups if ts <= now), key=lambda x: (x[1], x[0]), reverse=True)
    for i, _ in future:
        d.keep[i] = ["stamped in the future"]
        d.future.append(i)
    for n, (i, _) in enumerate(present):
        if n < policy.last:
            d.keep.setdefault(i, []).append("last")
    for name, key in _buckets():
        want = getattr(policy, name)
        seen: set[tuple[int, ...]] = set()
        for i, ts in present:
            if len(seen) >= want:
                break
            k = key(time.gmtime(ts))
            if k not in seen:
                seen.add(k)
                d.keep.setdefault(i, []).append(name)
    if policy.within is not None and present:
        newest = present[0][1]
        for i, ts in present:
            if newest - ts <= policy.within:
                d.keep.setdefault(i, []).append("within")
    d.forget = [i for i, _ in present if i not in d.keep]
    return d
