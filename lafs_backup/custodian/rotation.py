"""The slow renewal, as values (pure): the custodian sweeps the storage indexes of everything it keeps in
order, one slice per reading of the inbox, so that every object is renewed once per round of
``custodian.renew_every``; and it remembers, per range of storage indexes rather than per object, when
each was last renewed.

Storage indexes are hashes, spread evenly over their 128 bits.  A round that began at ``started`` has
reached, at ``now``, the fraction ``(now - started) / period`` of that space: the slice due is every
object between where the round stood and there.  An object that joins (a new backup) takes the place
its storage index gives it, and no other object moves: it is renewed when the sweep reaches it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

#: The end of the space of storage indexes (16 bytes): positions are 0 <= p < END.
END = 1 << 128


def position(storage_index: bytes) -> int:
    """Where a storage index stands in the sweep."""
    return int.from_bytes(storage_index, "big")


@dataclass(frozen=True)
class Rotation:
    """Where the slow renewal stands: the round began at ``started`` (the custodian's clock) and has
    renewed every object whose position is below ``at``."""

    started: float
    at: int = 0


@dataclass(frozen=True)
class Slice:
    """One turn of the rotation: the objects with positions ``lo <= p < hi`` are due, that is
    ``indexes[first:stop]`` of the sorted list it was planned on; ``wrapped``: this slice ends the
    round; ``next``: where the rotation stands once the slice is renewed."""

    lo: int
    hi: int
    first: int
    stop: int
    wrapped: bool
    next: Rotation

    @property
    def size(self) -> int:
        return self.stop - self.first


def reached(rotation: Rotation, now: float, period: float) -> int:
    """The position the round should have reached at ``now``: a share of the space proportional to the
    time since it began, END once ``period`` has passed (never less than where it stands)."""
    share = (now - rotation.started) / period if period > 0 else 1.0
    if share >= 1.0:
        return END
    return max(rotation.at, int(END * max(0.0, share)))


def plan_slice(indexes: Sequence[bytes], rotation: Rotation, now: float, period: float) -> Slice:
    """The slice due at ``now``: the objects of ``indexes`` (storage indexes, sorted) between where the
    rotation stands and where it should be, and where it stands after them.  When the round's period
    has passed, the slice runs to the end and the next round begins at ``now``; after an outage that
    is the whole rest of the round at once.  A clock gone back gives an empty slice."""
    hi = reached(rotation, now, period)
    lo = rotation.at
    first = bisect.bisect_left(indexes, lo.to_bytes(16, "big")) if lo < END else len(indexes)
    stop = len(indexes) if hi >= END else bisect.bisect_left(indexes, hi.to_bytes(16, "big"))
    wrapped = hi >= END
    return Slice(lo, hi, first, stop, wrapped, Rotation(now, 0) if wrapped else Rotation(rotation.started, hi))


@dataclass(frozen=True)
class Span:
    """A range of positions renewed together: from where the span before it ends (0 for the first) up
    to ``end`` (excluded), last renewed at ``time`` (None: not since the custodian began)."""

    end: int
    time: float | None


def paint(spans: Sequence[Span], lo: int, hi: int, time: float) -> tuple[Span, ...]:
    """``spans`` with the range ``lo <= p < hi`` renewed at ``time``.  Neighbours renewed at the same time
    merge, so a full pass leaves one span and a round about one per slice."""
    if hi <= lo:
        return tuple(spans)
    pieces: list[tuple[int, int, float | None]] = []  # (begin, end, time), covering 0 to END
    begin = 0
    for s in spans:
        pieces.append((begin, s.end, s.time))
        begin = s.end
    if begin < END:
        pieces.append((begin, END, None))
    cut = [(b, min(e, lo), t) for b, e, t in pieces if b < lo] + [(lo, hi, time)] + \
          [(max(b, hi), e, t) for b, e, t in pieces if e > hi]
    out: list[Span] = []
    for _, e, t in cut:
        if out and out[-1].time == t:
            out[-1] = Span(e, t)
        else:
            out.append(Span(e, t))
    return tuple(out)


def time_at(spans: Sequence[Span], pos: int) -> float | None:
    """When the object at ``pos`` was last renewed by a slice or a pass (None: never)."""
    i = bisect.bisect_right([s.end for s in spans], pos)
    return spans[i].time if i < len(spans) else None


def oldest(spans: Sequence[Span], lo: int, hi: int) -> float | None:
    """The oldest renewal among the spans that hold a position ``lo <= p <= hi`` (None: one of them was
    never renewed, or there are none)."""
    times: list[float | None] = []
    begin = 0
    for s in spans:
        if s.end > lo and begin <= hi:
            times.append(s.time)
        begin = s.end
    if not times or any(t is None for t in times) or begin <= hi:
        return None
    return min(t for t in times if t is not None)
