"""Lease renewal from storage indexes alone (custodian/leases.py, custodian/join.py), on a private real
grid: the custodian's leases are read back from the storage servers' share files."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from allmydata.storage.common import si_b2a
from allmydata.storage.immutable import ShareFile
from allmydata.storage.mutable import MutableShareFile
from allmydata.util import hashutil
from conftest import Grid, local_grid

from lafs_backup.custodian.join import GridClient, announcements_from_cache
from lafs_backup.custodian.leases import Renewer
from lafs_backup.custodian.secretfile import create_secret_file
from lafs_backup.custodian.targets import Kind, Target, target_of, target_of_index, verify_cap_of
from lafs_backup.grid.local import GridSpec, LocalGrid

NODES = ("storage1", "storage2", "storage3")
#: Tahoe's lease period (allmydata.storage.server.DEFAULT_RENEWAL_TIME).
PERIOD = 31 * 24 * 60 * 60


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    """A private grid (3 servers, 2-of-3): these tests read and remove share files."""
    with local_grid(tmp_path_factory.mktemp("custodian-grid")) as g:
        yield g


def web(g: Grid, path: str, data: bytes = b"", method: str = "PUT") -> str:
    req = urllib.request.Request(g.url + path, data=data, method=method)
    with urllib.request.urlopen(req) as r:
        return r.read().decode().strip()


def objects(g: Grid) -> dict[str, str]:
    """One object of each kind a repository holds, made through the gateway: name -> read (or write) cap."""
    caps = {"file": web(g, "uri", os.urandom(4000)),
            "sdmf-dir": web(g, "uri?t=mkdir", method="POST"),
            "mdmf-dir": web(g, "uri?t=mkdir&format=mdmf", method="POST"),
            "mdmf-file": web(g, "uri?format=mdmf", os.urandom(3000))}
    caps["immutable-dir"] = web(g, "uri?t=mkdir-immutable",
                                json.dumps({"f": ["filenode", {"ro_uri": caps["file"]}]}).encode(), "POST")
    return caps


def tubid(g: Grid, node: str) -> bytes:
    """A storage node's lease seed: its Foolscap tub id, from its own storage fURL."""
    furl = (g.dir / node / "private" / "storage.furl").read_text()
    m = re.match(r"pb://([a-z2-7]+)@", furl)
    assert m
    return base64.b32decode(m.group(1).upper() + "=" * (-len(m.group(1)) % 8))


def share_files(g: Grid, si: bytes) -> list[tuple[str, Path]]:
    """(node, path) of every share of ``si`` on the grid's disks."""
    name = si_b2a(si).decode()
    return [(node, p) for node in NODES
            for p in sorted((g.dir / node / "storage" / "shares" / name[:2] / name).glob("*"))]


def leases(path: Path) -> list:
    with open(path, "rb") as f:
        header = f.read(32)
    sf = MutableShareFile(str(path)) if MutableShareFile.is_valid_header(header) else ShareFile(str(path))
    return list(sf.get_leases())


def our_renew_secret(secret_path: Path, si: bytes, seed: bytes) -> bytes:
    """The renew secret a Tahoe client with this lease secret sends that server for that object, derived
    here with Tahoe's hashes from the file's bytes (not with the custodian's code)."""
    text = secret_path.read_text().strip().upper()
    raw = base64.b32decode(text + "=" * (-len(text) % 8))
    frs = hashutil.file_renewal_secret_hash(hashutil.my_renewal_secret_hash(raw), si)
    return hashutil.bucket_renewal_secret_hash(frs, seed)


def ours(g: Grid, secret_path: Path, si: bytes) -> dict[Path, list[float]]:
    """For each share of ``si``: the expiry times of the leases that carry the custodian's renew secret
    (share files keep a hash of it; ``is_renew_secret`` compares)."""
    out = {}
    for node, path in share_files(g, si):
        mine = our_renew_secret(secret_path, si, tubid(g, node))
        out[path] = [lease.get_expiration_time() for lease in leases(path) if lease.is_renew_secret(mine)]
    return out


async def joined(g: Grid, state: Path, **kw) -> GridClient:
    from twisted.internet import reactor

    if not kw:
        kw = {"introducer": LocalGrid(GridSpec(str(g.dir))).furl()}
    client = GridClient(reactor, str(state), **kw)
    await client.connected(len(NODES), 60)
    return client


