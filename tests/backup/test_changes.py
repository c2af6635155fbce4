"""The pure side of ``watch``: which directories a round rescans, and when it is due; the tree of
directories a round leaves for the next."""

from __future__ import annotations

from hypothesis import given, strategies as st

from lafs_backup.backup.changes import (CHANGED, CREATED, DELETED, MOVED_FROM, MOVED_TO, Change, Changes, Round,
                                        ancestors)
from lafs_backup.engine.watch import DirNode, _tree

names = st.sampled_from([b"a", b"b", b"c", b"d\xff", b"e f"])
paths = st.lists(names, min_size=0, max_size=4).map(lambda parts: b"/".join(parts))


def test_a_changed_file_dirties_its_directory_and_the_way_up():
    c = Changes()
    c.note(Change(b"a/b", b"f.txt", CHANGED), 1.0)
    r = c.take()
    assert r.closure == {b"a/b", b"a", b""}
    assert r.descend(b"a") and r.descend(b"a/b")
    assert not r.descend(b"c") and not r.descend(b"a/b/c") and not r.descend(b"a/x")
    assert not c.pending  # taken: what comes now (a change while the round runs) is for the next round
    c.note(Change(b"c", b"g", CHANGED), 2.0)
    assert c.pending and c.take().closure == {b"c", b""}


def test_new_and_moved_in_directories_are_walked_whole():
    c = Changes()
    c.note(Change(b"a", b"new", CREATED, is_dir=True), 1.0)
    c.note(Change(b"", b"in", MOVED_TO, is_dir=True), 1.0)
    r = c.take()
    assert r.descend(b"a/new/x/y") and r.descend(b"in/z")
    assert not r.descend(b"b")


def test_a_directory_that_left_is_reported_gone():
    c = Changes()
    assert c.note(Change(b"a", b"old", DELETED, is_dir=True), 1.0) == [b"a/old"]
    assert c.note(Change(b"a", b"moved", MOVED_FROM, is_dir=True), 1.0) == [b"a/moved"]
    assert c.note(Change(b"a", b"f", DELETED), 1.0) == []
    assert c.take().closure == {b"a", b""}


def test_an_ignore_file_change_rescans_its_whole_subtree():
    c = Changes(sensitive=frozenset({b".lafsbackupignore"}))
    c.note(Change(b"src", b".lafsbackupignore", CHANGED), 1.0)
    r = c.take()
    assert r.descend(b"src/deep/er") and not r.descend(b"other")


def test_the_directory_itself_changing_dirties_its_parent():
    c = Changes()
    c.note(Change(b"a/b", b"", CHANGED), 1.0)
    assert c.take().closure == {b"a", b""}
    c.note(Change(b"", b"", CHANGED), 1.0)
    assert c.take().closure == {b""}


def test_lost_events_mean_a_full_rescan():
    c = Changes()
    c.lost(1.0)
    r = c.take()
    assert r.everything and r.descend(b"anything/at/all")


def test_a_round_that_failed_is_given_back_with_what_came_meanwhile():
    c = Changes()
    c.note(Change(b"a", b"f", CHANGED), 1.0)
    r = c.take()
    c.note(Change(b"b", b"g", CHANGED), 2.0)
    c.give_back(r)
    assert c.take().closure == {b"a", b"b", b""}


def test_due_after_the_tree_settles_or_at_the_latest_after_max_delay():
    c = Changes()
    assert c.due_in(0, settle=10, max_delay=300, min_interval=30, last_start=None) is None
    c.note(Change(b"", b"f", CHANGED), 100.0)
    assert c.due_in(100.0, 10, 300, 30, None) == 10
    c.note(Change(b"", b"f", CHANGED), 105.0)  # still changing: the quiet time starts again
    assert c.due_in(106.0, 10, 300, 30, None) == 9
    assert c.due_in(120.0, 10, 300, 30, None) == 0
    # Never sooner than min_interval after the previous round started.
    assert c.due_in(106.0, 10, 300, 30, last_start=100.0) == 24
    # A tree that never goes quiet: at the latest max_delay after the first change.
    for t in range(110, 500, 5):
        c.note(Change(b"", b"f", CHANGED), float(t))
    assert c.due_in(400.0, 10, 300, 30, None) == 0


@given(st.lists(paths, min_size=1, max_size=8), paths)
def test_the_closure_is_the_dirty_directories_and_every_ancestor(dirty, probe):
    r = Round.of(dirty)
    assert r.closure == {a for d in dirty for a in ancestors(d)}
    # A directory is walked exactly when something below or at it is dirty.
    assert r.descend(probe) == any(d == probe or d.startswith(probe + b"/") or probe == b"" for d in dirty)


def test_the_next_rounds_tree_keeps_unchanged_subtrees_shared():
    old = DirNode("root1")
    old.dirs[b"a"] = DirNode("a1")
    old.dirs[b"a"].dirs[b"x"] = DirNode("x1")
    old.dirs[b"b"] = DirNode("b1")
    kept = {b"a": old.dirs[b"a"]}
    made = {b"": "root2", b"a": "a1", b"b": "b2", b"b/new": "n2"}
    new = _tree(made, kept)
    assert new is not None and new.cap == "root2"
    assert new.dirs[b"a"] is old.dirs[b"a"]  # kept whole, its subtree with it
    assert new.find(b"a/x").cap == "x1"
    assert new.find(b"b").cap == "b2" and new.find(b"b/new").cap == "n2"
    assert old.find(b"b").cap == "b1" and b"new" not in old.dirs[b"b"].dirs  # the old tree is untouched
