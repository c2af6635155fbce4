"""The resource opener: which grid a gateway is on, the entry cache and key of each grid (and those named by
the gateway's URL before, moved), the cache under its locks (a source's beside another's; moved aside
for a fresh start), and recovery keys given as a key, a file or a missing file."""

from __future__ import annotations

import io
import os
import stat

import pytest
import pytest_twisted

from lafs_backup import config as cfg
from lafs_backup.engine.runtime import Runtime
from lafs_backup.db.local import LocalDB
from lafs_backup.errors import GridError, LockedError, UsageError
from lafs_backup.report import Reporter
from lafs_backup.repository import RepoKey
from lafs_backup.resources import Opener, key_path_for, read_key_arg, save_key

KEY = RepoKey("URI:DIR2:" + "a" * 26 + ":" + "b" * 52, "pb://x@tcp:127.0.0.1:1/y", 2, 3, 3)


def opener(tmp_path, monkeypatch, *overrides, repo_arg=None) -> Opener:
    from twisted.internet import reactor

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LAFS_BACKUP_REPO", raising=False)
    conf = cfg.load([], [cfg.parse_override(o) for o in overrides])
    return Opener(conf, Runtime(reactor, Reporter(out=io.StringIO(), err=io.StringIO())), repo_arg=repo_arg)


class Welcoming:
    """A gateway that only says which storage servers it knows (``GET /?t=json``)."""

    def __init__(self, base: str, servers: list[str]) -> None:
        self.base = base
        self.servers = servers

    async def welcome(self) -> dict:
        return {"introducers": {"statuses": []},
                "servers": [{"nodeid": s, "connection_status": "Connected to tcp:x:1 via tcp"} for s in self.servers]}


def on_grid(o: Opener, url: str, servers: list[str]) -> Opener:
    """``o`` with its gateway at ``url`` knowing ``servers``."""
    o._url, o._gateway = url, Welcoming(url, servers)  # type: ignore[assignment]
    return o


GRID_A = ["v0-aaaa", "v0-bbbb", "v0-cccc"]


@pytest_twisted.ensureDeferred
async def test_the_cache_is_one_per_grid_whatever_the_gateways_url(tmp_path, monkeypatch):
    url = "destination.url=http://127.0.0.1:3456/"
    first = await on_grid(opener(tmp_path, monkeypatch, url), "http://127.0.0.1:3456/", GRID_A).cache_path()
    # Another URL of it, whose gateway knows two of its servers so far: the same grid, the same cache.
    again = await on_grid(opener(tmp_path, monkeypatch, "destination.url=http://localhost:9999/"),
                          "http://localhost:9999/", GRID_A[1:]).cache_path()
    other = await on_grid(opener(tmp_path, monkeypatch, url), "http://127.0.0.1:3456/", ["v0-xxxx", "v0-yyyy"]
                          ).cache_path()
    assert first == again != other
    assert os.path.dirname(first) == str(tmp_path / "state" / "lafs-backup")
    name = os.path.basename(first)
    assert name.startswith("entry-cache.g") and name.endswith(".sqlite")
    assert "3456" not in name and "aaaa" not in name  # (a digest: no URL, no server id)
    # A configured path names a directory, or a prefix: one cache per grid there too.
    (tmp_path / "dir").mkdir()
    gid = name.removeprefix("entry-cache.").removesuffix(".sqlite")
    in_dir = await on_grid(opener(tmp_path, monkeypatch, url, f"source.entry_cache.path={tmp_path}/dir"),
                           "http://127.0.0.1:3456/", GRID_A).cache_path()
    prefix = await on_grid(opener(tmp_path, monkeypatch, url, f"source.entry_cache.path={tmp_path}/mine.sqlite"),
                           "http://127.0.0.1:3456/", GRID_A).cache_path()
    assert in_dir == f"{tmp_path}/dir/entry-cache.{gid}.sqlite" and prefix == f"{tmp_path}/mine.{gid}.sqlite"
    # The registry remembers where the URL led: found again without asking the gateway.
    assert opener(tmp_path, monkeypatch, "destination.url=http://localhost:9999/").known_grid() == gid
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "lafs-backup" / "grids.json").st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_a_gateway_that_knows_no_server_cannot_say_its_grid(tmp_path, monkeypatch):
    o = on_grid(opener(tmp_path, monkeypatch, "destination.url=http://127.0.0.1:3456/"), "http://127.0.0.1:3456/", [])
    with pytest.raises(GridError, match="knows no storage server yet"):
        await o.cache_path()


def legacy_cache(path: str, url: str | None) -> None:
    """A cache as version 7 made it: no grid recorded, the gateway URL it was used with."""
    import sqlite3

    LocalDB(path, "unused").close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key='grid'")
    if url is not None:
        db.execute("INSERT INTO meta VALUES ('destination', ?)", (url,))
    db.commit()
    db.close()


@pytest_twisted.ensureDeferred
async def test_a_cache_named_by_the_gateways_url_moves_to_its_grids_name(tmp_path, monkeypatch):
    import hashlib

    url = "http://127.0.0.1:3456/"
    state = tmp_path / "state" / "lafs-backup"
    state.mkdir(parents=True)
    old = state / f"entry-cache.{hashlib.sha256(url.encode()).hexdigest()[:12]}.sqlite"
    legacy_cache(str(old), url)
    (state / (old.name + ".trees.0123")).write_bytes(b"trees")
    o = on_grid(opener(tmp_path, monkeypatch, f"destination.url={url}"), url, GRID_A)
    path = await o.cache_path()
    assert not old.exists() and os.path.exists(path) and open(path + ".trees.0123", "rb").read() == b"trees"
    assert "is now" in o.rt.reporter.err.getvalue()
    db = LocalDB(path, await o.grid_id())  # its first writer records its grid
    db.close()
    # Another gateway URL of the grid finds it under the grid's name.
    assert await on_grid(opener(tmp_path, monkeypatch, "destination.url=http://localhost:1/"),
                         "http://localhost:1/", GRID_A).cache_path() == path


