"""The project semaphore, driven by a Clock: no waiter ever runs inside the stack of the one before."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.task import Clock

from lafs_backup.slots import Slots

#: Waiters queued behind one slot: far deeper than the stack can go if each runs inside the one before.
MANY = 5000


class Nesting:
    """How many waiters' bodies are on the stack at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.done: list[int] = []


async def quick(sem: Any, i: int, nest: Nesting) -> None:
    """A waiter whose work finishes at once (a small file read, a listing already at hand)."""
    await sem.acquire()
    nest.now += 1
    nest.most = max(nest.most, nest.now)
    try:
        nest.done.append(i)
    finally:
        sem.release()  # (a semaphore that wakes the next waiter here runs it one level deeper)
        nest.now -= 1


def queue_behind_one_holder(sem: Any, nest: Nesting) -> tuple[list[Deferred], list[Any]]:
    sem_held = sem.acquire()
    assert sem_held.called  # the holder: the others queue behind it
    tasks = [Deferred.fromCoroutine(quick(sem, i, nest)) for i in range(MANY)]
    failures: list[Any] = []
    for t in tasks:
        t.addErrback(failures.append)
    assert nest.done == []
    return tasks, failures


def test_twisteds_semaphore_wakes_each_waiter_inside_the_one_before_until_the_stack_runs_out():
    """The bug: DeferredSemaphore.release() runs the next waiter in the releaser's stack."""
    sem = DeferredSemaphore(1)
    nest = Nesting()
    tasks, failures = queue_behind_one_holder(sem, nest)
    sem.release()
    # Every waiter that ran, ran inside the one before, until the stack ran out (the depth it
    # reached depends on the stack the test started from, not on the waiters).
    assert 0 < len(nest.done) < MANY and nest.most == len(nest.done)
    # The rest never ran and never will: no slot is free and nothing is left to give one back.
    assert sem.tokens == 0 and len(sem.waiting) > 0
    assert sum(t.called for t in tasks) <= len(nest.done)


def test_slots_wake_each_waiter_in_a_turn_of_its_own_and_all_finish():
    clock = Clock()
    sem = Slots(1, clock)
    nest = Nesting()
    tasks, failures = queue_behind_one_holder(sem, nest)
    assert sem.waiting == MANY
    sem.release()
    assert nest.done == [] and len(clock.getDelayedCalls()) == 1  # handed on, not run here
    clock.advance(0)  # (a Clock runs calls made meanwhile in a loop of its own, as turns would)
    assert nest.done == list(range(MANY))
    assert nest.most == 1 and failures == [] and all(t.called for t in tasks)
    assert (sem.tokens, sem.waiting) == (1, 0)


def test_each_wake_is_a_separate_turn():
    clock = Clock()
    sem = Slots(1, clock)
    order: list[str] = []
    sem.acquire()
    for name in "abc":
        sem.acquire().addCallback(lambda _, n=name: (order.append(n), sem.release()))
    sem.release()
    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        assert len(clock.getDelayedCalls()) == 1
        clock.calls[0].func(*clock.calls[0].args)  # one turn: that call alone
        clock.calls.pop(0)
        assert order == expected
    assert clock.getDelayedCalls() == [] and sem.tokens == 1


def test_waiters_are_served_in_order_of_arrival_then_by_priority():
    clock = Clock()
    sem = Slots(2, clock)
    got: list[str] = []
    assert sem.acquire().called and sem.acquire().called  # free slots: at once
    for name, prio in [("a", 0), ("b", 0), ("urgent", -1), ("c", 0), ("late", 5)]:
        sem.acquire(prio).addCallback(lambda _, n=name: got.append(n))
    for _ in range(5):
        sem.release()
        clock.advance(0)
    assert got == ["urgent", "a", "b", "c", "late"]