@pytest_twisted.ensureDeferred
async def test_leases_are_renewed_on_every_share_from_verify_caps_alone(grid, tmp_path, caplog):
    from twisted.internet import reactor

    caplog.set_level(logging.DEBUG)
    start = time.time()
    made = objects(grid)
    verify = {name: verify_cap_of(cap) for name, cap in made.items()}
    del made  # from here on, the verify caps only
    targets = {name: target_of(v) for name, v in verify.items()}
    assert {n for n, t in targets.items() if t.kind is Kind.IMMUTABLE} == {"file", "immutable-dir"}
    secret_path = tmp_path / "lease.secret"
    secret = create_secret_file(str(secret_path))
    client = await joined(grid, tmp_path / "state")
    try:
        renewer = Renewer(reactor, client.servers, secret, limit=4)
        seen = []
        first = await renewer.renew(list(targets.values()) * 2, on_renewal=seen.append)  # each renewed once
        assert sorted(r.target.name for r in first) == sorted(t.name for t in targets.values())
        assert seen == first
        for r in first:
            assert r.holding == 3 and r.shares == {0, 1, 2} and r.unanswered == 0, r
            assert not r.short()
        # One round trip per object and server: allocate_buckets for an immutable; add_lease with
        # slot_readv for a mutable.
        assert renewer.calls == {"allocate_buckets": 2 * 3, "add_lease": 3 * 3, "slot_readv": 3 * 3}
        assert renewer.requests == 24

        expiry = {}
        for name, t in targets.items():
            found = ours(grid, secret_path, t.storage_index)
            assert len(found) == 3, name  # 2-of-3: one share on each server
            for path, mine in found.items():
                assert len(mine) == 1, (name, path)
                assert start + PERIOD - 5 < mine[0] <= time.time() + PERIOD + 1, name
                expiry[path] = (mine[0], len(leases(path)))

        # A second pass renews the same lease: no second one, none lost, none earlier.
        second = await renewer.renew(targets.values())
        assert all(r.holding == 3 for r in second)
        for name, t in targets.items():
            for path, mine in ours(grid, secret_path, t.storage_index).items():
                assert len(mine) == 1 and mine[0] >= expiry[path][0], name
                assert len(leases(path)) == expiry[path][1], name  # the gateway's and ours, as before
        assert renewer.requests == 48
    finally:
        await client.stop()
    # Nothing secret reached a log line: no secret, no fURL, no cap.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "pb://" not in text and "URI:" not in text and secret_path.read_text().strip() not in text


@pytest_twisted.ensureDeferred
async def test_without_a_census_one_add_lease_per_object_and_server_renews_every_kind(grid, tmp_path):
    """The cheapest renewal (a full pass's): one ``add_lease`` per object and server, whatever the kind,
    bare storage indexes included; the leases are on the share files, and nothing is said of shares."""
    from twisted.internet import reactor

    made = objects(grid)
    targets = [target_of(verify_cap_of(cap)) for cap in made.values()]
    targets.append(target_of_index(targets[1].storage_index))  # (the same object, bare: asked once)
    secret_path = tmp_path / "lease.secret"
    client = await joined(grid, tmp_path / "state")
    try:
        renewer = Renewer(reactor, client.servers, create_secret_file(str(secret_path)), limit=4)
        done = await renewer.renew(targets, census=False)
    finally:
        await client.stop()
    assert renewer.calls == {"add_lease": 5 * 3} and renewer.requests == 15 and len(done) == 5
    for r in done:
        assert not r.census and r.unanswered == 0 and r.holding == 3 and r.shares == set() and not r.short()
        found = ours(grid, secret_path, r.target.storage_index)
        assert len(found) == 3 and all(len(mine) == 1 for mine in found.values()), r


@pytest_twisted.ensureDeferred
async def test_servers_report_what_they_hold(grid, tmp_path):
    """An unknown storage index has no shares; a lost share shows; a bare storage index of a mutable object
    is found and kept all the same."""
    from twisted.internet import reactor

    made = objects(grid)
    damaged = target_of(verify_cap_of(made["file"]))
    (node, lost), *_ = share_files(grid, damaged.storage_index)
    lost.unlink()
    unknown = target_of_index(os.urandom(16))
    bare_dir = target_of_index(target_of(verify_cap_of(made["sdmf-dir"])).storage_index)
    assert bare_dir.kind is Kind.UNKNOWN
    secret_path = tmp_path / "lease.secret"
    client = await joined(grid, tmp_path / "state")
    try:
        renewer = Renewer(reactor, client.servers, create_secret_file(str(secret_path)))
        got = {r.target.storage_index: r for r in await renewer.renew([unknown, damaged, bare_dir])}
    finally:
        await client.stop()
    u = got[unknown.storage_index]
    assert u.holding == 0 and u.shares == set() and u.unanswered == 0 and u.short()
    assert all(a.problem is None and not a.shares for a in u.answers)
    d = got[damaged.storage_index]
    assert d.holding == 2 and len(d.shares) == 2 and d.short() and not d.short(2)
    assert [a.shares for a in d.answers if a.server.startswith("v0-")].count(frozenset()) == 1
    b = got[bare_dir.storage_index]
    assert b.holding == 3 and b.shares == {0, 1, 2}
    # The bare storage index was first asked as an immutable: each server said it holds a mutable.
    assert renewer.calls["allocate_buckets"] == 3 * 3 and renewer.calls["add_lease"] == 3
    for path, mine in ours(grid, secret_path, bare_dir.storage_index).items():
        assert len(mine) == 1, path
    assert all(len(m) == 1 for m in ours(grid, secret_path, damaged.storage_index).values())


@pytest_twisted.ensureDeferred
async def test_joining_from_announcements_without_the_introducer(grid, tmp_path):
    """The servers a node has heard of (its announcement cache) are enough to join."""
    from twisted.internet import reactor

    target = target_of(verify_cap_of(web(grid, "uri", os.urandom(2000))))
    cache = tmp_path / "announcements.yaml"
    shutil.copy(grid.dir / "gateway" / "private" / "introducer_default_cache.yaml", cache)
    servers = announcements_from_cache(str(cache))
    assert len(servers) == 3
    client = await joined(grid, tmp_path / "state", servers=servers)
    try:
        [r] = await Renewer(reactor, client.servers, create_secret_file(str(tmp_path / "s"))).renew([target])
    finally:
        await client.stop()
    assert r.holding == 3 and r.target == Target(target.storage_index, Kind.IMMUTABLE, 2, 3)


def test_a_client_needs_an_introducer_or_servers(tmp_path):
    from twisted.internet.task import Clock

    from lafs_backup.errors import GridError

    with pytest.raises(GridError, match="introducer fURL or its storage servers"):
        GridClient(Clock(), str(tmp_path / "state"))
