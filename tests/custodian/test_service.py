"""The custodian end to end on the session's real grid: the host publishes lease manifests into the inbox,
the custodian copies them, renews the lease of every share of every object of both backups (read back from
the share files), notices manifests gone from the inbox and a forget request, and honours the forget only
after its grace period (its own clock, driven here); its state holds no cap that reads a backup.  The slow
rotation renews every object once a round, a slice a turn, and resumes where it stood after a restart."""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest_twisted
from allmydata.storage.common import si_a2b
from conftest import make_tree, run_cli
from test_leases import leases, our_renew_secret, share_files, tubid

from lafs_backup import config as cfg
from lafs_backup.custodian.keyfile import read_key
from lafs_backup.custodian.manifest import Manifest
from lafs_backup.custodian.policy import DAY, Level, Rules
from lafs_backup.custodian.renewal import Renewal
from lafs_backup.custodian.service import Custodian
from lafs_backup.custodian.state import StateDir
from lafs_backup.grid.gateway import Gateway, make_http_client
from lafs_backup.grid.local import GridSpec, LocalGrid

RULES = Rules(keep_within=90 * DAY, grace=30 * DAY)


def web(url: str, cap: str, method: str = "GET", query: str = "t=json") -> bytes:
    req = urllib.request.Request(f"{url}uri/{urllib.parse.quote(cap)}?{query}", method=method)
    with urllib.request.urlopen(req) as r:
        return r.read()


def children(url: str, cap: str) -> dict:
    return json.loads(web(url, cap))[1]["children"]


def storage_indexes(url: str, snap: str) -> set[str]:
    """Every object of a snapshot with shares, as the gateway's own manifest of it says."""
    lines = web(url, snap, "POST", "t=stream-manifest").decode().splitlines()
    return {j["storage-index"] for j in map(json.loads, lines) if j.get("storage-index")}


def caps_in(directory: Path) -> set[str]:
    found: set[str] = set()
    for p in directory.rglob("*"):
        if p.is_file():
            found |= set(re.findall(r"URI:[A-Za-z0-9-]+:[A-Za-z0-9:]+", p.read_text(errors="replace")))
    return found


