"""The custodian when something is wrong (custodian/service.py, commands/custodian.py, over an in-memory
gateway): a manifest whose chain does not add up is refused whole and stops nothing else; a manifest that
cannot be read now is read again later, never refused; its own directory is brought in line at each
reading; whatever the host links into the inbox under another name is not even listed; ``run`` keeps
serving through every failure, and says when renewal keeps failing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from inboxfake import InboxGateway, verify_cap

from lafs_backup.commands.custodian import _serve
from lafs_backup.custodian.keyfile import read_key
from lafs_backup.custodian.leases import Renewal, ServerAnswer
from lafs_backup.custodian.manifest import Manifest, is_folder, manifest_envelope
from lafs_backup.custodian.policy import DAY, Level, Rules
from lafs_backup.custodian.service import Custodian
from lafs_backup.custodian.state import Seen, StateDir
from lafs_backup.custodian.targets import target_of
from lafs_backup.engine import inbox
from lafs_backup.errors import GatewayError, UsageError
from lafs_backup.history import Backup
from lafs_backup.report import Reporter
from lafs_backup.repository import RepoKey

RULES = Rules(keep_within=90 * DAY, grace=30 * DAY, poll=600.0)
ROGUE = "ffffffffffffffff"  # (a writer's folder the compromised host made)
T0 = 1_800_000_000.0


class World:
    """A host with a custodian's inbox, publishing through ``gw``; the custodian reading it by ``now``."""

    def __init__(self, tmp_path, gw: InboxGateway) -> None:
        self.tmp = tmp_path
        self.gw = gw
        self.repo = RepoKey("URI:DIR2:repository-write-cap")
        self.now = [T0]
        self.renewed: list[list] = []

    async def start(self) -> None:
        path = str(self.tmp / "custodian.key")
        await inbox.create(self.gw, self.repo, path, "pb://tubid@tcp:127.0.0.1:1/introducer")
        self.key = read_key(path)
        self.host_inbox = inbox.load_inbox(self.repo.writecap)
        self.state = StateDir(str(self.tmp / "custodian"))
        self.custodian = self.reopen()

    def reopen(self) -> Custodian:
        return Custodian(self.gw, self.key, self.state, RULES, lambda: self.now[0])

    async def backup(self, gen: int, objects: set[int]) -> str:
        """A backup recorded and its manifest published, as the host does; its key at the custodian."""
        snap = f"snapshot-{gen}"
        self.gw.snapshots[snap] = [verify_cap(i) for i in sorted(objects)]
        b = Backup(f"w/{gen}", gen, snap, b"/src", "src", T0 + gen, host="host")
        assert await inbox.publish_manifest(Reporter(), self.gw, self.repo.writecap, b) is not None
        folder, = (n for n in self.gw.names(self.host_inbox.writecap) if is_folder(n) and n != ROGUE)
        return f"{folder}/{inbox.record_name(b.ts, gen)}"

    async def rogue(self, gen: int, m: Manifest) -> tuple[str, str]:
        """A manifest the compromised host links into a folder of its own: (its key, its cap)."""
        there = self.gw.names(self.host_inbox.writecap).get(ROGUE)
        folder = there[0] if there else await self.gw.mkdir_mutable()
        await self.gw.set_children(self.host_inbox.writecap, {ROGUE: (folder, None)})
        data = m.encode()
        cap = await self.gw.put_bytes(data)
        record = inbox.record_name(T0 + gen, gen)
        await self.gw.set_children(folder, {record: (cap, manifest_envelope(record, len(data)))})
        return f"{ROGUE}/{record}", cap

    async def renew(self, targets: list, census: bool = True) -> list[Renewal]:
        self.renewed.append(targets)
        return [Renewal(t, (ServerAnswer("s1", frozenset({0, 1, 2}) if census else None),), census)
                for t in targets]


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    monkeypatch.setattr(inbox, "state_dir", lambda: str(tmp_path / "host-state"))
    return World(tmp_path, InboxGateway())


def targets(*objects: int) -> set:
    return {target_of(verify_cap(i)) for i in objects}


