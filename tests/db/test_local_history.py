"""The local history: finished backups (made durable at once), their place in the repository, checks,
copies on other grids, and forgetting, which drops the object rows no kept backup uses."""

from __future__ import annotations

import sqlite3

import pytest

from lafs_backup import history
from lafs_backup.db.local import LocalDB
from lafs_backup.errors import SnapshotError


def test_backups_are_recorded_listed_and_resolved(tmp_path):
    db = LocalDB(str(tmp_path / "c"), "http://g/")
    h = db.history
    g1 = db.objects.begin_generation(b"/src")
    b = h.record_backup(g1, "URI:DIR2-CHK:x", b"/src", "src", 100.0, host="h", tags=("t",), summary={"files": 3})
    assert (b.id, b.row, b.host, b.tags, b.summary, b.record) == ("local:1", 1, "h", ("t",), {"files": 3}, None)
    backups = h.backups()
    assert backups == [b]
    assert history.resolve(backups, "latest").generation == 1
    assert history.resolve(backups, "1").cap == "URI:DIR2-CHK:x"
    assert history.resolve(backups, "URI:DIR2-CHK:x").generation == 1
    with pytest.raises(SnapshotError):
        history.resolve(backups, "7")
    h.set_recorded(backups[0].row, "host.abc", "20261202T000000.000000Z.g1")
    assert h.backups()[0].record == "20261202T000000.000000Z.g1" and h.backups()[0].writer == "host.abc"
    db.close()


def test_a_recorded_backup_is_committed_with_the_rows_before_it(tmp_path):
    """The object rows the backup uses are held in memory until a commit: recording the backup
    commits them with it (a kill right after loses neither)."""
    p = str(tmp_path / "c")
    db = LocalDB(p, "http://g/", commit_rows=0, commit_seconds=0)
    g = db.objects.begin_generation(b"/src")
    db.objects.store(b"k", "URI:CHK:k", g)
    db.history.record_backup(g, "URI:DIR2-CHK:x", b"/src", "src", 1.0)
    other = sqlite3.connect(p)
    assert other.execute("SELECT COUNT(*) FROM objects").fetchone() == (1,)
    assert other.execute("SELECT cap FROM backups").fetchall() == [("URI:DIR2-CHK:x",)]
    assert other.execute("SELECT 1 FROM meta WHERE key='synced'").fetchone() == (1,)  # made durable


def test_checks_of_any_backup(tmp_path):
    db = LocalDB(str(tmp_path / "c"), "http://g/")
    h = db.history
    g = db.objects.begin_generation(b"/src")
    h.record_backup(g, "URI:DIR2-CHK:mine", b"/src", "src", 1.0)
    h.set_checked(["URI:DIR2-CHK:mine", "URI:DIR2-CHK:theirs"], 10.0, leases=True)
    h.set_checked(["URI:DIR2-CHK:mine"], 20.0, leases=False)  # a check that renewed no lease
    assert h.checks() == {"URI:DIR2-CHK:mine": (20.0, 10.0), "URI:DIR2-CHK:theirs": (10.0, 10.0)}
    (b,) = h.backups()
    assert (b.ts_check, b.ts_lease) == (20.0, 10.0)
    db.close()


def test_copies_on_other_grids(tmp_path):
    p = str(tmp_path / "c")
    db = LocalDB(p, "http://g/")
    h = db.history
    h.record_copy("URI:DIR2-CHK:a", "http://two/", "URI:DIR2-CHK:a2", 1.0)
    h.record_copy("URI:DIR2-CHK:a", "http://one/", "URI:DIR2-CHK:a1", 2.0)
    h.record_copy("URI:DIR2-CHK:b", "http://two/", "URI:DIR2-CHK:b2", 3.0)
    assert h.copies() == {"URI:DIR2-CHK:a": ["http://one/", "http://two/"], "URI:DIR2-CHK:b": ["http://two/"]}
    assert sqlite3.connect(p).execute("SELECT COUNT(*) FROM copies").fetchone() == (3,)  # committed at once
    db.close()


def test_forget_keeps_the_rows_an_incremental_backup_still_uses(tmp_path):
    """Generation 2 kept generation 1's subtree whole, so the row it reuses still says generation 1.
    Forgetting generation 1 must not delete that row while generation 2 is kept."""
    db = LocalDB(str(tmp_path / "c.sqlite"), "http://gw/")
    objects, h = db.objects, db.history
    g1 = objects.begin_generation(b"/src")
    objects.store(b"k-old-subtree", "URI:CHK:old", g1)
    b1 = h.record_backup(g1, "URI:DIR2-CHK:one", b"/src", "src", 1.0)
    g2 = objects.begin_generation(b"/src", base=g1)
    objects.store(b"k-changed", "URI:CHK:new", g2)
    h.record_backup(g2, "URI:DIR2-CHK:two", b"/src", "src", 2.0)
    assert h.forget([b1.row]) == 0
    assert objects.lookup(b"k-old-subtree", g2) is not None
    # Without the base the row would have gone: a full backup (no base) after it keeps nothing of g1.
    g3 = objects.begin_generation(b"/src")
    objects.lookup(b"k-changed", g3)
    b3 = h.record_backup(g3, "URI:DIR2-CHK:three", b"/src", "src", 3.0)
    rows = [b.row for b in h.backups() if b.row != b3.row]
    assert h.forget(rows) == 1  # the old subtree's row; g3 used only k-changed
    assert objects.lookup(b"k-old-subtree", g3) is None
    assert [b.generation for b in h.backups()] == [g3]
    db.close()


def test_forget_keeps_an_interrupted_runs_rows(tmp_path):
    db = LocalDB(str(tmp_path / "c"), "http://g/")
    objects, h = db.objects, db.history
    g1 = objects.begin_generation(b"/src")
    objects.store(b"a", "URI:CHK:a", g1)
    b1 = h.record_backup(g1, "URI:DIR2-CHK:one", b"/src", "src", 1.0)
    g2 = objects.begin_generation(b"/src")
    objects.store(b"b", "URI:CHK:b", g2)  # not committed yet: forget writes it first
    assert h.forget([b1.row]) == 1
    assert objects.lookup(b"a", g2) is None and objects.lookup(b"b", g2) is not None
    assert objects.begin_generation(b"/src") == g2  # the interrupted run resumes
    db.close()