@pytest_twisted.ensureDeferred
async def test_the_custodian_keeps_both_backups_and_forgets_only_after_the_grace_period(grid, lb, home, tmp_path):
    from twisted.internet import reactor

    # The host: a repository, the custodian's inbox and key, two backups.
    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    keyfile = tmp_path / "custodian.key"
    lb("init", check=True)
    r = lb("custodian", "init", "--key", str(keyfile), "--introducer", furl, check=True)
    assert str(keyfile) in r.err and "URI:" not in r.out + r.err
    assert keyfile.stat().st_mode & 0o777 == 0o600
    src = make_tree(tmp_path / "src", small=30, medium=2, large=1)
    lb("backup", str(src), check=True)
    (src / "new.txt").write_text("a change between the two backups " * 100)
    lb("backup", str(src), check=True)
    backups = [json.loads(line) for line in lb("list", "--json", check=True).out.splitlines()]
    assert len(backups) == 2
    inbox_file, = (home / "state" / "lafs-backup" / "custodian").glob("inbox.*.json")
    host_inbox = json.loads(inbox_file.read_text())["inbox"]
    key = read_key(str(keyfile))
    assert key.own not in inbox_file.read_text()  # the host keeps no cap of the custodian's directory

    # The custodian: its own clock, its own state, the inbox's read cap.
    now = [time.time()]
    t0 = now[0]
    conf = cfg.load([], [])
    gw = Gateway(grid.url, make_http_client(reactor, 4), reactor, conf.operation.retry, 2)
    state = StateDir(str(tmp_path / "custodian"))
    c = Custodian(gw, key, state, RULES, lambda: now[0])
    renewal = Renewal(reactor, key.lease_secret(str(keyfile)), str(tmp_path / "custodian-grid"), key.furl)
    try:
        seen = await c.observe()
        assert len(seen.new) == 2 and not (seen.vanished or seen.forgets or seen.refused)
        first, second = (c.state.backups[k] for k in seen.new)
        assert Manifest.decode(web(grid.url, first.manifest, query="")).whole
        delta = Manifest.decode(web(grid.url, second.manifest, query=""))
        assert delta.previous == first.manifest and len(delta.added) < delta.objects
        p = await c.renew(renewal.renew, census=True)
    finally:
        await renewal.stop()
    assert p.backups == 2 and not p.lost and not p.short and p.unanswered == 0 and p.renewed == p.objects
    assert p.census and p.requests == 3 * p.objects

    # Every share of every object of both backups carries the custodian's lease.
    secret_file = tmp_path / "secret"
    secret_file.write_text(key.secret)
    objects = storage_indexes(grid.url, backups[0]["cap"]) | storage_indexes(grid.url, backups[1]["cap"])
    assert len(objects) > 5
    for name in objects:
        si = si_a2b(name.encode())
        shares = share_files(grid, si)
        assert len(shares) == 3, name
        for node, path in shares:
            mine = our_renew_secret(secret_file, si, tubid(grid, node))
            assert [lease for lease in leases(path) if lease.is_renew_secret(mine)], (name, path)
    # Its own directory holds both manifests, stamped with the time it first saw them.
    folder, = children(grid.url, key.own).values()
    copied = children(grid.url, folder[1]["rw_uri"])
    assert {n: e[1]["metadata"]["seen"] for n, e in copied.items()} == {first.record: t0, second.record: t0}

    # The host (compromised, say) unlinks its manifests from the inbox and asks to forget the first backup.
    (host_folder, entry), = ((n, e) for n, e in children(grid.url, host_inbox).items() if n != "forget")
    for name in children(grid.url, entry[1]["rw_uri"]):
        web(grid.url, entry[1]["rw_uri"] + "/" + name, "DELETE", "")
    gen = backups[0]["generation"]
    lb("cleanup", "-g", str(gen), check=True)
    now[0] += 600
    asked = now[0]
    seen = await c.observe()
    assert sorted(seen.vanished) == sorted([first.key, second.key]) and seen.forgets == [first.key]
    r = c.report()
    assert r.level is Level.CRITICAL
    assert [b.key for b in r.kept] == [first.key, second.key] and [f.key for f in r.pending] == [first.key]
    status = json.loads((tmp_path / "custodian" / "status.json").read_text())
    assert status["code"] == 2 and {a["topic"] for a in status["alerts"]} >= {"vanished", "forget"}

    # The command says the same: exit 2, naming the vanished manifests and the forget request.
    chome = tmp_path / "custodian-home"
    chome.mkdir()
    out = run_cli(["--url", grid.url, "custodian", "check", "--key", str(keyfile),
                   "-o", f"custodian.state_dir={tmp_path / 'custodian'}"], chome)
    assert out.code == 2, out.err
    assert f"forget pending: {first.key}" in out.out and "CRITICAL: vanished" in out.out
    assert first.key in out.out and second.key in out.out and "URI:" not in out.out + out.err

    # A day before the grace period ends, nothing is forgotten; past it, the first backup is.
    c.state = state.load()
    now[0] = asked + 30 * DAY - DAY
    assert (await c.observe()).honoured == []
    now[0] += DAY
    assert (await c.observe()).honoured == [first.key]
    r = c.report()
    assert [b.key for b in r.kept] == [second.key] and not r.pending
    assert set(children(grid.url, folder[1]["rw_uri"])) == {second.record}

    # Its state holds verify caps and the manifests' read caps, nothing else.
    manifests = {first.manifest, second.manifest}
    held = caps_in(tmp_path / "custodian")
    assert held and manifests <= held
    assert {cap for cap in held if "-Verifier:" not in cap} == manifests
    assert key.own not in held and key.inbox not in held and host_folder not in held


