"""The slow rotation in the custodian (custodian/keeping.py, over an in-memory gateway, by the custodian's
own clock): new backups join at once, each object is renewed once a round, a failed turn is taken up by
the next, an outage ends in a full pass, and a census's findings stand until a census says otherwise."""

from __future__ import annotations

import collections
import json

import pytest
import pytest_twisted
from inboxfake import InboxGateway
from test_custodian_faults import RULES, T0, World, targets

from lafs_backup.custodian.leases import Renewal, ServerAnswer
from lafs_backup.custodian.policy import DAY, Level
from lafs_backup.custodian.rotation import END, Rotation
from lafs_backup.custodian.targets import target_of, verify_cap_of
from lafs_backup.engine import inbox
from lafs_backup.errors import GridError

ROUND = RULES.renew_every


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    monkeypatch.setattr(inbox, "state_dir", lambda: str(tmp_path / "host-state"))
    return World(tmp_path, InboxGateway())


def slice_part(w: World, tick) -> list:
    """What a turn renewed for the rotation (after the objects of backups that joined)."""
    return w.renewed[-1][tick.joining:] if tick.objects else []


@pytest_twisted.ensureDeferred
async def test_new_backups_join_at_once_and_a_round_renews_each_object_once(world):
    await world.start()
    first = await world.backup(1, set(range(1, 61)))
    c = world.custodian
    await c.observe()
    t = await c.tick(world.renew)  # the first turn: a full pass, without a census
    assert t.full and t.objects >= 60 and c.state.rotation == Rotation(T0)
    assert c.state.last_pass is not None and not c.state.last_pass.census
    everything = set(world.renewed[0])
    b1 = c.state.backups[first]
    assert b1.joined == T0 and b1.span is not None

    # A day later, a second backup: its new objects and its manifest are renewed at once, with the slice.
    world.now[0] = T0 + DAY
    second = await world.backup(2, set(range(50, 81)))
    await c.observe()
    t = await c.tick(world.renew)
    new = targets(*range(61, 81)) | {target_of(verify_cap_of(c.state.backups[second].manifest))}
    assert t.joining == len(new) and set(world.renewed[-1][:t.joining]) == new
    assert abs(t.hi - 1 / 7) < 1e-9 and t.lo == 0.0 and not t.wrapped
    everything |= new
    counts = collections.Counter(slice_part(world, t))
    b2 = c.state.backups[second]
    assert b2.joined == T0 + DAY
    r = c.report()
    assert r.level is Level.OK
    status = dict(zip((b.key for b in r.kept), r.leases))
    assert status[second].renewed == T0 + DAY and status[second].expires == T0 + RULES.lease
    assert status[first].expires == T0 + RULES.lease

    # The rest of the round, one turn a day: nothing joins, every object is renewed once, in order.
    for day in range(2, 8):
        world.now[0] = T0 + day * DAY
        t = await c.tick(world.renew)
        assert t.joining == 0 and t.wrapped == (day == 7)
        part = slice_part(world, t)
        assert part == sorted(part, key=lambda x: x.storage_index)
        counts.update(part)
    assert set(counts) == everything and set(counts.values()) == {1}
    assert c.state.complete is not None and (c.state.complete.by, c.state.complete.started) == ("rotation", T0)
    assert c.state.rotation == Rotation(T0 + 7 * DAY)
    # Every backup's leases: renewed by the round, none older than its first turn.
    r = c.report()
    for b, x in zip(r.kept, r.leases):
        assert x.renewed is not None and T0 + DAY <= x.renewed <= T0 + 7 * DAY
        assert x.expires is not None and x.expires >= T0 + DAY + RULES.lease
    status = json.loads((world.tmp / "custodian" / "status.json").read_text())
    assert {k["backup"] for k in status["kept"]} == {first, second}
    assert all(k["expires"] >= T0 + DAY + RULES.lease for k in status["kept"])
    assert status["renewal"]["complete"]["by"] == "rotation" and status["renewal"]["rotation"]["done"] == 0.0
    # The state keeps a span per slice, not a time per object.
    assert len(c.state.spans) <= 8
    assert len(json.loads((world.tmp / "custodian" / "state.json").read_text())["spans"]) <= 8


async def first_pass(world, files: int):
    """The grid up, one backup of ``files`` files, and the custodian's first turn over it: the custodian."""
    await world.start()
    await world.backup(1, set(range(1, files + 1)))
    c = world.custodian
    await c.observe()
    await c.tick(world.renew)
    return c


