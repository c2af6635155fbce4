"""What phase one skips when it can: the selection's questions in a directory it cannot exclude
anything from, and escaping the same extras again in the queue writer."""

from __future__ import annotations

import os
import stat

from hypothesis import given, strategies as st

from lafs_backup.backup import queue
from lafs_backup.backup.queue import format_entry, parse_entry
from lafs_backup.backup.select import DirState, Listed, Selection
from lafs_backup.filters import compile_globs, compile_rules
from lafs_backup.store.entry import Entry

names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
rels = st.lists(names, min_size=1, max_size=3).map(b"/".join)


def fake_stat(mode: int, size: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, 0, 0))


selections = st.builds(
    Selection,
    filter=st.sampled_from([compile_rules([]), compile_rules(["-/a"]), compile_rules(["+x", "-y$"])]),
    larger_than=st.one_of(st.none(), st.integers(0, 10)),
    globs=st.sampled_from([(), (compile_globs(["*.o"], "--exclude"),)]),
    listed=st.sampled_from([None, Listed([]), Listed([b"a/b"])]),
)
states = st.builds(
    DirState,
    layers=st.sampled_from([(), (compile_globs(["b*"], "ignore file"),)]),
    cache_dir=st.booleans(),
)


@given(selections, states, rels, st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755]), st.integers(0, 20))
def test_a_directory_the_selection_cannot_exclude_from_is_not_asked(sel, state, rel, mode, size):
    if not sel.excludes_in(state):
        assert sel.exclude(rel, fake_stat(mode, size), state) is None


def test_the_defaults_exclude_nothing_so_the_walk_does_not_ask():
    assert not Selection().excludes_in(DirState())
    assert Selection().excludes_in(DirState(cache_dir=True))
    assert Selection(larger_than=0).excludes_in(DirState())


extras_sets = st.lists(st.tuples(st.sampled_from(["user", "group", "x:user.a=b", "hardlink", "k\t"]),
                                 st.binary(max_size=20)), max_size=4).map(tuple)


@given(st.lists(extras_sets, min_size=1, max_size=8))
def test_extras_written_from_the_cache_are_the_same_as_the_first_time(sets):
    for extras in sets + sets:  # (the second time, each set comes from the cache)
        e = Entry("f", b"a", 0o100644, 0, 0, 1, 2, 3, 4, 5, 1, None, extras)
        assert parse_entry(format_entry(e)) == e


def test_the_extras_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(queue, "_EXTRAS", {})
    monkeypatch.setattr(queue, "_EXTRAS_MAX", 8)
    for i in range(50):
        e = Entry("f", b"a", 0o100644, 0, 0, 1, 2, 3, 4, 5, 2, None,
                  (("user", b"me"), ("hardlink", b"4:%d" % i)))
        assert parse_entry(format_entry(e)) == e
        assert len(queue._EXTRAS) <= 8
    big = Entry("f", b"a", 0o100644, 0, 0, 1, 2, 3, 4, 5, 1, None, (("x:user.big", b"v" * 4096),))
    assert parse_entry(format_entry(big)) == big
    assert (("x:user.big", b"v" * 4096),) not in queue._EXTRAS  # (a long set is not kept)