@pytest_twisted.ensureDeferred
async def test_the_rotation_renews_every_object_once_a_round_and_resumes_after_a_restart(grid, lb, home, tmp_path):
    """A round of seven daily turns, by the custodian's clock, with the custodian restarted (a new object
    on the same state directory, a new grid connection) half way: every object of both backups, their
    manifests and the custodian's directories is renewed exactly once, each time with every server
    saying it holds its share; the round ends on the seventh day, and every backup's leases show it."""
    from twisted.internet import reactor

    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    keyfile = tmp_path / "custodian.key"
    lb("init", check=True)
    lb("custodian", "init", "--key", str(keyfile), "--introducer", furl, check=True)
    src = make_tree(tmp_path / "src", small=40, medium=1, large=0)
    lb("backup", str(src), check=True)
    (src / "new.txt").write_text("a change between the two backups " * 100)
    lb("backup", str(src), check=True)
    snaps = [json.loads(line)["cap"] for line in lb("list", "--json", check=True).out.splitlines()]
    key = read_key(str(keyfile))
    conf = cfg.load([], [])
    gw = Gateway(grid.url, make_http_client(reactor, 4), reactor, conf.operation.retry, 2)
    state = StateDir(str(tmp_path / "custodian"))
    t0 = time.time() - 8 * DAY  # (so that `custodian check`, on the real clock, comes a day after the round)
    now = [t0]
    turns: list[list[str]] = []

    def custodian() -> tuple[Custodian, Renewal]:
        return (Custodian(gw, key, state, RULES, lambda: now[0]),
                Renewal(reactor, key.lease_secret(str(keyfile)), str(tmp_path / "custodian-grid"), key.furl))

    c, renewal = custodian()
    try:
        assert len((await c.observe()).new) == 2
        first = await c.tick(renewal.renew)  # no rotation yet: a full pass, one add_lease each
        assert first.full and first.requests == 3 * first.objects and c.state.rotation.started == t0

        async def recorded(targets, census=True):
            done = await renewal.renew(targets, census)
            turns.append([r.target.name for r in done])
            for r in done:
                assert r.census and r.holding == 3 and len(r.shares) == 3, r
            return done
        for day in range(1, 8):
            if day == 4:
                await renewal.stop()
                c, renewal = custodian()  # a restart: what stood is read back from the state directory
                assert c.state.rotation.at > 0
            now[0] = t0 + day * DAY
            t = await c.tick(recorded)
            if not t.objects:
                turns.append([])
            assert t.joining == 0 and t.wrapped == (day == 7) and abs(t.hi - min(1.0, day / 7)) < 1e-9
    finally:
        await renewal.stop()
    assert len(turns) == 7
    renewed = collections.Counter(name for turn in turns for name in turn)
    objects = storage_indexes(grid.url, snaps[0]) | storage_indexes(grid.url, snaps[1])
    assert objects <= set(renewed) and len(renewed) == first.objects
    assert set(renewed.values()) == {1}, [n for n, k in renewed.items() if k > 1]
    assert sum(1 for turn in turns if turn) >= 3  # (spread over the days, not at once)
    assert c.state.complete.by == "rotation" and c.state.complete.started == t0
    r = c.report()
    assert [x.expires is not None and x.expires >= t0 + DAY + RULES.lease for x in r.leases] == [True, True]
    status = json.loads((tmp_path / "custodian" / "status.json").read_text())
    assert all(k["renewed"] >= t0 + DAY for k in status["kept"])
    assert status["renewal"]["complete"]["finished"] == t0 + 7 * DAY

    out = run_cli(["--url", grid.url, "custodian", "check", "--key", str(keyfile),
                   "-o", f"custodian.state_dir={tmp_path / 'custodian'}"], tmp_path)
    assert out.code in (0, 1), out.err  # (1: no new manifest for 8 days, by the real clock)
    assert out.out.count("earliest expiry") == 2 and "last complete renewal:" in out.out
    assert "(by the rotation" in out.out and "URI:" not in out.out + out.err
