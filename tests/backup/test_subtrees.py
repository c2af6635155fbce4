"""Settled subtrees: a backup keeps whole every directory whose subtree is as in the last backup.

Unit tests of the queue's digests and the trees file, the uploader over fakes,
then the real grid: an unchanged rerun keeps the whole tree, a small change
keeps everything around it, the snapshot is the one a full decision makes,
and a forgotten backup or the end of a chain makes the next backup decide
every entry again.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import pytest_twisted

from conftest import make_tree, restored_ok
from lafs_backup.backup import subtrees
from lafs_backup.filters import compile_rules
from lafs_backup.backup.queue import QueueReader, write_queue
from lafs_backup.backup.scan import scan


def _small(root: Path) -> Path:
    for d in ("a/b/c", "a/e", "f", "empty"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for p in ("a/b/c/x", "a/b/y", "a/e/z", "f/w", "top"):
        (root / p).write_bytes(p.encode() * 30)
    (root / "a/b/link").symlink_to("y")
    return root


def _queue(tmp_path: Path, src: Path, keep: dict[bytes, bytes] | None = None) -> tuple[int, dict, list]:
    """Write the queue of ``src``; ``keep``: digests to keep (path -> digest).  Returns the count,
    every directory's digest, and the entries read back."""
    seen: dict[bytes, bytes] = {}

    def settle(path: bytes, digest: bytes) -> str | None:
        seen[path] = digest
        return f"URI:DIR2-CHK:kept-{path.decode()}" if keep and keep.get(path) == digest else None

    q = tmp_path / "q"
    n = write_queue(str(q), bytes(src), scan(bytes(src), compile_rules([]), lambda p, m: None), settle)
    with QueueReader(str(q)) as r:
        return n, seen, list(r)


def test_each_directory_digest_covers_its_whole_subtree_and_nothing_else(tmp_path):
    src = _small(tmp_path / "src")
    n, before, entries = _queue(tmp_path, src)
    assert n == len(entries) == 13
    assert set(before) == {b"", b"a", b"a/b", b"a/b/c", b"a/e", b"f", b"empty"}
    assert len(set(before.values())) == 7  # (even the empty directory differs: its place is not in it)
    assert all(e.extra("tree") == before[e.path].hex().encode() for e in entries if e.kind == "d")

    # A deep file's time moves: its directory and every ancestor change, no other directory does.
    os.utime(src / "a/b/c/x", ns=(1, 2))
    _, after, _ = _queue(tmp_path, src)
    assert {p for p in before if before[p] != after[p]} == {b"a/b/c", b"a/b", b"a", b""}
    # A mode change of a directory changes its parent's digest (its line), not its own.
    os.chmod(src / "f", 0o700)
    _, third, _ = _queue(tmp_path, src)
    assert {p for p in after if after[p] != third[p]} == {b""}


def test_a_kept_directory_is_one_line_and_what_was_below_it_is_taken_out(tmp_path):
    src = _small(tmp_path / "src")
    _, digests, full = _queue(tmp_path, src)
    n, _, entries = _queue(tmp_path, src, {b"a/b": digests[b"a/b"], b"f": digests[b"f"]})
    paths = [e.path for e in entries]
    assert not any(p.startswith((b"a/b/", b"f/")) for p in paths)
    assert paths == [p for p in (e.path for e in full) if not p.startswith((b"a/b/", b"f/"))]
    assert n == len(entries) == len(full) - 5
    kept = {e.path: e for e in entries if e.extra("reuse") is not None}
    assert set(kept) == {b"a/b", b"f"}
    assert kept[b"a/b"].extra("reuse") == b"URI:DIR2-CHK:kept-a/b"
    # files, directories, symlinks, specials, bytes below it
    assert kept[b"a/b"].extra("settled") == f"2,1,1,0,{len(b'a/b/c/x') * 30 + len(b'a/b/y') * 30}".encode()
    assert kept[b"f"].extra("settled") == f"1,0,0,0,{len(b'f/w') * 30}".encode()

    # The whole tree kept: the queue is its root alone.
    n, _, entries = _queue(tmp_path, src, {b"": digests[b""], b"a": digests[b"a"]})
    assert n == 1 and entries[0].path == b"" and entries[0].extra("settled") == b"5,6,1,0,%d" % sum(
        e.size for e in full if e.kind == "f")