@pytest_twisted.ensureDeferred
async def test_a_configured_cache_file_moves_only_to_the_grid_it_was_used_with(tmp_path, monkeypatch):
    url = "http://127.0.0.1:3456/"
    old = tmp_path / "mine.sqlite"
    legacy_cache(str(old), url)
    conf = f"source.entry_cache.path={old}"
    other = on_grid(opener(tmp_path, monkeypatch, "destination.url=http://10.0.0.9:1/", conf),
                    "http://10.0.0.9:1/", ["v0-xxxx"])
    elsewhere = await other.cache_path()  # another grid: a cache of its own beside it; the file stays
    assert old.exists() and not os.path.exists(elsewhere)
    assert (await other.backups()) == []  # a read command: no cache made, the other grid's not opened
    assert sorted(os.listdir(tmp_path)) == ["mine.sqlite", "state"]
    mine = await on_grid(opener(tmp_path, monkeypatch, f"destination.url={url}", conf), url, GRID_A).cache_path()
    assert not old.exists() and os.path.basename(mine).startswith("mine.g") and os.path.exists(mine)


@pytest_twisted.ensureDeferred
async def test_the_locked_cache_is_released_and_a_fresh_one_moves_the_old_aside(tmp_path, monkeypatch):
    o = on_grid(opener(tmp_path, monkeypatch, f"source.entry_cache.path={tmp_path}/c.sqlite",
                       "destination.url=http://127.0.0.1:9/"), "http://127.0.0.1:9/", GRID_A)
    async with o.locked_cache() as db:
        db.objects.begin_generation(b"/src")
        held = o.lock()  # a second holder in the same process: refused at once
        with pytest.raises(LockedError):
            await held
    async with o.locked_cache(fresh=True, scope="source-x"):  # (a fresh start takes the whole cache)
        with pytest.raises(LockedError):
            await o.lock("source-y")
    aside = [p for p in os.listdir(tmp_path) if ".sqlite.moved-" in p and not p.endswith(("-wal", "-shm"))]
    assert aside, os.listdir(tmp_path)
    assert "moved the entry cache aside" in o.rt.reporter.err.getvalue()
    (await o.lock()).release()  # free again


@pytest_twisted.ensureDeferred
async def test_runs_of_other_sources_go_on_side_by_side(tmp_path, monkeypatch):
    """A source's run holds its own lock and shares the cache's: another source's run goes on, a
    second run of the same source and a whole-cache run (cleanup, check) are refused, naming it."""
    from lafs_backup.system.lock import source_scope

    o = on_grid(opener(tmp_path, monkeypatch, "destination.url=http://127.0.0.1:9/"), "http://127.0.0.1:9/", GRID_A)
    a = await o.lock(source_scope(b"/a"))
    b = await o.lock(source_scope(b"/b"))
    with pytest.raises(LockedError) as same:
        await o.lock(source_scope(b"/a"))
    assert same.value.details["pid"] == str(os.getpid()) and "--wait-lock" in same.value.message
    with pytest.raises(LockedError) as whole:
        await o.lock()
    assert whole.value.details["pid"] == str(os.getpid())  # named from a source's lock file
    a.release()
    b.release()
    everything = await o.lock()
    with pytest.raises(LockedError):
        await o.lock(source_scope(b"/c"))
    everything.release()
    (await o.lock(source_scope(b"/a"))).release()


@pytest_twisted.ensureDeferred
async def test_a_key_named_by_the_gateways_url_moves_to_its_grids_name(tmp_path, monkeypatch):
    import hashlib

    url = "http://127.0.0.1:3456/"
    o = on_grid(opener(tmp_path, monkeypatch, f"destination.url={url}"), url, GRID_A)
    old = key_path_for(hashlib.sha256(url.encode()).hexdigest()[:12])
    save_key(old, KEY)
    path = await o.key_path()
    assert path == key_path_for(await o.grid_id()) and not os.path.exists(old)
    assert read_key_arg(path, "key") == KEY
    # Any URL of the grid finds it; printing it needs no gateway once the grid is known.
    assert await on_grid(opener(tmp_path, monkeypatch, "destination.url=http://localhost:1/"), "http://localhost:1/",
                         GRID_A).key_path() == path
    assert await opener(tmp_path, monkeypatch, f"destination.url={url}").key_path() == path  # (9: nothing answers)


def test_a_key_file_is_0600_and_read_back(tmp_path):
    path = str(tmp_path / "keys" / "k.key")
    save_key(path, KEY)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_key_arg(path, "--repo") == KEY
    assert read_key_arg(KEY.encode(), "--repo") == KEY
    with pytest.raises(UsageError) as e:
        read_key_arg(str(tmp_path / "nosuch"), "--repo")
    assert "cannot read the recovery key" in e.value.message and KEY.writecap not in e.value.message
    with pytest.raises(FileExistsError):
        save_key(path, KEY)  # never overwritten


def test_each_grid_has_its_own_key_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert key_path_for("g0123").endswith("repositories/g0123.key")
    assert key_path_for("ga") != key_path_for("gb")


def test_a_missing_key_file_in_the_configuration_says_what_to_do(tmp_path, monkeypatch):
    o = opener(tmp_path, monkeypatch, f"repository.key_file={tmp_path}/none.key")
    with pytest.raises(UsageError, match="lafs-backup init"):
        o.explicit_key()
    assert opener(tmp_path, monkeypatch, repo_arg=KEY.encode()).explicit_key() == KEY
