"""The object cache: generations and resume, lookups that mark the rows they use, rows held until the
commit, paths seen before, and the rows a forgetting drops."""

from __future__ import annotations

import sqlite3

from lafs_backup.db import objects as objects_module
from lafs_backup.db.local import LocalDB
from lafs_backup.store.snapshot import Hit


def test_generations_resume_an_interrupted_run(tmp_path):
    db = LocalDB(str(tmp_path / "c"), "http://g/")
    c = db.objects
    g1 = c.begin_generation(b"/src")
    assert g1 == 1
    # Interrupted (no backup recorded): the next run resumes the same generation.
    assert c.begin_generation(b"/src") == 1
    assert c.begin_generation(b"/other") == 2  # another source: a new one
    assert c.begin_generation(b"/src") == 3  # no longer the newest: not resumed
    db.history.record_backup(3, "URI:DIR2-CHK:x", b"/src", "src", 100.0)
    assert c.begin_generation(b"/src") == 4
    db.close()


def test_lookup_marks_rows_with_the_using_generation(tmp_path):
    c = LocalDB(str(tmp_path / "c"), "http://g/").objects
    c.store(b"k", "URI:CHK:a", 1, b"h")
    hit = c.lookup(b"k", 3)
    assert hit.cap == "URI:CHK:a" and hit.sha256 == b"h"
    c.commit()
    db = sqlite3.connect(str(tmp_path / "c"))
    assert db.execute("SELECT generation FROM objects").fetchone() == (3,)
    assert c.lookup(b"missing", 3) is None


def test_lookup_many_finds_and_marks_like_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(objects_module, "LOOKUP_BATCH", 3)  # several queries
    c = LocalDB(str(tmp_path / "c"), "http://g/").objects
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
    monkeypatch.setattr(objects_module, "LOOKUP_BATCH", 2)
    local = LocalDB(str(tmp_path / "c"), "http://g/")
    c = local.objects
    assert not c.has_objects()
    c.store(b"a", "URI:CHK:a", 1, b"ha", "lz4", 3, 9)
    assert c.has_objects()
    c.record_path(b"src", b"p/one", 1)
    # Before the commit: held in memory, answered from there (lookups mark them used as rows are).
    assert c.lookup(b"a", 2) == Hit("URI:CHK:a", b"ha", "lz4", 3, 9)
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
    assert c.saw_path(b"src", b"p/4") and not c.saw_path(b"src", b"p/5")
    local.close()


def test_files_states_and_paths_wait_for_a_batch_commit_while_uploads_are_committed_at_once(tmp_path):
    """The store's commit after an upload writes the upload's rows alone; files' states and paths
    seen (hashed keys, all over the file) go in the database's next batch or any other
    transaction, and are answered from memory until then."""
    local = LocalDB(str(tmp_path / "c"), "http://g/", commit_rows=0, commit_seconds=0)
    c = local.objects
    c.store(b"content-a", "URI:CHK:a", 1, b"ha")
    c.store_state(b"state-a", Hit("URI:CHK:a", b"ha"), 1)
    c.record_path(b"src", b"p/a", 1)
    db = sqlite3.connect(str(tmp_path / "c"))
    c.commit()
    assert db.execute("SELECT key FROM objects").fetchall() == [(b"content-a",)]
    assert db.execute("SELECT COUNT(*) FROM paths").fetchone() == (0,)
    assert c.lookup(b"state-a", 2) == Hit("URI:CHK:a", b"ha") and c.saw_path(b"src", b"p/a")
    assert c.lookup_many([b"state-a", b"content-a"], 2).keys() == {b"state-a", b"content-a"}
    assert c.has_objects()
    local.db.commit()  # (the batch's commit, or any other transaction: everything held)
    assert db.execute("SELECT key, generation FROM objects ORDER BY key").fetchall() == [
        (b"content-a", 2), (b"state-a", 2)]
    assert db.execute("SELECT COUNT(*) FROM paths").fetchone() == (1,)
    c.store_state(b"state-b", Hit("URI:CHK:b", b"hb"), 2)
    c.commit(durable=True)  # (the end of a backup)
    assert db.execute("SELECT COUNT(*) FROM objects WHERE key=?", (b"state-b",)).fetchone() == (1,)
    local.close()


def test_store_hit_records_every_field(tmp_path):
    c = LocalDB(str(tmp_path / "c"), "http://g/").objects
    hit = Hit("URI:CHK:p", b"s", "xz", 10, 20)
    c.store_hit(b"k", hit, 1)
    c.commit()
    assert c.lookup(b"k", 1) == hit