@pytest_twisted.ensureDeferred
async def test_a_failed_turn_is_taken_up_by_the_next_and_a_restart_resumes(world):
    c = await first_pass(world, 100)
    world.now[0] = T0 + DAY
    before = (c.state.rotation, list(c.state.spans))

    async def down(targets, census=True):
        raise GridError(problem="no storage server connected")
    try:
        await c.tick(down)
    except GridError as e:
        c.failed(e.message)
    assert (c.state.rotation, c.state.spans) == before and c.state.failing_since == T0 + DAY
    # The custodian restarts a day later: the next turn renews both days' slices, from where it stood.
    world.now[0] = T0 + 2 * DAY
    c = world.reopen()
    t = await c.tick(world.renew)
    assert (t.lo, round(t.hi * 7, 9)) == (0.0, 2.0) and t.joining == 0
    assert c.state.failing_since is None
    due = [x for x in world.renewed[0] if x.storage_index < (2 * END // 7).to_bytes(16, "big")]
    assert sorted(slice_part(world, t), key=lambda x: x.storage_index) == sorted(due, key=lambda x: x.storage_index)


@pytest_twisted.ensureDeferred
async def test_after_an_outage_a_turn_renews_everything_at_once(world):
    c = await first_pass(world, 30)
    world.now[0] = T0 + 2 * DAY
    await c.tick(world.renew)
    world.now[0] = T0 + 25 * DAY  # the custodian was down: the oldest range was renewed 25 days ago
    assert any(a.topic == "renewal" and a.level is Level.CRITICAL for a in c.report().alerts)
    t = await c.tick(world.renew)
    assert t.full and t.objects == len(world.renewed[0])
    assert c.state.complete is not None and c.state.complete.by == "pass"
    r = c.report()
    assert not [a for a in r.alerts if a.topic == "renewal"]
    assert all(x.expires == T0 + 25 * DAY + RULES.lease for x in r.leases)


@pytest_twisted.ensureDeferred
async def test_what_a_census_finds_stands_until_a_census_finds_otherwise(world):
    c = await first_pass(world, 40)
    sick = {t.storage_index for t in list(targets(*range(1, 41)))[:6]}

    async def census(targets, census=True):
        world.renewed.append(targets)
        return [Renewal(t, (ServerAnswer("s1", frozenset({0, 1}) if t.storage_index in sick else frozenset({0, 1, 2})),),
                        census) for t in targets]
    found: set[str] = set()
    for day in range(1, 8):
        world.now[0] = T0 + day * DAY
        await c.tick(census)
        found |= {x.name for x in slice_part(world, c.state.last_tick) if x.storage_index in sick}
        assert set(c.state.short) == found  # (found as the sweep reaches them: k=2 of 3 shares, short)
    assert len(found) == 6
    assert any(a.topic == "shares" and a.level is Level.WARNING for a in c.report().alerts)
    # A full pass without a census knows nothing new: the findings stand.
    await c.renew(world.renew)
    assert set(c.state.short) == found
    # The next round's census finds them whole again.
    for day in range(8, 15):
        world.now[0] = T0 + day * DAY
        await c.tick(world.renew)
    assert c.state.short == [] and not any(a.topic == "shares" for a in c.report().alerts)


def test_the_state_keeps_the_rotation_compactly_and_reads_a_state_from_before_it(tmp_path):
    from lafs_backup.custodian.rotation import Span
    from lafs_backup.custodian.state import Complete, Pass, Seen, State, StateDir, Tick

    store = StateDir(str(tmp_path / "c"))
    b = Seen("0123456789abcdef", "20260101T000000.000000Z.g1", "URI:CHK:m1", 100, T0, joined=T0,
             span=["00" * 16, "ff" * 16])
    s = State({b.key: b}, rotation=Rotation(T0, END // 3), spans=[Span(END // 3, T0 + DAY), Span(END, T0)],
              last_tick=Tick(T0 + DAY, T0 + DAY + 1, 0.0, 1 / 3, 5, 1, 5, 15), complete=Complete(T0, T0 + 9, "pass"),
              short=["aaaaaaaaaaaaaaaaaaaaaaaaaa"], unresolved=[], unanswered=2)
    store.save(s)
    body = json.loads((tmp_path / "c" / "state.json").read_text())
    assert body["spans"] == [[format(END // 3, "x"), T0 + DAY], [format(END, "x"), T0]]
    again = store.load()
    assert again.rotation == s.rotation and again.spans == s.spans and again.last_tick == s.last_tick
    assert again.complete == s.complete and again.short == s.short and again.unanswered == 2
    assert again.backups[b.key].positions() == (0, END - 1)
    # A state written before the slow rotation: its last pass renewed everything kept then.
    old = dict(body)
    for k in ("rotation", "spans", "last_tick", "complete", "short", "lost", "unresolved", "unanswered"):
        del old[k]
    for x in old["backups"]:
        del x["joined"], x["span"]
    old["last_pass"] = vars(Pass(T0, T0 + 5, 1, 10, 10, 30, short=["bbbbbbbbbbbbbbbbbbbbbbbbbb"]))
    up = State.from_json(old)
    assert up.spans == [Span(END, T0)] and up.rotation is None and up.complete == Complete(T0, T0 + 5, "pass")
    assert up.backups[b.key].joined == T0 and up.short == ["bbbbbbbbbbbbbbbbbbbbbbbbbb"]
