"""``stats``: each backup's entries, bytes and what it added, and the repository's distinct contents and
stored bytes, counted from the indexes alone; the pure counting, then the real CLI on the real grid."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import pytest_twisted

from builders import run, tree
from conftest import json_lines, run_cli
from fakes import FakeCache, FakeGateway
from lafs_backup.errors import SnapshotError
from lafs_backup.read.reader import Reader
from lafs_backup.read.stats import Tally
from lafs_backup.store.snapshot import canonical_json
from lafs_backup.caps import lit_cap, stored_size
from lafs_backup.read.tally import (CONTENT, OTHER, Counts, DistinctContents, StoredObject, figures, missing, tally,
                                    tree_counts, tree_objects)

PACK = "URI:CHK:aaaa:bbbb:2:3:1000"
BIG = "URI:CHK:cccc:dddd:2:3:5000"
SUB = "lafs-backup-dir:" + "1" * 64


def _file(size: int, sha: str, **where: object) -> list:
    return ["filenode", {"ro_uri": where.pop("cap", lit_cap(b"")),
                         "metadata": {"type": "file", "size": size, "sha256": sha, **where}}]


# -- the pure counting ----------------------------------------------------------------------------
def test_a_cap_records_the_size_and_encoding_of_what_it_names():
    assert stored_size("URI:CHK:key:ueb:2:3:12345") == (12345, 2, 3)
    assert stored_size("URI:DIR2-CHK:key:ueb:3:10:260") == (260, 3, 10)
    assert stored_size(lit_cap(b"tiny")) is None  # its bytes are the cap itself: nothing on a server
    assert stored_size("URI:DIR2:writekey:fingerprint") is None


def test_a_directory_is_counted_from_its_record():
    children = {
        "a": _file(300, "11" * 32, pack={"cap": PACK, "offset": 0, "length": 300}),
        "b": _file(200, "22" * 32, pack={"cap": PACK, "offset": 300, "length": 150}, enc="lz4"),
        "big": _file(5000, "33" * 32, cap=BIG),
        "empty": _file(0, "44" * 32),
        "sub": ["dirnode", {"ro_uri": SUB, "metadata": {"type": "dir"}}],
        "link": ["filenode", {"ro_uri": lit_cap(b"a"), "metadata": {"type": "symlink", "target": "a"}}],
        "fifo": ["filenode", {"ro_uri": lit_cap(b""), "metadata": {"type": "fifo"}}],
    }
    t = tally(children)
    assert t.tally.own == Counts(files=4, dirs=1, symlinks=1, specials=1, bytes=5500)
    assert t.tally.subdirs == (SUB,)
    assert sorted(o.size for o in t.objects.values()) == [1000, 5000]  # the pack once, the plain file
    assert all(o.kind == CONTENT and o.on_grid == o.size * 3 // 2 for o in t.objects.values())
    assert sorted(size for _, size in t.contents) == [200, 300, 5000]  # the empty file holds no content


def test_a_tree_counts_a_shared_directory_at_each_place_and_its_objects_once():
    leaf = tally({"x": _file(10, "aa" * 32, pack={"cap": PACK, "offset": 0, "length": 10})})
    root = tally({"one": ["dirnode", {"ro_uri": SUB, "metadata": {"type": "dir"}}],
                  "two": ["dirnode", {"ro_uri": SUB, "metadata": {"type": "dir"}}]})
    table = {"root": root.tally}
    assert missing("root", table) == [SUB]
    table[SUB] = leaf.tally
    assert missing("root", table) == []
    assert tree_counts("root", table, {}) == Counts(files=2, dirs=2, bytes=20)
    assert len(tree_objects("root", table)) == 1


def test_what_a_backup_added_is_what_no_older_one_held():
    objects = {1: StoredObject(100, 150, CONTENT), 2: StoredObject(40, 60, CONTENT), 3: StoredObject(9, 27, OTHER)}
    seen: set[int] = set()
    first = figures(Counts(files=1), {1, 3}, seen, objects)
    assert (first.objects, first.stored_bytes, first.added_objects, first.added_bytes) == (1, 100, 1, 100)
    second = figures(Counts(files=2), {1, 2, 3}, seen, objects)
    assert (second.objects, second.stored_bytes, second.added_objects, second.added_bytes) == (2, 140, 1, 40)


def test_distinct_contents_are_counted_once_in_little_memory():
    c = DistinctContents()
    c.add([(k, 10) for k in range(1000)])
    c.add([(k, 10) for k in range(500, 1500)])  # half of them met again
    assert c.totals() == (1500, 15000)


# -- the walk, over an in-memory gateway -----------------------------------------------------------
async def _tally_of(cap, gw, jobs=2):
    t = Tally(Reader(gw, use_index=False), jobs)
    return await t.backup(cap), t


@pytest_twisted.ensureDeferred
async def test_a_snapshot_is_counted_from_its_index_or_else_from_its_listings(tmp_path):
    root = tree(tmp_path / "src")  # 3 directories of 4 files, each with a subdirectory of 4, and a symlink
    gw = FakeGateway()
    cap, _ = await run(root, gw, FakeCache())
    want = _tree_figures(root)
    got, t = await _tally_of(cap, gw)
    assert {k: got.json()[k] for k in want} == want
    assert t.chunks >= 1 and t.listings == 0  # the index alone: no directory listed
    # The same snapshot without its index (one made before indexes, say): read through its directories.
    body = json.loads(gw.dirs[cap])
    del body["index"]
    bare = await gw.mkdir_immutable(canonical_json(body))
    got2, t2 = await _tally_of(bare, gw)
    assert got2.counts == got.counts and got2.objects == got.objects - len(got_chunks(gw, cap))
    assert t2.chunks == 0 and t2.listings == want["dirs"]


def got_chunks(gw, cap):
    return json.loads(gw.dirs[json.loads(gw.dirs[cap])["index"][1]["ro_uri"]])


@pytest_twisted.ensureDeferred
async def test_a_directory_only_a_lost_index_chunk_held_is_an_error(tmp_path):
    root = tree(tmp_path / "src", dirs=1, files=1)
    gw = FakeGateway()
    cap, _ = await run(root, gw, FakeCache(), tree="index")
    for chunk in got_chunks(gw, cap).values():
        gw.objects[chunk[1]["ro_uri"]] = b"not an lz4 frame"
    with pytest.raises(SnapshotError, match="missing from the snapshot index"):
        await _tally_of(cap, gw)


# -- the real CLI on the real grid ---------------------------------------------------------------
def _tree_figures(root: Path) -> dict[str, int]:
    """What ``stats`` must say of a tree as it is: entries as a backup counts them and bytes."""
    files = dirs = links = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += 1
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                links += 1
            elif os.path.isfile(p):
                files += 1
                size += os.path.getsize(p)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return {"files": files, "dirs": dirs, "symlinks": links, "bytes": size}


def _distinct(root: Path) -> tuple[int, int]:
    seen: dict[bytes, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p):
                seen[hashlib.sha256(Path(p).read_bytes()).digest()] = os.path.getsize(p)
    return len(seen), sum(seen.values())


@pytest.mark.parametrize("tree_kind", ["index", "tahoe"])
def test_stats_of_two_backups_counts_the_new_file_and_not_the_copy(lb, grid, home, tmp_path, tree_kind):
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "media").mkdir()
    (src / "docs" / "a.txt").write_text("some words that compress\n" * 40)
    (src / "docs" / "deep" / "b.txt").write_text("tiny\n")  # inline: its cap is its content
    (src / "docs" / "empty").write_bytes(b"")
    (src / "media" / "photo.bin").write_bytes(os.urandom(200 << 10))  # incompressible: stored as it is
    (src / "media" / "video.bin").write_bytes(os.urandom(3 << 20))  # an object of its own
    (src / "link").symlink_to("docs/a.txt")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"destination:\n  tree: {tree_kind}\n")

    first = json_lines(lb("-c", str(conf), "--json", "backup", str(src), check=True).out)[-1]
    before = _tree_figures(src)
    distinct_before = _distinct(src)
    new = os.urandom(300 << 10)
    (src / "new").mkdir()
    (src / "new" / "fresh.bin").write_bytes(new)  # new content: stored by the second backup
    shutil.copy(src / "media" / "photo.bin", src / "docs" / "photo-copy.bin")  # known content: not stored again
    second = json_lines(lb("-c", str(conf), "--json", "backup", str(src), check=True).out)[-1]
    after = _tree_figures(src)
    assert second["files_deduplicated"] == 1 and second["files_uploaded"] == 1

    log_at = grid.gateway_log.stat().st_size
    r = lb("-c", str(conf), "--json", "stats", check=True)
    with open(grid.gateway_log, "rb") as f:
        f.seek(log_at)
        read = [int(n) for n in re.findall(rb"web: \S+ GET \S+ 200 (\d+)", f.read())]
    [doc] = json_lines(r.out)
    assert doc["type"] == "stats"
    one, two = doc["backups"]
    assert [one["id"], two["id"]] == [first["id"], second["id"]]
    for got, want in ((one, before), (two, after)):
        assert {k: got[k] for k in want} == want
    # The backup's own summary and stats agree on what each added...
    assert one["added_bytes"] == first["bytes_added"] > (3 << 20) + (200 << 10)
    assert two["added_bytes"] == second["bytes_added"]
    # ...and the second added the new file (and an index chunk), not the copy of the photo.
    index_chunks = two["added_bytes"] - len(new)
    assert 0 < index_chunks < 64 << 10
    assert two["added_objects"] >= 2  # a pack holding the new file, and at least one new index chunk
    assert two["objects"] > one["objects"]

    repo = doc["repository"]
    assert repo["backups"] == 2
    assert repo["logical_bytes"] == before["bytes"] + after["bytes"]
    distinct = _distinct(src)
    assert (repo["distinct_contents"], repo["distinct_bytes"]) == distinct
    assert distinct[0] == distinct_before[0] + 1
    assert repo["content_bytes"] + repo["index_bytes"] == one["added_bytes"] + two["added_bytes"]
    assert repo["stored_bytes"] == repo["content_bytes"] + repo["index_bytes"] + repo["other_bytes"]
    assert repo["on_grid_bytes"] >= repo["stored_bytes"] * 3 // 2  # 2-of-3: half as much again
    assert repo["deduplication_ratio"] == pytest.approx(repo["logical_bytes"] / repo["distinct_bytes"], abs=1e-3)
    if tree_kind == "tahoe":
        assert repo["other_objects"] > 4  # every directory is a Tahoe directory
    # Nothing was read but listings and the indexes: no file's content (the photo alone is 200 KiB).
    assert read and sum(read) < 64 << 10

    # One backup by its id; the text table.
    [doc2] = json_lines(lb("-c", str(conf), "--json", "stats", first["id"], check=True).out)
    assert [b["id"] for b in doc2["backups"]] == [first["id"]]
    assert doc2["backups"][0] == one and doc2["repository"] == repo
    text = lb("-c", str(conf), "stats", check=True).out.splitlines()
    assert text[0].split()[:4] == ["id", "gen", "time", "files"]
    assert text[1].startswith(first["id"]) and text[2].startswith(second["id"])
    assert str(after["files"]) in text[2].split()
    assert text[3].startswith("repository: 2 backups")
    assert any("deduplication" in line for line in text)


def test_stats_errors(lb, home, grid, tmp_path):
    # No backup, no repository on this grid: a clear usage error, not a traceback.
    r = lb("stats")
    assert r.code == 2 and "no finished backups recorded" in r.err
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x" * 100)
    lb("backup", str(src), check=True)
    r = lb("stats", "fffffff0")
    assert r.code == 4 and "no such backup is recorded" in r.err
    # The grid cannot be reached: exit code 3.
    r = run_cli(["--url", "http://127.0.0.1:9/", "-o", "operation.retry.attempts=1", "stats"], home, timeout=120)
    assert r.code == 3, r.err
    assert "Traceback" not in r.err
