"""The decider over a real directory and a dict cache: a batch decided ahead comes to the decisions made one by one,
in two cache queries, and whether a path was stored before is asked together for the files to read."""

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


def test_a_batch_decided_ahead_is_decided_as_one_by_one(tmp_path):
    one, entries, _ = setup(tmp_path / "a")
    expected = {e.path: one.decide(e) for e in entries if e.kind == "f"}
    decider, entries, cache = setup(tmp_path / "b")
    assert list(decider.ahead(entries, size=10)) == entries
    assert cache.queries == ["lookup_many", "lookup_many", "saw_paths"]  # with the inode, without it; then paths
    got = {e.path: decider.decide(e) for e in entries if e.kind == "f"}
    assert {p: d for p, (d, _) in got.items()} == {p: d for p, (d, _) in expected.items()}
    assert {p: d.action for p, (d, _) in got.items()} == {b"same": "unchanged", b"changed": "read", b"new": "read",
                                                         b"gone": "skip"}
    assert got[b"gone"][1] is None and got[b"gone"][0].reason == "it vanished since the scan"
    assert decider.seen(b"changed") and not decider.seen(b"new")
    assert cache.queries.count("saw_path") == 0 and cache.queries.count("lookup_many") == 2
    assert decider.seen(b"same") and cache.queries[-1] == "saw_path"  # unchanged: not asked ahead


def test_held_files_and_other_modes_are_left_to_their_turn(tmp_path):
    decider, entries, cache = setup(tmp_path / "a")
    held = [replace(e, extras=(("hold", b"1"),)) if e.path == b"new" else e for e in entries]
    list(decider.ahead(held, held=True, size=2))
    assert b"new" not in decider._ahead and b"same" in decider._ahead
    checksum, entries, cache = setup(tmp_path / "c", mode="checksum")
    assert list(checksum.ahead(entries)) == entries and cache.queries == []