@pytest_twisted.ensureDeferred
async def test_a_manifest_whose_chain_does_not_add_up_is_refused_whole_and_stops_nothing_else(world):
    await world.start()
    good = await world.backup(1, {1, 2, 3})
    lie, lie_cap = await world.rogue(2, Manifest(frozenset({verify_cap(99)}), objects=7))
    whole, whole_cap = await world.rogue(3, Manifest(frozenset({verify_cap(10), verify_cap(11)}), objects=2))
    delta, delta_cap = await world.rogue(4, Manifest(frozenset({verify_cap(12)}), previous=whole_cap, objects=9,
                                                     depth=1))
    c = world.custodian
    seen = await c.observe()
    assert sorted(seen.new) == sorted([good, whole]) and sorted(seen.refused) == sorted([lie, delta])
    # Nothing of a refused manifest is kept: no local copy, no cap in the state.
    assert c.dir.manifest(lie_cap) is None and c.dir.manifest(delta_cap) is None
    assert c.dir.manifest(whole_cap) is not None
    assert "objects where its manifest says 7" in c.state.backups[lie].refused
    assert c.state.backups[lie].manifest == "" and c.state.backups[delta].manifest == ""
    r = c.report()
    assert r.level is Level.CRITICAL and "refused" in {a.topic for a in r.alerts}
    # Every other backup is renewed.
    p = await c.renew(world.renew)
    assert p.backups == 2 and not p.unresolved
    assert targets(1, 2, 3, 10, 11) <= set(world.renewed[0]) and not targets(99, 12) & set(world.renewed[0])


@pytest_twisted.ensureDeferred
async def test_a_kept_chain_that_does_not_resolve_stops_only_its_own_backup(world):
    """A manifest kept before the chain was checked on arrival (or a local copy since damaged): the pass
    renews everything else, and says which backup it could not."""
    await world.start()
    good = await world.backup(1, {1, 2, 3})
    c = world.custodian
    await c.observe()
    lie = Manifest(frozenset({verify_cap(99)}), objects=7)
    cap = await world.gw.put_bytes(lie.encode())
    c.dir.keep_manifest(cap, lie)
    bad = Seen(ROGUE, "20270101T000000.000000Z.g9", cap, len(lie.encode()), world.now[0], copied=True)
    c.state.backups[bad.key] = bad
    p = await c.renew(world.renew)
    assert p.unresolved == [bad.key] and p.backups == 1
    assert targets(1, 2, 3) <= set(world.renewed[0]) and not targets(99) & set(world.renewed[0])
    r = c.report()
    alert, = (a for a in r.alerts if a.topic == "unresolved")
    assert alert.level is Level.CRITICAL and bad.key in alert.message and good not in alert.message
    assert world.reopen().state.last_pass.unresolved == [bad.key]  # (saved)


@pytest_twisted.ensureDeferred
async def test_a_manifest_that_cannot_be_read_now_is_read_again_never_refused(world):
    await world.start()
    key = await world.backup(1, {1, 2})
    folder, record = key.split("/")
    cap = world.gw.names(world.gw.names(world.host_inbox.writecap)[folder][0])[record][0]
    world.gw.broken.add(("download", cap))
    c = world.custodian
    for poll in range(4):
        seen = await c.observe()
        assert seen.unreadable == [key] and not seen.refused and not seen.new
        assert key not in c.state.backups and c.state.unreadable == {key: T0}
        # A passing fault is no alert; a manifest unreadable for more than two readings is a warning.
        topics = {(a.topic, a.level) for a in c.report().alerts}
        assert (("unreadable", Level.WARNING) in topics) == (poll >= 3)
        world.now[0] += RULES.poll
    assert world.reopen().state.unreadable == {key: T0}  # (saved, and nothing else of it)
    world.gw.broken.clear()
    seen = await c.observe()
    assert seen.new == [key] and not seen.unreadable and not c.state.unreadable
    assert c.state.backups[key].refused is None and c.dir.manifest(cap) is not None
    assert "unreadable" not in {a.topic for a in c.report().alerts}


@pytest_twisted.ensureDeferred
async def test_the_own_directory_is_brought_in_line_at_each_reading(world):
    await world.start()
    first = await world.backup(1, {1, 2})
    c = world.custodian
    world.gw.broken.add(("set_children", world.key.own))  # (its writer's folder cannot be made)
    seen = await c.observe()
    assert seen.new == [first] and seen.uncopied == [first] and not c.state.backups[first].copied
    assert world.reopen().state.backups[first].seen == T0  # (the first sighting is saved all the same)
    world.gw.broken.clear()
    world.now[0] += RULES.poll
    second = await world.backup(2, {2, 3})
    seen = await c.observe()
    assert seen.new == [second] and not seen.uncopied
    own_folder, = world.gw.names(world.key.own).values()
    copied = world.gw.names(own_folder[0])
    # Each is linked with the time the custodian first saw it.
    assert {n: meta["seen"] for n, (_, meta) in copied.items()} == {first.split("/")[1]: T0,
                                                                     second.split("/")[1]: T0 + RULES.poll}
    assert all(b.copied for b in c.state.backups.values())
    # A forgotten backup whose unlink failed leaves the own directory at a later reading.
    await inbox.request_forgets(world.gw, world.repo.writecap,
                                [Backup("w/1", 1, "snapshot-1", b"/src", "src", T0 + 1, host="host")])
    await c.observe()
    world.now[0] += RULES.grace + 1
    world.gw.broken.add(("unlink", own_folder[0]))
    seen = await c.observe()
    assert seen.honoured == [first] and seen.uncopied == [first]
    assert set(world.gw.names(own_folder[0])) == {first.split("/")[1], second.split("/")[1]}
    world.gw.broken.clear()
    await c.observe()
    assert set(world.gw.names(own_folder[0])) == {second.split("/")[1]}
    assert not c.state.backups[first].copied and c.state.backups[first].forgotten is not None