def test_drop_unused_follows_the_base_chain(tmp_path):
    """Rows a kept generation may use stay, those of a generation it builds on (however far back)
    too; the rest up to ``top`` go, newer ones stay (an interrupted run resumes with them)."""
    local = LocalDB(str(tmp_path / "c"), "http://g/")
    c = local.objects
    g1 = c.begin_generation(b"/src")
    c.store(b"one", "URI:CHK:1", g1)
    local.history.record_backup(g1, "URI:DIR2-CHK:1", b"/src", "src", 1.0)
    g2 = c.begin_generation(b"/src", base=g1)
    local.history.record_backup(g2, "URI:DIR2-CHK:2", b"/src", "src", 2.0)
    g3 = c.begin_generation(b"/src", base=g2)
    c.store(b"three", "URI:CHK:3", g3)
    local.history.record_backup(g3, "URI:DIR2-CHK:3", b"/src", "src", 3.0)
    g4 = c.begin_generation(b"/src")
    c.store(b"four", "URI:CHK:4", g4)  # an interrupted run's row
    c.store(b"reused", "URI:CHK:r", g1)
    c.lookup(b"reused", g4)  # used by the interrupted run too
    assert c.drop_unused({g3}, top=g3) == 0  # g3 builds on g2, which builds on g1
    assert c.drop_unused(set(), top=g3) == 2  # "one" and "three"; the rows g4 uses are newer than top
    local.commit()
    assert c.lookup(b"one", g4) is None and c.lookup(b"three", g4) is None
    assert c.lookup(b"four", g4) is not None and c.lookup(b"reused", g4) is not None
    local.close()


def test_an_incremental_generation_leaves_unmarked_the_rows_its_base_may_use(tmp_path, monkeypatch):
    """A generation that builds on another does not mark the rows whose range holds its base (they are
    kept with it, through the base): the rows outside the base's range it does mark.  Forgetting every
    backup but the incremental one keeps both."""
    monkeypatch.setattr(objects_module, "LOOKUP_BATCH", 2)
    local = LocalDB(str(tmp_path / "c"), "http://g/")
    c = local.objects
    g1 = c.begin_generation(b"/src")
    c.store(b"old", "URI:CHK:o", g1)
    c.store(b"older", "URI:CHK:p", g1)
    local.history.record_backup(g1, "URI:DIR2-CHK:1", b"/src", "src", 1.0)
    g2 = c.begin_generation(b"/other")
    c.store(b"others", "URI:CHK:x", g2)  # a row of another source's run, newer than g1
    local.history.record_backup(g2, "URI:DIR2-CHK:2", b"/other", "other", 2.0)
    g3 = c.begin_generation(b"/src", base=g1)
    assert set(c.lookup_many([b"old", b"others"], g3)) == {b"old", b"others"}
    assert c.lookup(b"older", g3) is not None
    local.commit()
    db = sqlite3.connect(str(tmp_path / "c"))
    ranges = dict(((k, (f, g)) for k, f, g in db.execute("SELECT key, first_gen, generation FROM objects")))
    assert ranges == {b"old": (g1, g1), b"older": (g1, g1), b"others": (g2, g3)}
    local.history.record_backup(g3, "URI:DIR2-CHK:3", b"/src", "src", 3.0)
    assert c.drop_unused({g3}, top=g3) == 0  # "old" and "older" stay with g3's base
    assert c.drop_unused(set(), top=g3) == 3
    g4 = c.begin_generation(b"/src")  # not incremental: it marks what it uses
    c.store(b"new", "URI:CHK:n", g1)
    assert c.lookup(b"new", g4) is not None
    local.commit()
    assert db.execute("SELECT generation FROM objects WHERE key=?", (b"new",)).fetchone() == (g4,)
    local.close()


def test_a_rows_range_only_widens_and_follows_its_cap(tmp_path):
    """Runs of several sources at once: a use by an older generation lowers first_gen, by a newer
    one raises generation; a key another run stored anew with another cap starts a new range, and
    a use of the cap it held before marks nothing (that generation does not use the new cap)."""
    p = str(tmp_path / "c")
    local = LocalDB(p, "g", commit_rows=0, commit_seconds=0)
    c = local.objects

    def row(key: bytes):
        return sqlite3.connect(p).execute("SELECT cap, first_gen, generation FROM objects WHERE key=?",
                                          (key,)).fetchone()

    c.store(b"k", "URI:CHK:a", 5)
    c.commit()
    c.lookup(b"k", 3)  # an older run (started before, still going) uses it
    c.commit()
    assert row(b"k") == ("URI:CHK:a", 3, 5)
    c.lookup(b"k", 7)
    c.commit()
    assert row(b"k") == ("URI:CHK:a", 3, 7)
    c.store(b"k", "URI:CHK:a", 4)  # the same cap stored again: the range stays as wide
    c.commit()
    assert row(b"k") == ("URI:CHK:a", 3, 7)
    assert c.lookup(b"k", 9).cap == "URI:CHK:a"  # found with cap a, marked at the next commit ...
    c.store(b"k", "URI:CHK:b", 8)  # ... after another run stored the key anew (or --mode force)
    c.commit()
    assert row(b"k") == ("URI:CHK:b", 8, 8)  # generation 9 used cap a, not b: not in b's range
    local.close()


def test_concurrent_generations_do_not_resume_each_other(tmp_path):
    """A run's generation is reused only by the next run of its own source, and only while it is
    the newest: a run of another source started meanwhile never takes it."""
    p = str(tmp_path / "c")
    a, b = LocalDB(p, "g"), LocalDB(p, "g")
    ga = a.objects.begin_generation(b"/a")
    gb = b.objects.begin_generation(b"/b")  # a is still under way: b gets its own
    assert gb == ga + 1
    assert b.objects.begin_generation(b"/b") == gb  # b interrupted and run again: resumed
    assert a.objects.begin_generation(b"/a") == gb + 1  # a's is no longer the newest
    a.close()
    b.close()
