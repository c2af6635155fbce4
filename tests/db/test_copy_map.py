"""The copy map: what each destination confirmed, committed at once, kept apart per destination."""

from __future__ import annotations

import sqlite3

from lafs_backup.db.local import LocalDB


def test_each_confirmation_is_committed_at_once_per_destination(tmp_path):
    p = str(tmp_path / "c")
    db = LocalDB(p, "http://g/", commit_rows=0, commit_seconds=0)
    m = db.copy_map
    assert m.copied("http://two/ r1", "URI:CHK:a") is None
    m.set_copied("http://two/ r1", "URI:CHK:a", "URI:CHK:a2")
    assert m.copied("http://two/ r1", "URI:CHK:a") == "URI:CHK:a2"
    assert m.copied("http://two/ r2", "URI:CHK:a") is None  # another repository there knows nothing of it
    # A kill now: another connection sees the confirmation.
    assert sqlite3.connect(p).execute("SELECT dst FROM copied").fetchall() == [("URI:CHK:a2",)]
    m.set_copied("http://two/ r1", "URI:CHK:a", "URI:CHK:a3")  # confirmed again: the newer cap
    assert m.copied("http://two/ r1", "URI:CHK:a") == "URI:CHK:a3"
    db.close()