def test_the_trees_file_round_trips_any_path_and_refuses_what_it_cannot_trust(tmp_path):
    at = str(tmp_path / "trees")
    odd = b"dir\nwith\ttabs \xff"
    dirs = [(odd + b"/sub", b"\1" * 32, "URI:DIR2-CHK:s"), (odd, b"\2" * 32, "URI:DIR2-CHK:o"),
            (b"other", b"\3" * 32, "URI:DIR2-CHK:t"), (b"", b"\4" * 32, "URI:DIR2-CHK:r")]
    t = subtrees.Trees("URI:DIR2-CHK:snap", 7, "fp", 2, ("URI:CHK:i",), frozenset({"URI:CHK:p"}), frozenset(), dirs)
    subtrees.save(at, t)
    assert stat.S_IMODE(os.stat(at).st_mode) == 0o600  # it holds caps
    back = subtrees.load(at, "fp")
    assert back is not None and back.dirs == dirs and back.index == ("URI:CHK:i",) and back.chain == 2
    assert back.cap(odd, b"\2" * 32) == "URI:DIR2-CHK:o" and back.cap(odd, b"\1" * 32) is None
    assert [p for p, _, _ in back.subtree(odd)] == [odd + b"/sub", odd]
    assert [p for p, _, _ in back.subtree(b"")] == [p for p, _, _ in dirs]
    assert back.subtree(b"missing") == []
    assert subtrees.load(at, "other settings") is None
    with open(at, "r+b") as f:  # cut short: not trusted
        f.truncate(os.path.getsize(at) - 20)
    assert subtrees.load(at, "fp") is None
    assert subtrees.load(str(tmp_path / "none"), "fp") is None


# -- the uploader, over fakes -----------------------------------------------------------------------
async def _upload(src: Path, gw, cache, tmp_path: Path, trees: subtrees.Trees | None = None):
    from builders import uploader

    from lafs_backup.read.reader import Reader

    q = tmp_path / "queue"
    kept: list[bytes] = []

    def settle(path: bytes, digest: bytes) -> str | None:
        cap = trees.cap(path, digest) if trees is not None else None
        if cap is not None:
            kept.append(path)
        return cap

    write_queue(str(q), bytes(src), scan(bytes(src), compile_rules([]), lambda p, m: None), settle)
    records = None
    if trees is not None and kept:
        reader = Reader(gw)
        await reader.load_index(list(trees.index))
        records = subtrees.Records(trees, reader.index)
        up, _ = uploader(src, gw, cache, settled=trees, records=records)
        up.store.packs_used |= trees.packs
    else:
        up, _ = uploader(src, gw, cache)
    with QueueReader(str(q)) as r:
        cap = await up.run(r)
    made = subtrees.Trees(cap, 1, "fp", 1, up.index_caps, frozenset(up.store.packs_used), frozenset(), up.trees)
    return cap, up, made


@pytest_twisted.ensureDeferred
async def test_kept_subtrees_make_the_very_snapshot_and_index_a_full_decision_makes(tmp_path):
    from fakes import FakeCache, FakeGateway
    from builders import tree

    src = tree(tmp_path / "src", dirs=4, files=6)
    gw, cache = FakeGateway(), FakeCache()
    cap1, up1, trees1 = await _upload(src, gw, cache, tmp_path)
    assert len(trees1.dirs) == up1.stats.dirs  # every directory stored without a problem is listed

    (src / "d2" / "deeper" / "f3.txt").write_text("changed")
    cap2, up2, trees2 = await _upload(src, gw, cache, tmp_path, trees1)
    assert up2.stats.subtrees_kept == 3  # d0, d1 and d3, whole; d2/deeper and d2 and the root are made
    assert up2.stats.files == 48 and up2.stats.files_changed == 1
    # The same change decided entry by entry (no trees): the same snapshot, the same index.
    cap3, up3, trees3 = await _upload(src, gw, cache, tmp_path)
    assert up3.stats.subtrees_kept == 0
    assert cap3 == cap2 and up3.index_caps == up2.index_caps and trees3.dirs == trees2.dirs

    # Nothing changed: the root is kept, and with it the previous index, without reading it.
    before = dict(gw.counts)
    cap4, up4, _ = await _upload(src, gw, cache, tmp_path, trees2)
    assert cap4 == cap2 and up4.stats.subtrees_kept == 1 and up4.index_caps == up2.index_caps
    assert up4.stats.files_unchanged == 48 and up4.stats.entries_kept == up1.stats.entries_done - 1
    assert gw.counts.get("put", 0) == before.get("put", 0)


@pytest_twisted.ensureDeferred
async def test_a_directory_with_an_entry_that_was_not_stored_is_not_listed_so_the_next_backup_retries(
        tmp_path, monkeypatch):
    from fakes import FakeCache, FakeGateway
    from builders import tree, uploader

    src = tree(tmp_path / "src", dirs=3, files=2)
    gw, cache = FakeGateway(), FakeCache()
    q = tmp_path / "queue"
    write_queue(str(q), bytes(src), scan(bytes(src), compile_rules([]), lambda p, m: None), lambda p, d: None)
    (src / "d1" / "deeper" / "f0.txt").unlink()  # gone between the walk and the upload
    up, _ = uploader(src, gw, cache)
    with QueueReader(str(q)) as r:
        await up.run(r)
    assert up.rep.stats.warnings == 1
    listed = {p for p, _, _ in up.trees}
    assert listed == {b"d0", b"d0/deeper", b"d2", b"d2/deeper"}  # not d1/deeper, d1 or the root


