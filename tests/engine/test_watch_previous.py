"""What a watch round reads of the previous snapshot for the files it holds back: one reader a
round, whose index (all there is of the directories of a tree in the index alone) is loaded once,
however many directories are asked for at the same time."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from builders import run, tree
from fakes import FakeCache, FakeGateway
from lafs_backup.engine.watch import _PreviousSnapshot
from lafs_backup.store.snapshot import INDEX_TREE, TREE, is_dir_id


class _Target:
    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw

    async def gateway(self) -> FakeGateway:
        return self.gw


@pytest_twisted.ensureDeferred
async def test_the_previous_snapshot_is_loaded_once_for_every_directory_asked(tmp_path):
    src = tree(tmp_path / "src", dirs=3, files=2)
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    root = json.loads(gw.dirs[cap])[TREE][1]["metadata"][INDEX_TREE]
    earlier = _PreviousSnapshot(_Target(gw), cap)
    gw.counts.clear()
    top, again = await gatherResults([Deferred.fromCoroutine(earlier.children(root)) for _ in range(2)])
    assert top == again
    subdirs = [n for n in top if n.kind == "d"]
    assert [n.name for n in subdirs] == [b"d0", b"d1", b"d2"] and all(is_dir_id(n.cap) for n in subdirs)
    loaded = gw.counts["get"]
    assert loaded == 3  # the root, the index directory, its one chunk
    listed = await gatherResults([Deferred.fromCoroutine(earlier.children(n.cap)) for n in subdirs])
    assert [sorted(n.name for n in nodes) for nodes in listed] == [[b"deeper", b"g0.txt", b"g1.txt"]] * 3
    assert gw.counts["get"] == loaded  # nothing fetched again
    earlier.close()
