"""The indexer, fed directories by hand: records in queue order whatever order they finish in (held in
memory or spilled), the directories listed for the next walk, kept subtrees and carried chunks."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from lafs_backup.backup import indexer
from lafs_backup.backup.indexer import INDEX_CARRIED_MAX, Indexer
from lafs_backup.backup.subtrees import Trees
from lafs_backup.errors import QueueError
from lafs_backup.report import Stats
from lafs_backup.store.entry import Entry
from lafs_backup.store.index import compress, records
from lafs_backup.store.store import StoreSettings


class _Store:
    """What the indexer asks of the store: chunks stored (as their uncompressed bytes), a TMPDIR."""

    def __init__(self, fail: bool = False) -> None:
        self.settings = StoreSettings()
        self.chunks: list[bytes] = []
        self.fail = fail

    async def index_chunk(self, raw: bytes) -> str:
        if self.fail:
            raise RuntimeError("the grid is gone")
        self.chunks.append(raw)
        return f"URI:CHK:chunk{len(self.chunks)}"


def _dir(path: bytes, **extras: bytes) -> Entry:
    tree = (("tree", path.hex().ljust(64, "0").encode()),)
    return Entry("d", path, 0o40755, 0, 0, 0, 1, 2, 0, 0, 1, extras=tree + tuple(extras.items()))


def _written(store: _Store) -> list[tuple[str, bytes]]:
    return [(cap, body) for raw in store.chunks for cap, body, _ in records(compress(raw))]


@pytest.mark.parametrize("held", [16 << 20, 0])
@pytest_twisted.ensureDeferred
async def test_records_go_in_queue_order_and_only_whole_subtrees_are_listed(held, monkeypatch):
    monkeypatch.setattr(indexer, "_HELD", held)  # 0: every record waiting goes through the spill file
    store, told = _Store(), {}
    ix = Indexer(store, Stats(), on_dir=told.__setitem__)
    a, b, c, root = _dir(b"a"), _dir(b"b"), _dir(b"b/c"), _dir(b"")
    slow: Deferred = Deferred()
    ix.queued(a, slow)  # a's task is still running: the records after it wait
    ix.queued(c, ix.made(c, "URI:DIR2-CHK:c", b'{"c":1}', b"", (1, 2), whole=True))
    ix.queued(b, ix.made(b, "URI:DIR2-CHK:b", b'{"b":1}', b"", (1, 2), whole=True))
    assert store.chunks == [] and told == {b"b/c": "URI:DIR2-CHK:c", b"b": "URI:DIR2-CHK:b"}
    slow.callback(ix.made(a, "URI:DIR2-CHK:a", b'{"a":1}', b"", (1, 2), whole=False))  # an entry was not stored
    edge = ix.made(root, "URI:DIR2-CHK:r", b'{"r":1}', b"", (3, 4), whole=True)
    ix.queued(root, edge)
    assert edge.cap == "URI:DIR2-CHK:r" and edge.metadata["mtime_ns"] == 3
    assert await ix.finish() == ["URI:CHK:chunk1"] and ix.caps == ("URI:CHK:chunk1",)
    ix.close()
    assert _written(store) == [("URI:DIR2-CHK:a", b'{"a":1}'), ("URI:DIR2-CHK:c", b'{"c":1}'),
                               ("URI:DIR2-CHK:b", b'{"b":1}'), ("URI:DIR2-CHK:r", b'{"r":1}')]
    assert [p for p, _, _ in ix.trees] == [b"b/c", b"b"]  # not a, nor the root above it
    assert ix._spill is None


class _Records:
    def __init__(self, recs):
        self.recs = recs

    def of(self, path):
        return iter(self.recs.get(path, [None]))


@pytest_twisted.ensureDeferred
async def test_a_subtree_kept_whole_brings_its_previous_records_and_counts():
    trees = Trees("URI:DIR2-CHK:snap", 1, "fp", 1, ("URI:CHK:old",), frozenset(), frozenset(),
                  [(b"k/sub", b"\1" * 32, "URI:DIR2-CHK:s"), (b"k", b"\2" * 32, "URI:DIR2-CHK:k")])
    listing = b'{"sub":["dirnode",{"ro_uri":"URI:DIR2-CHK:s"}]}'  # (a record of format 1: its names are made)
    recs = _Records({b"k": [("URI:DIR2-CHK:s", b"{}", b""), ("URI:DIR2-CHK:k", listing, None)]})
    store, stats = _Store(), Stats()
    ix = Indexer(store, stats, base=("URI:CHK:old",), settled=trees, records=recs)
    k = _dir(b"k", reuse=b"URI:DIR2-CHK:k", settled=b"2,1,0,0,10")
    ix.queued(k, ix.kept(k))
    root = _dir(b"")
    ix.queued(root, ix.made(root, "URI:DIR2-CHK:r", b'{"r":1}', b"", (1, 2), whole=True))
    assert await ix.finish() == ["URI:CHK:chunk1"]  # kept whole: its records are in this index
    assert [cap for cap, _ in _written(store)] == ["URI:DIR2-CHK:s", "URI:DIR2-CHK:k", "URI:DIR2-CHK:r"]
    assert [p for p, _, _ in ix.trees] == [b"k/sub", b"k", b""]
    assert (stats.subtrees_kept, stats.files_unchanged, stats.dirs_unchanged, stats.bytes_done) == (1, 2, 2, 10)

    # The whole tree kept: the previous index is this one's, and nothing is stored.
    store, stats = _Store(), Stats()
    ix = Indexer(store, stats, settled=trees, records=None)
    whole = _dir(b"", reuse=b"URI:DIR2-CHK:snaptree", settled=b"2,2,0,0,10")
    ix.queued(whole, ix.kept(whole))
    assert await ix.finish() == ["URI:CHK:old"] and store.chunks == [] and stats.index_chunks == 1


@pytest_twisted.ensureDeferred
async def test_directories_kept_by_watch_link_the_previous_chunks_up_to_a_bound():
    def round_(base):
        store = _Store()
        ix = Indexer(store, Stats(), base=base)
        kept = _dir(b"old", reuse=b"URI:DIR2-CHK:old")  # (no settled counts: a watch round's)
        ix.queued(kept, ix.kept(kept))
        root = _dir(b"")
        ix.queued(root, ix.made(root, "URI:DIR2-CHK:r", b'{"r":1}', b"", (1, 2), whole=True))
        return ix

    ix = round_(("URI:CHK:prev1", "URI:CHK:prev2"))
    assert await ix.finish() == ["URI:CHK:chunk1", "URI:CHK:prev1", "URI:CHK:prev2"]
    assert await round_(None).finish() is None  # its records are nowhere: read by directory
    assert await round_(tuple(f"URI:CHK:p{i}" for i in range(INDEX_CARRIED_MAX))).finish() is None


@pytest_twisted.ensureDeferred
async def test_a_queue_keeping_an_unnamed_backup_is_refused_and_a_lost_chunk_is_fatal():
    ix = Indexer(_Store(), Stats())
    with pytest.raises(QueueError):
        ix.kept(_dir(b"k", reuse=b"URI:DIR2-CHK:k", settled=b"1,0,0,0,1"))
    fatal = []
    ix = Indexer(_Store(fail=True), Stats())
    ix.on_fatal = fatal.append
    root = _dir(b"")
    ix.queued(root, ix.made(root, "URI:DIR2-CHK:r", b'{"r":1}', b"", (1, 2), whole=True))
    assert await ix.finish() is None and isinstance(fatal[0], RuntimeError)
