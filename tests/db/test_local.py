"""The local database as one object: its parts share one connection and its commits; a reader sees
every commit and writes nothing; sqlite objects stay in their thread."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from lafs_backup.db.local import LocalDB
from lafs_backup.errors import CacheError


def test_parts_share_one_connection_and_its_commits(tmp_path):
    p = str(tmp_path / "c")
    db = LocalDB(p, "http://g/", commit_rows=0, commit_seconds=0)
    g = db.objects.begin_generation(b"/src")
    db.objects.store(b"k", "URI:CHK:k", g)
    db.copy_map.set_copied("d", "URI:CHK:k", "URI:CHK:k2")  # any part's commit writes the held rows
    assert sqlite3.connect(p).execute("SELECT key FROM objects").fetchall() == [(b"k",)]
    db.objects.store(b"j", "URI:CHK:j", g)
    db.commit()
    assert sqlite3.connect(p).execute("SELECT COUNT(*) FROM objects").fetchone() == (2,)
    db.objects.store(b"i", "URI:CHK:i", g)
    db.close()  # commits what is held
    db.close()  # twice: a shutdown trigger, then the normal path
    assert sqlite3.connect(p).execute("SELECT COUNT(*) FROM objects").fetchone() == (3,)


def test_a_reader_sees_each_commit_and_writes_nothing(tmp_path):
    p = str(tmp_path / "c")
    writer = LocalDB(p, "http://g/")
    g = writer.objects.begin_generation(b"/src")
    writer.objects.store(b"k", "URI:CHK:k", g)
    writer.commit()
    reader = LocalDB(p, "http://g/", reader=True)
    assert reader.objects.lookup(b"k", g + 5) is not None  # not marked as used by a reader
    writer.history.record_backup(g, "URI:DIR2-CHK:x", b"/src", "src", 1.0)
    assert [b.cap for b in reader.history.backups()] == ["URI:DIR2-CHK:x"]  # seen as it lands
    with pytest.raises(CacheError):
        reader.history.set_checked(["URI:DIR2-CHK:x"], 2.0, leases=False)
    reader.close()
    writer.close()
    assert sqlite3.connect(p).execute("SELECT generation FROM objects").fetchall() == [(g,)]


def test_a_reader_opens_a_file_no_one_made_yet(tmp_path):
    """A reader creates (and migrates) a missing file: it holds no lock, but no writer needs that then."""
    db = LocalDB(str(tmp_path / "new" / "c"), None, reader=True)
    assert db.history.backups() == [] and not db.objects.has_objects()
    db.close()


def test_used_in_the_thread_that_opened_it_only(tmp_path):
    db = LocalDB(str(tmp_path / "c"), "http://g/")
    failed: list[BaseException] = []

    def other() -> None:
        try:
            db.history.backups()
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(failed) == 1  # sqlite refuses it
    db.close()
