"""The local database's file: private, migrated from every older schema, batched commits, wrong destination,
corruption and the errors sqlite gives."""

from __future__ import annotations

import os
import sqlite3

import pytest

from lafs_backup.db import database
from lafs_backup.db.database import SCHEMA_VERSION, Database, db_error, move_aside
from lafs_backup.db.local import LocalDB
from lafs_backup.errors import CacheBusyError, CacheError


def test_created_private_in_wal_mode(tmp_path):
    p = tmp_path / "state" / "c.sqlite"
    d = Database(str(p), "http://g/")
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    assert d.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert d.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    d.close()
    d.close()  # twice: a shutdown trigger, then the normal path


def test_uncommitted_rows_are_lost_committed_ones_survive(tmp_path):
    p = str(tmp_path / "c")
    c = LocalDB(p, "http://g/", commit_rows=2, commit_seconds=0).objects
    c.store(b"a", "URI:CHK:a", 1)
    c.store(b"b", "URI:CHK:b", 1)  # second row: commits
    c.store(b"c", "URI:CHK:c", 1)  # not committed
    # A kill: the process dies without closing.  Another connection sees only committed rows.
    db = sqlite3.connect(p)
    assert sorted(r[0] for r in db.execute("SELECT key FROM objects")) == [b"a", b"b"]


def test_commits_are_batched_by_seconds_too(tmp_path):
    p = str(tmp_path / "c")
    clock = [100.0]
    c = LocalDB(p, "http://g/", commit_rows=0, commit_seconds=2.0, now=lambda: clock[0]).objects
    c.store(b"a", "URI:CHK:a", 1)
    db = sqlite3.connect(p)
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone() == (0,)
    clock[0] += 2.0
    c.store(b"b", "URI:CHK:b", 1)  # two seconds since the last commit: both are committed
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone() == (2,)


def test_a_durable_commit_is_noted(tmp_path):
    d = Database(str(tmp_path / "c"), "http://g/", now=lambda: 42.0)
    d.commit(durable=True)
    assert d.conn.execute("SELECT value FROM meta WHERE key='synced'").fetchone() == ("42.0",)
    assert d.conn.execute("PRAGMA synchronous").fetchone() == (1,)  # back to NORMAL


def test_another_grids_cache_is_refused(tmp_path):
    p = str(tmp_path / "c")
    Database(p, "gone").close()
    with pytest.raises(CacheError, match="belongs to the grid gone, not gtwo"):
        Database(p, "gtwo")
    Database(p, None, reader=True).close()  # a dry run asks no gateway


def test_a_cache_named_by_its_gateway_takes_the_grid_that_found_it(tmp_path):
    """A file of version 7 recorded its gateway's URL: the opener found it for a grid (by that URL's
    name), and its first writer records the grid; a reader records nothing."""
    p = str(tmp_path / "c")
    Database(p, "gone").close()
    db = sqlite3.connect(p)
    db.execute("DELETE FROM meta WHERE key='grid'")
    db.execute("INSERT INTO meta VALUES ('destination', 'http://127.0.0.1:3456/')")
    db.commit()
    db.close()
    Database(p, "gnew", reader=True).close()
    assert sqlite3.connect(p).execute("SELECT value FROM meta WHERE key='grid'").fetchone() is None
    Database(p, "gnew").close()
    assert sqlite3.connect(p).execute("SELECT value FROM meta WHERE key='grid'").fetchone() == ("gnew",)


def test_two_writers_interleave_without_failing(tmp_path):
    """Two runs (of different sources) write one file at once: no transaction stays open between
    writes, so neither fails on the other's snapshot or holds the other out; each sees the other's
    commits; generations are allocated apart."""
    p = str(tmp_path / "c")
    a, b = LocalDB(p, "g", commit_rows=0, commit_seconds=0), LocalDB(p, "g", commit_rows=0, commit_seconds=0)
    ga, gb = a.objects.begin_generation(b"/a"), b.objects.begin_generation(b"/b")
    assert (ga, gb) == (1, 2)
    a.objects.store(b"ka", "URI:CHK:a", ga)
    assert b.objects.lookup(b"ka", gb) is None  # held by a, not committed yet
    b.objects.store(b"kb", "URI:CHK:b", gb)
    b.commit()
    a.commit()
    assert b.objects.lookup(b"ka", gb).cap == "URI:CHK:a" and a.objects.lookup(b"kb", ga).cap == "URI:CHK:b"
    a.history.record_backup(ga, "URI:DIR2-CHK:a", b"/a", "a", 1.0)
    b.history.record_backup(gb, "URI:DIR2-CHK:b", b"/b", "b", 2.0)
    assert [x.cap for x in a.history.backups()] == ["URI:DIR2-CHK:a", "URI:DIR2-CHK:b"]
    a.close()
    b.close()
    # Each row's range spans both generations that used it: the older one's use lowered first_gen.
    rows = {k: (f, g) for k, f, g in sqlite3.connect(p).execute("SELECT key, first_gen, generation FROM objects")}
    assert rows == {b"ka": (1, 2), b"kb": (1, 2)}