def test_the_bound_is_never_exceeded():
    clock = Clock()
    sem = Slots(3, clock)
    held: list[Deferred] = []
    most = [0]

    async def work() -> None:
        await sem.acquire()
        d: Deferred = Deferred()
        held.append(d)
        most[0] = max(most[0], len(held))
        try:
            await d
        finally:
            held.remove(d)
            sem.release()

    tasks = [Deferred.fromCoroutine(work()) for _ in range(50)]
    while held:
        assert len(held) <= 3 and len(held) + sem.tokens == 3  # (after a turn: none handed on but not woken)
        held[0].callback(None)
        clock.advance(0)
    assert most[0] == 3 and all(t.called for t in tasks) and sem.tokens == 3


def test_a_cancelled_waiter_is_taken_out_and_holds_no_slot():
    clock = Clock()
    sem = Slots(1, clock)
    sem.acquire()
    first, second, third = sem.acquire(), sem.acquire(), sem.acquire()
    errors: list[Any] = []
    second.addErrback(errors.append)
    second.cancel()
    assert errors[0].check(CancelledError) and sem.waiting == 2
    sem.release()
    clock.advance(0)
    assert first.called and not third.called
    sem.release()
    clock.advance(0)
    assert third.called  # the cancelled one was skipped
    sem.release()
    assert (sem.tokens, sem.waiting) == (1, 0)


def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on():
    clock = Clock()
    sem = Slots(1, clock)
    sem.acquire()
    first, second = sem.acquire(), sem.acquire()
    first.addErrback(lambda f: f.trap(CancelledError))
    sem.release()  # handed to ``first``, woken in the next turn
    first.cancel()  # (Ctrl-C before that turn came)
    clock.advance(0)
    assert second.called and sem.tokens == 0
    sem.release()
    assert (sem.tokens, sem.waiting) == (1, 0)


def test_cancelling_a_task_waiting_for_a_slot_leaks_nothing():
    """Ctrl-C cancels the running command: its tasks waiting for a slot stop waiting."""
    clock = Clock()
    sem = Slots(2, clock)
    started: list[int] = []

    async def start(i: int) -> None:
        started.append(i)

    async def work(i: int) -> None:
        await sem.run(start, i)

    sem.acquire()
    sem.acquire()
    tasks = [Deferred.fromCoroutine(work(i)) for i in range(200)]
    for t in tasks:
        t.addErrback(lambda f: f.trap(CancelledError))
        t.cancel()
    assert sem.waiting == 0 and len(sem._queue) < 200  # (the cancelled ones were dropped)
    sem.release()
    sem.release()
    clock.advance(0)
    assert started == [] and (sem.tokens, sem.waiting) == (2, 0)


def test_run_gives_the_slot_back_when_the_function_raises():
    clock = Clock()
    sem = Slots(1, clock)

    async def boom(x: int) -> int:
        raise ValueError(x)

    failed = Deferred.fromCoroutine(sem.run(boom, 7))
    failures: list[Any] = []
    failed.addErrback(failures.append)
    assert failures[0].check(ValueError) and sem.tokens == 1

    async def nothing() -> None:
        pass

    async def later() -> str:
        await sem.run(nothing)
        return "ok"

    async def fails_later(d: Deferred) -> None:
        await d
        raise KeyError("late")

    gate: Deferred = Deferred()
    d1 = Deferred.fromCoroutine(sem.run(fails_later, gate))
    d1.addErrback(failures.append)
    d2 = Deferred.fromCoroutine(later())
    assert sem.tokens == 0 and sem.waiting == 1
    gate.callback(None)
    assert failures[1].check(KeyError)
    clock.advance(0)
    assert d2.result == "ok" and sem.tokens == 1


def test_run_returns_what_the_function_gives():
    sem = Slots(1, Clock())

    async def add(a: int, b: int = 0) -> int:
        return a + b

    assert Deferred.fromCoroutine(sem.run(add, 2, b=3)).result == 5
    assert Deferred.fromCoroutine(sem.run(lambda: Deferred.fromCoroutine(add(1)))).result == 1  # a Deferred
    assert sem.tokens == 1


def test_more_releases_than_acquires_and_no_slots_are_refused():
    sem = Slots(1, Clock())
    with pytest.raises(RuntimeError):
        sem.release()
    with pytest.raises(ValueError):
        Slots(0, Clock())
