"""Packs, content dedup, compression and LIT caps against the real grid: everything restores byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted

from gridtree import edges, listing
from treecompare import differences

MARKER = "this-file-is-in-a-pack--restore-it-with-lafs-backup"
TREE_MARKER = "this-tree-is-in-the-snapshot-index--browse-or-restore-it-with-lafs-backup"


def build(root: Path) -> None:
    rnd = os.urandom
    (root / "a" / "b").mkdir(parents=True)
    (root / "tiny.txt").write_bytes(b"small enough for a LIT cap")  # <= 55 bytes
    (root / "empty").write_bytes(b"")
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(400))
    (root / "a" / "notes.txt").write_bytes(text)
    (root / "a" / "b" / "copy-of-notes.txt").write_bytes(text)  # duplicate content
    (root / "a" / "random.bin").write_bytes(rnd(20000))  # incompressible: stored raw
    (root / "a" / "photo.jpg").write_bytes(text[:5000])  # excluded from compression by name
    (root / "big-text.log").write_bytes(text * 200)  # above max_file_size, compressible
    (root / "big-random.img").write_bytes(rnd(3 << 20))  # above max_file_size, raw


@pytest.mark.parametrize("method,tree", [("lz4", "index"), ("xz", "index"), ("lz4", "tahoe")])
def test_packed_deduplicated_compressed_and_lit_entries_restore(lb, grid, tmp_path, method, tree):
    src = tmp_path / "src"
    build(src)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"destination:\n  tree: {tree}\n  pack:\n    max_file_size: 1048576\n"
                    f"  encoding:\n    method: {method}\n")
    r = lb("-c", str(conf), "--json", "backup", str(src), check=True)
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["files_lit"] == 2
    assert summary["files_deduplicated"] == 1
    assert summary["bytes_compression_saved"] > len(b"line 0") * 400 * 100
    assert summary["packs"] == 1
    cap = summary["cap"]

    top = edges(grid.url, cap, "")
    a = edges(grid.url, cap, "a")
    assert top["tiny.txt"][1]["ro_uri"].startswith("URI:LIT:")
    notes = a["notes.txt"][1]["metadata"]
    assert notes["enc"] == method and notes["size"] == (src / "a" / "notes.txt").stat().st_size
    assert notes["pack"]["length"] < notes["size"] / 3
    assert notes["pack"]["cap"].startswith("URI:CHK:") and notes["sha256"]
    assert "enc" not in a["random.bin"][1]["metadata"] and "pack" in a["random.bin"][1]["metadata"]
    assert "enc" not in a["photo.jpg"][1]["metadata"]
    big = top["big-text.log"][1]["metadata"]
    assert big["enc"] == method and big["object"].startswith("URI:CHK:")
    assert top["big-random.img"][1]["ro_uri"].startswith("URI:CHK:")  # plain: exactly its bytes
    assert "enc" not in top["big-random.img"][1]["metadata"]
    if tree == "tahoe":
        # Packed and encoded files point at the marker directory, never at wrong bytes.
        assert a["notes.txt"][0] == "dirnode" and MARKER in listing(grid.url, a["notes.txt"][1]["ro_uri"])
    else:
        # No Tahoe directory is made for the tree: `tree` is a note, and the root is an index record.
        assert list(listing(grid.url, listing(grid.url, cap)["tree"][1]["ro_uri"])) == [TREE_MARKER]
        assert summary["dirs_indexed"] == 3 and summary["dirs_new"] == 4  # root, index, objects, the note

    out = tmp_path / "out"
    lb("restore", cap, "--target", str(out), check=True)
    assert differences(src, out) == []

    # A single packed file alone (one Range GET) and a single encoded large file.
    part = tmp_path / "part"
    lb("restore", cap, "a/b/copy-of-notes.txt", "big-text.log", "--target", str(part), check=True)
    assert (part / "a" / "b" / "copy-of-notes.txt").read_bytes() == (src / "a" / "notes.txt").read_bytes()
    assert (part / "big-text.log").read_bytes() == (src / "big-text.log").read_bytes()


@pytest.mark.parametrize("tree", ["index", "tahoe"])
def test_every_pack_and_object_is_reachable_for_deep_check(lb, grid, tmp_path, tree):
    src = tmp_path / "src"
    build(src)
    (src / "long-link").symlink_to("t" * 80)  # a target too long for a LIT cap
    conf = tmp_path / "c.yaml"
    conf.write_text(f"destination:\n  tree: {tree}\n")
    cap = lb("-c", str(conf), "backup", str(src), check=True).out.strip()
    req = urllib.request.Request(grid.url + "uri/" + cap + "?t=stream-manifest", method="POST")
    lines = [json.loads(ln) for ln in urllib.request.urlopen(req).read().splitlines() if ln.startswith(b"{")]
    reachable = {u["cap"] for u in lines if u.get("type") in ("file", "directory")}
    referenced, files = set(), set()
    for path in ("", "a", "a/b"):
        for name, (_, info) in edges(grid.url, cap, path).items():
            meta = info.get("metadata", {})
            if "pack" in meta:
                referenced.add(meta["pack"]["cap"])
            if "object" in meta:
                referenced.add(meta["object"])
            if not info["ro_uri"].startswith("URI:LIT:") and meta.get("type") == "file":
                files.add(info["ro_uri"])
    assert len(referenced) == 2  # one pack, one compressed object
    assert referenced <= reachable
    # A file stored as itself (big-random.img) is reached too: through its Tahoe directory, or
    # (a tree in the index alone) from the objects directory.
    # (and with Tahoe directories, the marker directory every packed file's edge points at).
    assert len(files) == (1 if tree == "index" else 2) and files <= reachable


def _tahoe_cp(grid, cap: str, dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "allmydata", "-d", str(grid.dir / "gateway"), "cp", "-r",
                    cap + "/tree", str(dest)], check=True, capture_output=True, timeout=300)


def test_packing_off_gives_a_plain_tree_that_tahoe_cp_restores(lb, grid, tmp_path):
    src = tmp_path / "src"
    build(src)
    os.unlink(src / "empty")
    conf = tmp_path / "plain.yaml"
    conf.write_text("destination:\n  pack:\n    max_file_size: 0\n")
    r = lb("-c", str(conf), "--json", "backup", str(src), check=True)
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["packs"] == 0 and summary["bytes_compression_saved"] == 0
    out = tmp_path / "cp"
    _tahoe_cp(grid, summary["cap"], out)
    for p in src.rglob("*"):
        if p.is_file():
            assert (out / "tree" / p.relative_to(src)).read_bytes() == p.read_bytes(), p


def test_tahoe_cp_of_a_tree_in_the_index_gives_a_note_saying_so(lb, grid, tmp_path):
    src = tmp_path / "src"
    build(src)
    cap = lb("backup", str(src), check=True).out.strip()
    out = tmp_path / "cp"
    _tahoe_cp(grid, cap, out)
    assert [p.name for p in (out / "tree").iterdir()] == [TREE_MARKER]
    assert (out / "tree" / TREE_MARKER).read_bytes() == b""


def test_tahoe_cp_of_a_packed_tree_never_gives_wrong_contents(lb, grid, tmp_path):
    src = tmp_path / "src"
    build(src)
    conf = tmp_path / "c.yaml"
    conf.write_text("destination:\n  tree: tahoe\n")
    cap = lb("-c", str(conf), "backup", str(src), check=True).out.strip()
    out = tmp_path / "cp"
    _tahoe_cp(grid, cap, out)
    for p in src.rglob("*"):
        if not p.is_file():
            continue
        got = out / "tree" / p.relative_to(src)
        if got.is_dir():
            assert [c.name for c in got.iterdir()] == [MARKER]
        else:
            assert got.read_bytes() == p.read_bytes(), p
    assert (out / "tree" / "a" / "notes.txt").is_dir()


@pytest_twisted.ensureDeferred
async def test_a_content_waiter_that_stores_its_own_copy_keeps_its_registration():
    """Two files with the same SHA-256 read at once; the first upload turns out to hold other
    bytes (the file changed under it), so the waiter stores its own copy.  Neither may remove
    the other's registration (before: a KeyError ended the run as an internal error)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from lafs_backup.report import Stats
    from lafs_backup.store.snapshot import Hit
    from lafs_backup.store.store import Store, StoreSettings

    class Cache:
        def store_hit(self, key, hit, gen):
            self.stored = hit

        def commit(self):
            pass

    store = Store(object(), Cache(), 1, StoreSettings(), Stats(), clock=Clock())
    sha = b"s" * 32
    first, second = Deferred(), Deferred()
    d1 = Deferred.fromCoroutine(store.content(sha, 10, None, lambda: first))
    d2 = Deferred.fromCoroutine(store.content(sha, 10, None, lambda: second))
    first.callback(Hit("URI:CHK:first", b"x" * 32))  # the first store holds other bytes
    second.callback(Hit("URI:CHK:second", sha))
    assert (await d1).cap == "URI:CHK:first"
    assert (await d2).cap == "URI:CHK:second"
    assert store._uploading == {}