def test_a_write_waits_for_another_runs_transaction(tmp_path, monkeypatch):
    """A write transaction that another run holds past the busy timeout: busy (exit 5), not damaged."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 50)
    p = str(tmp_path / "c")
    a = LocalDB(p, "g")
    holder = sqlite3.connect(p, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert a.history.backups() == []  # reads go on
        with pytest.raises(CacheBusyError):
            a.objects.begin_generation(b"/a")
    finally:
        holder.execute("ROLLBACK")
    assert a.objects.begin_generation(b"/a") == 1
    a.close()


def test_corrupt_file_gives_a_way_out(tmp_path):
    p = tmp_path / "c"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError) as e:
        Database(str(p), "http://g/")
    assert "--rebuild-cache" in str(e.value)


def test_a_newer_schema_is_refused(tmp_path):
    p = str(tmp_path / "c")
    Database(p, "http://g/").close()
    db = sqlite3.connect(p)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="newer than this lafs-backup"):
        Database(p, "http://g/")


def test_a_version_1_cache_is_migrated_and_keeps_its_rows(tmp_path):
    """A cache made by the first release (schema version 1) still works: its rows are found, its
    backup listed with its check, and every later table is there."""
    p = str(tmp_path / "c")
    db = sqlite3.connect(p)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE generations (gen INTEGER PRIMARY KEY, source BLOB NOT NULL, started REAL NOT NULL);
        CREATE TABLE objects (key BLOB PRIMARY KEY, cap TEXT NOT NULL, sha256 BLOB,
                              generation INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE backups (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL, cap TEXT NOT NULL,
            source BLOB NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL, ts_check REAL,
            link_dir TEXT, link_name TEXT, result_file TEXT);
        INSERT INTO meta VALUES ('schema_version', '1'), ('destination', 'http://g/');
        INSERT INTO generations VALUES (1, X'2f737263', 1.0);
        INSERT INTO objects VALUES (X'6b', 'URI:CHK:k', X'68', 1);
        INSERT INTO backups VALUES (1, 1, 'URI:DIR2-CHK:one', X'2f737263', 'src', 5.0, 9.0, NULL, NULL, NULL);
    """)
    db.close()
    local = LocalDB(p, "http://g/")
    assert local.objects.begin_generation(b"/src") == 2
    hit = local.objects.lookup(b"k", 2)
    assert hit is not None and hit.cap == "URI:CHK:k" and hit.sha256 == b"h" and hit.enc is None
    (b,) = local.history.backups()
    assert (b.cap, b.generation, b.ts_check, b.tags, b.record) == ("URI:DIR2-CHK:one", 1, 9.0, (), None)
    assert local.copy_map.copied("d", "URI:CHK:k") is None and local.history.copies() == {}
    local.close()
    db = sqlite3.connect(p)
    assert db.execute("SELECT first_gen, generation FROM objects").fetchall() == [(1, 2)]
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_sqlites_errors_say_what_to_do():
    def error(code: int, text: str) -> sqlite3.Error:
        e = sqlite3.OperationalError(text)
        e.sqlite_errorcode = code  # type: ignore[attr-defined]
        return e

    assert isinstance(db_error("c", error(sqlite3.SQLITE_BUSY, "database is locked")), CacheBusyError)
    full = db_error("c", error(sqlite3.SQLITE_FULL, "database or disk is full"))
    assert "is full" in str(full) and "--rebuild-cache" not in str(full)
    assert "failed to read or write" in str(db_error("c", error(sqlite3.SQLITE_IOERR, "disk I/O error")))
    assert "--rebuild-cache" in str(db_error("c", sqlite3.DatabaseError("file is not a database")))


def test_an_error_in_the_middle_of_a_run_is_a_cache_error(tmp_path):
    d = Database(str(tmp_path / "c"), "http://g/")
    d.conn.execute("DROP TABLE meta")  # damaged under us
    with pytest.raises(CacheError):
        d.commit(durable=True)


def test_move_aside_takes_the_wal_files_along(tmp_path):
    p = tmp_path / "c.sqlite"
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"c.sqlite{suffix}").write_bytes(b"x")
    moved = move_aside(str(p), now=lambda: 0.0)
    assert moved == f"{p}.moved-19700101T000000Z"
    assert sorted(os.listdir(tmp_path)) == [f"c.sqlite.moved-19700101T000000Z{s}" for s in ("", "-shm", "-wal")]


def test_busy_timeout_is_the_modules(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 1234)
    d = Database(str(tmp_path / "c"), "http://g/")
    assert d.conn.execute("PRAGMA busy_timeout").fetchone() == (1234,)
