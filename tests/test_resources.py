"""The resource opener: where the entry cache is, the cache under its lock (moved aside for a fresh
start), a lock held elsewhere, and recovery keys given as a key, a file or a missing file."""

from __future__ import annotations

import io
import os
import stat

import pytest
import pytest_twisted

from lafs_backup import config as cfg
from lafs_backup.engine.runtime import Runtime
from lafs_backup.errors import LockedError, UsageError
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


@pytest_twisted.ensureDeferred
async def test_the_cache_is_one_per_gateway_without_a_configured_path(tmp_path, monkeypatch):
    local = await opener(tmp_path, monkeypatch).cache_path()
    other = await opener(tmp_path, monkeypatch, "destination.url=http://127.0.0.1:9/").cache_path()
    set_ = await opener(tmp_path, monkeypatch, f"source.entry_cache.path={tmp_path}/mine.sqlite").cache_path()
    assert local.endswith("entry-cache.local.sqlite") and local.startswith(str(tmp_path / "state"))
    assert other != local and os.path.basename(other).startswith("entry-cache.")
    assert set_ == f"{tmp_path}/mine.sqlite"


@pytest_twisted.ensureDeferred
async def test_the_locked_cache_is_released_and_a_fresh_one_moves_the_old_aside(tmp_path, monkeypatch):
    # (a gateway URL that nothing answers: opening the cache asks no gateway, and starts no grid)
    o = opener(tmp_path, monkeypatch, f"source.entry_cache.path={tmp_path}/c.sqlite",
               "destination.url=http://127.0.0.1:9/")
    async with o.locked_cache() as db:
        db.objects.begin_generation(b"/src")
        held = o.lock()  # a second holder in the same process: refused at once
        with pytest.raises(LockedError):
            await held
    async with o.locked_cache(fresh=True):
        pass
    aside = [p for p in os.listdir(tmp_path) if p.startswith("c.sqlite.") and not p.endswith((".lock", "-wal",
                                                                                              "-shm"))]
    assert aside, os.listdir(tmp_path)
    assert "moved the entry cache aside" in o.rt.reporter.err.getvalue()
    (await o.lock()).release()  # free again


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
    assert key_path_for(None).endswith("repositories/local.key")
    assert key_path_for("http://a:1/") != key_path_for("http://b:1/")


def test_a_missing_key_file_in_the_configuration_says_what_to_do(tmp_path, monkeypatch):
    o = opener(tmp_path, monkeypatch, f"repository.key_file={tmp_path}/none.key")
    with pytest.raises(UsageError, match="lafs-backup init"):
        o.explicit_key()
    assert opener(tmp_path, monkeypatch, repo_arg=KEY.encode()).explicit_key() == KEY