@pytest_twisted.ensureDeferred
async def test_only_the_forget_folder_and_writers_folders_are_listed(world):
    await world.start()
    junk = await world.gw.mkdir_mutable()
    await world.gw.set_children(world.host_inbox.writecap, {"not-a-writer": (junk, None)})
    key = await world.backup(1, {1})
    world.gw.listed.clear()
    seen = await world.custodian.observe()
    assert seen.new == [key]
    junk_ro = world.gw.readcaps[world.gw.dircaps[junk][0]]
    assert junk_ro not in world.gw.listed and junk not in world.gw.listed
    assert len(world.gw.listed) >= 3  # (the inbox, its forget folder, the writer's folder)


class Stop(Exception):
    """Ends the service loop of a test (not an error the service knows)."""


def opener(world: World, rounds: int):
    """What ``_serve`` uses of an opener: a reporter, and a sleep that drives the custodian's clock and
    stops after ``rounds`` rounds."""
    done = [0]

    async def sleep(seconds: float) -> None:
        world.now[0] += seconds
        done[0] += 1
        if done[0] >= rounds:
            raise Stop()
    rt = SimpleNamespace(reporter=Reporter(), sleep=sleep)
    return SimpleNamespace(rt=rt, config=SimpleNamespace(monitor=SimpleNamespace(notify_url=None)))


@pytest_twisted.ensureDeferred
async def test_run_keeps_serving_through_a_lying_manifest_and_any_failure(world, capsys):
    await world.start()
    await world.backup(1, {1, 2})
    c = world.custodian
    lie = Manifest(frozenset({verify_cap(99)}), objects=7)
    cap = await world.gw.put_bytes(lie.encode())
    c.dir.keep_manifest(cap, lie)  # (kept before chains were checked on arrival)
    bad = Seen(ROGUE, "20270101T000000.000000Z.g9", cap, len(lie.encode()), world.now[0], copied=True)
    c.state.backups[bad.key] = bad
    calls = []

    async def renew(targets, census=True):
        calls.append(len(targets))
        if len(calls) == 1:
            raise UsageError("a renewal that fails for a reason of its own")
        return await world.renew(targets, census)
    with pytest.raises(Stop):
        await _serve(opener(world, 2), c, SimpleNamespace(renew=renew))
    # (the first turn is a full pass: it failed, and the second turn made it)
    assert len(calls) == 2 and c.state.last_pass is not None and c.state.failing_since is None
    assert c.state.last_pass.unresolved == [bad.key] and targets(1, 2) <= set(world.renewed[0])
    err = capsys.readouterr().err
    assert "the renewal could not be made (a renewal that fails for a reason of its own)" in err
    assert "CRITICAL: unresolved: 1 kept backups" in err


@pytest_twisted.ensureDeferred
async def test_a_failing_renewal_is_said_as_such_remembered_and_alerted(world, capsys):
    await world.start()
    await world.backup(1, {1, 2})
    c = world.custodian

    async def renew(targets, census=True):
        raise GatewayError("POST", "(fake)", 502, "bad gateway")
    with pytest.raises(Stop):
        await _serve(opener(world, 4), c, SimpleNamespace(renew=renew))
    err = capsys.readouterr().err
    assert "the renewal could not be made" in err and "the inbox cannot be read" not in err
    assert c.state.failing_since == T0 and "502" in c.state.failure
    assert world.reopen().state.failing_since == T0  # (saved)
    # By the custodian's clock: no alert for the first failures, a warning once it keeps failing.
    alerts = {a.topic: a for a in c.report().alerts}
    assert alerts["failing"].level is Level.WARNING and "502" in alerts["failing"].message
    world.now[0] = T0 + RULES.poll
    assert "failing" not in {a.topic for a in c.report().alerts}
    assert "renewals have failed" in err
