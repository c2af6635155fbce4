"""The renewal engine's own rules (custodian/leases.py) with fake servers on a Clock: slots, pace, timeouts,
servers that are down or fail, each object asked once."""

from __future__ import annotations

import os

from foolscap.api import RemoteException
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from lafs_backup.custodian.leases import Renewer
from lafs_backup.custodian.secrets import LeaseSecret
from lafs_backup.custodian.targets import Kind, Target
from lafs_backup.grid.ratelimit import TokenBucket


class FakeStorage:
    """A storage server's Foolscap interface: answers at once, or holds each call (``hold``)."""

    def __init__(self, shares: dict[bytes, set[int]], hold: bool = False, fail: bool = False) -> None:
        self.shares = shares
        self.hold = hold
        self.fail = fail
        self.held: list[Deferred] = []
        self.seen: list[tuple[str, bytes, bytes]] = []

    def _answer(self, value):
        if self.fail:
            return _failed()
        if self.hold:
            d: Deferred = Deferred()
            self.held.append(d)
            d.addCallback(lambda _: value)
            return d
        return succeed(value)

    def allocate_buckets(self, si, renew, cancel, sharenums, size, canary):
        assert sharenums == set() and size == 0
        self.seen.append(("allocate_buckets", si, renew))
        return self._answer((set(self.shares.get(si, ())), {}))


class FakeServer:
    def __init__(self, name: str, storage: FakeStorage | None) -> None:
        self.name = name
        self.storage = storage

    def get_serverid(self):
        return self.name.encode()

    def get_storage_server(self):
        return self.storage

    def is_connected(self):
        return self.storage is not None

    def get_lease_seed(self):
        return (self.name * 20).encode()[:20]


def _failed() -> Deferred:
    """A remote failure as Foolscap delivers one: its text carries a path and a fURL."""
    f = Failure(ValueError("/path/to/share pb://secret@host/x"))
    f.parents = ["allmydata.storage.common.SomethingWrong", "builtins.Exception"]
    return fail(RemoteException(f))


def target(kind=Kind.IMMUTABLE) -> Target:
    return Target(os.urandom(16), kind, 2, 3)


def drive(clock: Clock, d: Deferred, step: float = 0.0, turns: int = 200) -> None:
    for _ in range(turns):
        if d.called:
            return
        clock.advance(step)


def test_each_object_once_at_every_server_with_its_own_secret():
    clock = Clock()
    ts = [target() for _ in range(5)]
    a = FakeStorage({t.storage_index: {0} for t in ts})
    b = FakeStorage({t.storage_index: {1, 2} for t in ts[:3]})
    servers = [FakeServer("a", a), FakeServer("b", b), FakeServer("c", None)]
    r = Renewer(clock, lambda: servers, LeaseSecret(os.urandom(32)), limit=2)
    d = Deferred.fromCoroutine(r.renew(ts + ts[:2]))
    drive(clock, d)
    done = d.result
    assert len(done) == 5 and r.requests == 10 == len(a.seen) + len(b.seen)
    by = {x.target.storage_index: x for x in done}
    for i, t in enumerate(ts):
        x = by[t.storage_index]
        assert x.unanswered == 1 and [a.problem for a in x.answers][2] == "not connected"
        assert x.shares == ({0, 1, 2} if i < 3 else {0}) and x.short() == (i >= 3)
    # Each server got its own renew secret for each object.
    assert len({s[2] for s in a.seen + b.seen}) == 10


def test_the_slots_bound_what_is_in_flight_and_a_silent_server_times_out():
    clock = Clock()
    ts = [target() for _ in range(6)]
    slow = FakeStorage({t.storage_index: {0} for t in ts}, hold=True)
    r = Renewer(clock, lambda: [FakeServer("s", slow)], LeaseSecret(os.urandom(32)), limit=3, timeout=10)
    d = Deferred.fromCoroutine(r.renew(ts))
    clock.advance(0)
    assert len(slow.held) == 3 and not d.called
    slow.held[0].callback(None)
    clock.advance(0)
    clock.advance(0)
    assert len(slow.held) == 4
    clock.advance(10)  # the other held ones time out, and their slots pass on
    drive(clock, d, step=10)
    problems = sorted(str(x.answers[0].problem) for x in d.result)
    assert problems.count("None") == 1 and problems.count("no answer within 10s") == 5


def test_requests_are_paced():
    clock = Clock()
    ts = [target() for _ in range(4)]
    s = FakeStorage({})
    r = Renewer(clock, lambda: [FakeServer("s", s)], LeaseSecret(os.urandom(32)), rate=TokenBucket(1.0, 1, clock))
    d = Deferred.fromCoroutine(r.renew(ts))
    clock.advance(0)
    assert len(s.seen) == 1
    clock.advance(1)
    clock.advance(0)
    assert len(s.seen) == 2
    drive(clock, d, step=1)
    assert len(s.seen) == 4 and all(x.holding == 0 for x in d.result)


def test_a_remote_failure_is_an_answer_that_names_its_type_only():
    clock = Clock()
    s = FakeStorage({}, fail=True)
    r = Renewer(clock, lambda: [FakeServer("s", s)], LeaseSecret(os.urandom(32)))
    d = Deferred.fromCoroutine(r.renew([target()]))
    drive(clock, d)
    [x] = d.result
    assert x.answers[0].problem == "refused: SomethingWrong" and x.unanswered == 1
    assert "pb://" not in repr(x) and "/path" not in repr(x)
