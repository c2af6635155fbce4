"""The decider over a real directory and a dict cache: a batch decided ahead comes to the decisions made one by one
for every state the cache knows, reads the others without stat'ing them again, in a few cache queries, and whether a
path was stored before is asked together for the files to read."""

from __future__ import annotations

import os
from dataclasses import replace
from types import SimpleNamespace

from fakes import FakeCache
from lafs_backup.backup.decider import Decider
from lafs_backup.store import plan
from lafs_backup.store.entry import Entry
from lafs_backup.store.snapshot import Hit


class CountingCache(FakeCache):
    """Counts the queries the decider makes."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    def known_keys(self, keys):
        self.queries.append("known_keys")
        return super().known_keys(keys)

    def lookup_many(self, keys, generation):
        self.queries.append("lookup_many")
        return super().lookup_many(keys, generation)

    def saw_path(self, source, path):
        self.queries.append("saw_path")
        return super().saw_path(source, path)

    def saw_paths(self, source, paths):
        self.queries.append("saw_paths")
        return super().saw_paths(source, paths)


def setup(tmp_path, mode="stat"):
    """Four files: one unchanged (cached), one stored before but changed, one new, one that vanishes; and a directory."""
    tmp_path.mkdir(exist_ok=True)
    for name in ("same", "changed", "new", "gone"):
        (tmp_path / name).write_text(name)
    (tmp_path / "dir").mkdir()
    source = SimpleNamespace(label=b"src", lstat=lambda rel: os.lstat(tmp_path / os.fsdecode(rel)))
    entries = [Entry.from_stat(os.fsencode(p.name), os.lstat(p)) for p in sorted(tmp_path.iterdir())]
    cache = CountingCache()
    same = os.lstat(tmp_path / "same")
    cache.rows[plan.state_key(b"same", same, False)] = Hit("URI:LIT:", b"sha")
    cache.paths.update({(b"src", b"same"), (b"src", b"changed")})
    (tmp_path / "gone").unlink()
    return Decider(source, cache, 1, mode, False), entries, cache


def test_a_batch_decided_ahead_is_decided_as_one_by_one_where_the_cache_knows_the_state(tmp_path):
    one, entries, _ = setup(tmp_path / "a")
    expected = {e.path: one.decide(e) for e in entries if e.kind == "f"}
    decider, entries, cache = setup(tmp_path / "b")
    assert list(decider.ahead(entries, size=10)) == entries
    # Which states are known (no row marked used), the known one looked up with its stat now; then paths.
    assert cache.queries == ["known_keys", "lookup_many", "saw_paths"]
    got = {e.path: decider.decide(e) for e in entries if e.kind == "f"}
    assert got[b"same"][0] == expected[b"same"][0] and got[b"same"][0].action == "unchanged"
    # A state never seen is read, from the walk's stat: the read opens and fstats it (a vanished
    # file is skipped then, as the saver's tests show), so it is not stat'ed again here.
    walked = {e.path: e for e in entries}
    for name in (b"changed", b"new", b"gone"):
        d, st = got[name]
        assert d.action == "read" and st is not None
        assert (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
            walked[name].size, walked[name].mtime_ns, walked[name].ctime_ns, walked[name].ino)
    assert expected[b"gone"][0].action == "skip"  # (one by one, it is stat'ed: skipped before it is read)
    assert decider.seen(b"changed") and not decider.seen(b"new")
    assert cache.queries.count("saw_path") == 0 and cache.queries.count("lookup_many") == 1
    assert decider.seen(b"same") and cache.queries[-1] == "saw_path"  # unchanged: not asked ahead


def test_a_batch_mostly_known_skips_the_first_question_next_time(tmp_path):
    """A rerun's batches are all known states: after the first, each goes straight to its stat now
    and one lookup, as before the question was asked."""
    decider, entries, cache = setup(tmp_path / "a")
    files = [e for e in entries if e.kind == "f" and e.path == b"same"]
    list(decider.ahead(files * 3, size=1))
    assert cache.queries == ["known_keys", "lookup_many", "lookup_many", "lookup_many"]


def test_held_files_and_other_modes_are_left_to_their_turn(tmp_path):
    decider, entries, cache = setup(tmp_path / "a")
    held = [replace(e, extras=(("hold", b"1"),)) if e.path == b"new" else e for e in entries]
    list(decider.ahead(held, held=True, size=2))
    assert b"new" not in decider._ahead and b"same" in decider._ahead
    checksum, entries, cache = setup(tmp_path / "c", mode="checksum")
    assert list(checksum.ahead(entries)) == entries and cache.queries == []
