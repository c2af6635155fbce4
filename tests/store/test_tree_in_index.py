"""A tree whose directories live in the snapshot index alone (``destination.tree: index``): no
request per directory, every object still linked for its leases, and a reader that proves each
record by its name.  In-memory fakes; the real grid's round trips are in test_packs, test_index,
test_watch and the CLI suites, which run this default."""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted

from builders import run, tree
from fakes import FakeCache, FakeGateway
from lafs_backup.errors import SnapshotError
from lafs_backup.read.reader import Reader
from lafs_backup.store import index
from lafs_backup.store.index import IndexWriter
from lafs_backup.store.snapshot import (INDEX_TREE, INDEX_TREE_MARKER_BODY, OBJECTS, TREE, body_names, dir_id,
                                        index_caps, is_dir_id)


async def _walk(reader: Reader, cap: str) -> dict[bytes, bytes]:
    """Every file of a snapshot read back: path -> content."""
    top, _ = await reader.root(cap)
    out: dict[bytes, bytes] = {}

    async def down(node, path: bytes) -> None:
        for child in await reader.children(node):
            p = path + b"/" + child.name
            if child.kind == "d":
                await down(child, p)
            elif child.kind == "f":
                parts: list[bytes] = []
                got = await reader.content(child, parts.append)
                assert got.matches
                out[p] = b"".join(parts)

    await down(top, b"")
    return out


def _on_disk(root) -> dict[bytes, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                out[b"/" + os.fsencode(os.path.relpath(p, root))] = open(p, "rb").read()
    return out


@pytest_twisted.ensureDeferred
async def test_the_source_directories_cost_no_request_and_the_snapshot_restores(tmp_path):
    src = tree(tmp_path / "src", dirs=4, files=3)
    (src / "d1" / "big.bin").write_bytes(os.urandom(3 << 20))  # stored as itself, not packed
    gw_tahoe, gw_index = FakeGateway(), FakeGateway()
    cap_tahoe, up_tahoe = await run(src, gw_tahoe, FakeCache())
    cap_index, up_index = await run(src, gw_index, FakeCache(), tree="index")
    dirs = 1 + 4 * 2  # the root, d0..d3 and their "deeper"
    # Tahoe directories: one per source directory, plus the marker, the objects, the index and the root.
    assert len(gw_tahoe.dirs) == dirs + 4
    # In the index alone: only the snapshot's own directories (the tree's note, objects, index, root).
    assert len(gw_index.dirs) == 4
    assert up_index.stats.dirs_indexed == dirs and up_index.stats.dirs_new == 4

    root = json.loads(gw_index.dirs[cap_index])
    tree_edge = root[TREE][1]
    assert gw_index.dirs[tree_edge["ro_uri"]] == INDEX_TREE_MARKER_BODY
    assert is_dir_id(tree_edge["metadata"][INDEX_TREE])
    # Every object is linked from the objects directory (nothing else on the grid links them now):
    # the pack and the large file stored as itself.
    linked = {info["ro_uri"] for _, info in json.loads(gw_index.dirs[root[OBJECTS][1]["ro_uri"]]).values()}
    assert linked == set(gw_index.objects) - set(index_caps(await gw_index.get_json(root["index"][1]["ro_uri"])))

    expected = _on_disk(src)
    for gw, cap in ((gw_tahoe, cap_tahoe), (gw_index, cap_index)):
        reader = Reader(gw, use_index=False)  # (a tree in the index alone loads it all the same)
        try:
            assert await _walk(reader, cap) == expected
        finally:
            reader.close()


async def _index_snapshot(tmp_path):
    src = tree(tmp_path / "src", dirs=3, files=2)
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    root = json.loads(gw.dirs[cap])
    chunks = index_caps(await gw.get_json(root["index"][1]["ro_uri"]))
    return gw, cap, chunks


@pytest_twisted.ensureDeferred
async def test_a_record_that_is_not_its_own_name_is_refused(tmp_path):
    gw, cap, chunks = await _index_snapshot(tmp_path)
    assert len(chunks) == 1
    # The same chunk with one record's body changed (a metadata value), under its old name.
    records = list(index.records(gw.objects[chunks[0]]))
    name, body, names = records[0]
    children = json.loads(body)
    first = min(children)
    children[first][1]["metadata"]["mode"] = 0o777
    forged = json.dumps(children, separators=(",", ":"), sort_keys=True).encode()
    writer = IndexWriter()
    for n, b, nm in [(name, forged, body_names(forged))] + records[1:]:
        assert writer.add(n, b, nm) is None
    gw.objects[chunks[0]] = index.compress(writer.finish())
    reader = Reader(gw)
    try:
        with pytest.raises(SnapshotError, match="does not match its name"):
            await _walk(reader, cap)
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_chunk_is_a_clear_error_not_a_request_for_a_cap_that_is_none(tmp_path):
    gw, cap, chunks = await _index_snapshot(tmp_path)
    gw.objects[chunks[0]] = b"damaged" * 10
    reader = Reader(gw)
    gw.counts.clear()
    try:
        with pytest.raises(SnapshotError, match="missing from the snapshot index"):
            await _walk(reader, cap)
    finally:
        reader.close()
    assert gw.counts["get"] == 3  # the root, the index directory and the chunk: no listing of an id


def test_a_name_is_the_hash_of_the_exact_body():
    a, b = b'{"x":["filenode",{"ro_uri":"URI:LIT:"}]}', b'{"y":["filenode",{"ro_uri":"URI:LIT:"}]}'
    assert dir_id(a) == dir_id(a) != dir_id(b)
    assert is_dir_id(dir_id(a)) and not is_dir_id("URI:DIR2-CHK:abc")