# -- on the real grid -------------------------------------------------------------------------------
def _backup(lb, src: Path) -> dict:
    r = lb("--json", "backup", str(src), check=True)
    return json.loads(r.out.splitlines()[-1])


def test_an_unchanged_rerun_keeps_the_whole_tree_and_a_change_keeps_what_is_around_it(grid, home, lb, tmp_path):
    src = make_tree(tmp_path / "src", small=200, medium=3, large=1)
    first = _backup(lb, src)
    assert first["subtrees_kept"] == 0
    entries = first["entries_scanned"]

    again = _backup(lb, src)
    assert again["cap"] == first["cap"]
    assert again["subtrees_kept"] == 1 and again["entries_kept"] == entries - 1
    assert again["files_unchanged"] == first["files"] and again["dirs"] == first["dirs"]
    assert again["index_chunks"] == first["index_chunks"] and again["index_chunks_new"] == 0
    assert set(again["requests"]) <= {"get", "link", "status"}, again["requests"]  # nothing stored

    # One file deep down changes, one is added elsewhere.
    deep = max((p for p in src.rglob("*") if p.is_file() and not p.is_symlink()), key=lambda p: len(p.parts))
    deep.write_bytes(b"changed " * 100)
    other = next(p for p in sorted(src.iterdir()) if p.is_dir() and p.name != deep.relative_to(src).parts[0])
    (other / "new-file").write_bytes(b"new " * 50)
    third = _backup(lb, src)
    assert third["subtrees_kept"] >= 1 and third["files_changed"] == 1 and third["files_new"] == 1
    assert third["files"] == first["files"] + 1
    restored_ok(grid.url, home, src, tmp_path / "restored")
    r = lb("verify", "--sample", "100", "latest")
    assert r.code == 0, r.err

    # The same tree decided entry by entry (no record of the last backup's directories): the very
    # same snapshot.
    for p in (home / "state" / "lafs-backup").glob("*.trees.*"):
        p.unlink()
    fourth = _backup(lb, src)
    assert fourth["subtrees_kept"] == 0 and fourth["cap"] == third["cap"]


def test_a_forgotten_backup_is_never_built_on_and_a_chain_ends(grid, home, lb, tmp_path):
    src = make_tree(tmp_path / "src", small=60, medium=1, large=0)
    _backup(lb, src)
    (src / "extra").write_bytes(b"x" * 300)
    second = _backup(lb, src)
    assert second["subtrees_kept"] >= 1
    # The backup the trees file describes is forgotten: the next one keeps nothing of it.
    lb("cleanup", str(second["generation"]), check=True)
    third = _backup(lb, src)
    assert third["subtrees_kept"] == 0 and third["cap"] == second["cap"]
    restored_ok(grid.url, home, src, tmp_path / "r1")

    # Every CHAIN_MAX-th backup decides every entry again (unused objects are released then).
    kept = [_backup(lb, src)["subtrees_kept"] for _ in range(subtrees.CHAIN_MAX)]
    assert kept == [1] * (subtrees.CHAIN_MAX - 1) + [0], kept


@pytest.mark.parametrize("mode", ["checksum"])
def test_other_modes_decide_every_entry(grid, home, lb, tmp_path, mode):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    _backup(lb, src)
    _backup(lb, src)
    r = lb("--json", "backup", "--mode", mode, str(src), check=True)
    assert json.loads(r.out.splitlines()[-1])["subtrees_kept"] == 0


def test_a_queue_that_keeps_directories_is_uploaded_again_only_with_the_record_it_was_made_from(
        grid, home, lb, tmp_path):
    import shutil

    src = make_tree(tmp_path / "src", small=40, medium=1, large=0)
    _backup(lb, src)
    second = _backup(lb, src)
    assert second["subtrees_kept"] == 1
    queue = next((home / "state" / "lafs-backup" / "queues").glob("*.queue"))
    kept_queue = tmp_path / "kept.queue"
    shutil.copy(queue, kept_queue)
    # The same queue uploaded again: the same snapshot, every entry counted.
    again = json.loads(lb("--json", "backup", str(src), "--reuse-queue", str(kept_queue), check=True)
                       .out.splitlines()[-1])
    assert again["cap"] == second["cap"] and again["files"] == second["files"]
    # A later backup records other caps (a file changed below a kept directory): the old queue is
    # refused, naming what to do, rather than uploaded without what its kept directories use.
    deep = max((p for p in src.rglob("*") if p.is_file()), key=lambda p: len(p.parts))
    deep.write_bytes(b"changed")
    _backup(lb, src)
    r = lb("backup", str(src), "--reuse-queue", str(kept_queue))
    assert r.code != 0 and "without --reuse-queue" in r.err, r.err
