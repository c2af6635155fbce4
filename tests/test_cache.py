"""The entry cache: private file, generations and resume, batched commits, wrong destination, corruption."""

from __future__ import annotations

import sqlite3

import pytest

from lafs_backup.cache import EntryCache
from lafs_backup.errors import CacheError


def test_created_private_and_generations(tmp_path):
    p = tmp_path / "c.sqlite"
    c = EntryCache(str(p), "http://g/")
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    g1 = c.begin_generation(b"/src")
    assert g1 == 1
    # Interrupted (no backup recorded): the next run resumes the same generation.
    assert c.begin_generation(b"/src") == 1
    c.record_backup(g1, "URI:DIR2-CHK:x", b"/src", "src", 100.0)
    assert c.begin_generation(b"/src") == 2
    from lafs_backup import history
    from lafs_backup.errors import SnapshotError

    backups = c.backups()
    assert history.resolve(backups, "latest").generation == 1
    assert history.resolve(backups, "1").cap == "URI:DIR2-CHK:x"
    assert history.resolve(backups, "URI:DIR2-CHK:x").generation == 1
    with pytest.raises(SnapshotError):
        history.resolve(backups, "7")
    c.set_recorded(backups[0].row, "host.abc", "20261202T000000.000000Z.g1")
    assert c.backups()[0].record == "20261202T000000.000000Z.g1"
    c.close()


def test_lookup_marks_rows_with_the_using_generation(tmp_path):
    c = EntryCache(str(tmp_path / "c"), "http://g/")
    c.store(b"k", "URI:CHK:a", 1, b"h")
    hit = c.lookup(b"k", 3)
    assert hit.cap == "URI:CHK:a" and hit.sha256 == b"h"
    c.commit()
    db = sqlite3.connect(str(tmp_path / "c"))
    assert db.execute("SELECT generation FROM objects").fetchone() == (3,)
    assert c.lookup(b"missing", 3) is None


def test_uncommitted_rows_are_lost_committed_ones_survive(tmp_path):
    p = str(tmp_path / "c")
    c = EntryCache(p, "http://g/", commit_rows=2, commit_seconds=0)
    c.store(b"a", "URI:CHK:a", 1)
    c.store(b"b", "URI:CHK:b", 1)  # second row: commits
    c.store(b"c", "URI:CHK:c", 1)  # not committed
    # A kill: the process dies without closing.  Another connection sees only committed rows.
    db = sqlite3.connect(p)
    assert sorted(r[0] for r in db.execute("SELECT key FROM objects")) == [b"a", b"b"]


def test_other_destination_is_refused(tmp_path):
    p = str(tmp_path / "c")
    EntryCache(p, "http://one/").close()
    with pytest.raises(CacheError, match="belongs to the gateway http://one/"):
        EntryCache(p, "http://two/")


def test_corrupt_file_gives_a_way_out(tmp_path):
    p = tmp_path / "c"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError) as e:
        EntryCache(str(p), "http://g/")
    assert "--rebuild-cache" in str(e.value)


def test_lookup_many_finds_and_marks_like_lookup(tmp_path, monkeypatch):
    import lafs_backup.cache as cache_module

    monkeypatch.setattr(cache_module, "LOOKUP_BATCH", 3)  # several queries
    c = EntryCache(str(tmp_path / "c"), "http://g/")
    for i in range(7):
        c.store(b"k%d" % i, f"URI:CHK:{i}", 1, b"h%d" % i, offset=i if i % 2 else None, length=5 if i % 2 else None)
    c.store(b"k-current", "URI:CHK:c", 4)
    keys = [b"k%d" % i for i in range(7)] + [b"missing", b"k-current"]
    found = c.lookup_many(keys, 4)
    assert set(found) == set(keys) - {b"missing"}
    assert all(found[k] == c.lookup(k, 4) for k in found)
    assert c.lookup_many([], 4) == {}
    c.commit()
    db = sqlite3.connect(str(tmp_path / "c"))
    assert set(db.execute("SELECT generation FROM objects")) == {(4,)}


def test_rows_are_written_at_commit_and_read_back_before_and_after(tmp_path, monkeypatch):
    import lafs_backup.cache as cache_module

    monkeypatch.setattr(cache_module, "LOOKUP_BATCH", 2)
    c = EntryCache(str(tmp_path / "c"), "http://g/")
    c.store(b"a", "URI:CHK:a", 1, b"ha", "lz4", 3, 9)
    c.record_path(b"src", b"p/one", 1)
    # Before the commit: held in memory, answered from there (lookups mark them used as rows are).
    assert c.lookup(b"a", 2) == cache_module.Hit("URI:CHK:a", b"ha", "lz4", 3, 9)
    assert c.saw_path(b"src", b"p/one") and c.saw_paths(b"src", [b"p/one", b"p/two"]) == {b"p/one"}
    db = sqlite3.connect(str(tmp_path / "c"))
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone() == (0,)
    c.commit()
    assert db.execute("SELECT key, cap, generation, first_gen FROM objects").fetchall() == [(b"a", "URI:CHK:a", 2, 1)]
    for i in range(5):
        c.record_path(b"src", b"p/%d" % i, 1)
    c.commit()
    assert c.saw_paths(b"src", [b"p/%d" % i for i in range(7)] + [b"p/one"]) == {b"p/%d" % i for i in range(5)} | {b"p/one"}
    assert c.saw_paths(b"other", [b"p/one"]) == set()
    c.close()
