"""The slow rotation's decisions (custodian/rotation.py): which slice is due when, where the rotation
stands after it, and when each range of storage indexes was last renewed (pure)."""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from lafs_backup.custodian.rotation import (END, Rotation, Span, oldest, paint, plan_slice, position, reached,
                                            time_at)

DAY = 86400.0
PERIOD = 7 * DAY
T0 = 1_800_000_000.0

indexes_st = st.lists(st.binary(min_size=16, max_size=16), max_size=60, unique=True).map(sorted)
#: Times of the turns after the round began: increasing steps, some long (an outage), some nil.
steps_st = st.lists(st.floats(min_value=0.0, max_value=3 * DAY), min_size=1, max_size=40)


def run_round(indexes: list[bytes], steps: list[float], rotation: Rotation) -> tuple[list[list[bytes]], float | None]:
    """Turn the rotation at each step's time until its round ends: the objects of each slice, and when
    the round ended (None: it did not within the steps)."""
    now = rotation.started
    slices = []
    for step in steps:
        now += step
        s = plan_slice(indexes, rotation, now, PERIOD)
        slices.append(list(indexes[s.first:s.stop]))
        assert all(s.lo <= position(i) < s.hi for i in slices[-1])
        rotation = s.next
        if s.wrapped:
            assert rotation == Rotation(now, 0)
            return slices, now
    return slices, None


@given(indexes_st, steps_st)
def test_a_round_renews_every_object_once_in_order_and_ends_when_its_period_has_passed(indexes, steps):
    slices, ended = run_round(indexes, steps + [PERIOD], Rotation(T0))
    flat = [i for s in slices for i in s]
    assert flat == indexes  # each object once, in storage-index order
    assert ended is not None and ended - T0 >= PERIOD
    times = [T0 + sum(steps[:k + 1]) for k in range(len(steps))]
    # The round ends at the first turn at or past its period, not before.
    assert all(t - T0 < PERIOD for t in times[:len(slices) - 1])


@given(indexes_st, steps_st)
def test_what_is_due_follows_the_clock(indexes, steps):
    """An object is renewed at the first turn by which the round's share of the period reaches it."""
    rotation = Rotation(T0)
    now = T0
    for step in steps:
        now += step
        s = plan_slice(indexes, rotation, now, PERIOD)
        share = min(1.0, (now - T0) / PERIOD)
        for i in indexes[s.first:s.stop]:
            assert position(i) / END <= share + 1e-12
        for i in indexes[s.stop:]:
            assert position(i) / END >= share - 1e-12
        rotation = s.next
        if s.wrapped:
            break


@given(indexes_st, st.floats(min_value=0.0, max_value=PERIOD), st.floats(min_value=0.0, max_value=PERIOD))
def test_a_clock_gone_back_renews_nothing_and_moves_nothing(indexes, first, back):
    s = plan_slice(indexes, Rotation(T0), T0 + first, PERIOD)
    if s.wrapped:
        return
    again = plan_slice(indexes, s.next, T0 + first - back, PERIOD)
    assert again.size == 0 and again.next == s.next and not again.wrapped


@given(indexes_st, st.lists(st.binary(min_size=16, max_size=16), max_size=10, unique=True),
       st.floats(min_value=0.0, max_value=PERIOD * 0.99))
def test_objects_that_join_mid_round_take_their_place_and_move_no_other(indexes, joining, at):
    """The objects of a new backup are renewed in this round when the sweep has not passed them yet, and
    the others are renewed exactly when they would have been."""
    s1 = plan_slice(indexes, Rotation(T0), T0 + at, PERIOD)
    both = sorted(set(indexes) | set(joining))
    rest, ended = run_round(both, [DAY] * 8, s1.next)
    renewed_after = [i for s in rest for i in s]
    assert renewed_after == [i for i in both if position(i) >= s1.hi]
    alone, _ = run_round(indexes, [DAY] * 8, s1.next)
    assert [[i for i in s if i in set(indexes)] for s in rest] == alone


def test_slices_are_sized_by_time_over_evenly_spread_storage_indexes():
    indexes = sorted(os.urandom(16) for _ in range(7000))
    slices, ended = run_round(indexes, [DAY / 24] * (7 * 24), Rotation(T0))
    assert ended == T0 + PERIOD and len(slices) == 7 * 24
    assert sum(map(len, slices)) == 7000
    assert max(map(len, slices)) < 3 * 7000 / (7 * 24)  # about 42 each, never a pile
    # An outage: the rest of the round at the first turn past its period.
    s = plan_slice(indexes, Rotation(T0, reached(Rotation(T0), T0 + DAY, PERIOD)), T0 + 30 * DAY, PERIOD)
    assert s.wrapped and s.stop == len(indexes) and s.next == Rotation(T0 + 30 * DAY, 0)


# -- when each range was last renewed -------------------------------------------------------------------

positions_st = st.integers(min_value=0, max_value=END - 1)
paint_st = st.lists(st.tuples(positions_st, positions_st), max_size=12)


@settings(max_examples=200)
@given(paint_st, st.lists(positions_st, min_size=1, max_size=20))
def test_spans_say_when_each_position_was_last_painted(paints, probes):
    spans: tuple[Span, ...] = ()
    done: list[tuple[int, int, float]] = []
    for n, (a, b) in enumerate(paints):
        lo, hi = min(a, b), max(a, b) + 1
        spans = paint(spans, lo, hi, T0 + n)
        done.append((lo, hi, T0 + n))
    if not paints:
        return
    assert spans[-1].end == END and all(x.end < y.end for x, y in zip(spans, spans[1:]))
    assert all(x.time != y.time for x, y in zip(spans, spans[1:]))  # (neighbours merged)
    assert len(spans) <= 2 * len(paints) + 1

    def model(p: int) -> float | None:
        last = [t for lo, hi, t in done if lo <= p < hi]
        return last[-1] if last else None
    for p in probes + [lo for lo, _, _ in done] + [hi - 1 for _, hi, _ in done]:
        assert time_at(spans, p) == model(p)
    lo, hi = sorted(probes[:2]) if len(probes) > 1 else (probes[0], probes[0])
    times = [model(p) for p in {lo, hi} | {x.end for x in spans if lo <= x.end <= hi}]
    want = None if any(t is None for t in times) else min(t for t in times if t is not None)
    assert oldest(spans, lo, hi) == want


def test_a_round_leaves_one_span_per_slice_and_a_full_pass_one():
    spans: tuple[Span, ...] = ()
    spans = paint(spans, 0, END, T0)
    assert spans == (Span(END, T0),)
    at = 0
    for k in range(1, 8):
        hi = END if k == 7 else k * END // 7
        spans = paint(spans, at, hi, T0 + k * DAY)
        at = hi
        assert len(spans) == (k + 1 if k < 7 else 7)
        assert oldest(spans, 0, END - 1) == (T0 if k < 7 else T0 + DAY)
    assert time_at(spans, 0) == T0 + DAY and time_at(spans, END - 1) == T0 + 7 * DAY
    assert paint(spans, 0, END, T0 + 8 * DAY) == (Span(END, T0 + 8 * DAY),)
