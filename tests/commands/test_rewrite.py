"""lafs-backup rewrite through the real CLI against the real local grid, for both tree kinds: the
removed file is in no listing, no find, no dump and no index chunk of the new snapshot; everything
else restores identically; the new record carries the original's time, host and tags and a note;
--forget forgets the original (and without it both are kept); check still passes; --dry-run
lists and changes nothing; a snapshot where nothing matches is left alone."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from conftest import check_ok, cli_env, json_lines
from treecompare import describe_tree

pytestmark = pytest.mark.slow

MARK = b"TOP-SECRET-7f3a9c"


def make_source(root: Path) -> Path:
    """A small tree with two secret.txt (one stored as an object in a pack, one in its LIT cap) and
    a 1.5 MiB ISO (an object of its own), among files that stay."""
    rng = random.Random(31)
    for d in ("notes", "deep/er", "docs", "empty"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (root / ("docs" if i % 2 else "notes") / f"f{i:02d}.txt").write_bytes(rng.randbytes(200 + 300 * i))
    (root / "notes" / "secret.txt").write_bytes(MARK + b" the password is hunter2\n" * 80)
    (root / "deep" / "er" / "secret.txt").write_bytes(MARK[:20])
    (root / "deep" / "er" / "kept.txt").write_bytes(b"kept\n" * 30)
    (root / "big.iso").write_bytes(rng.randbytes(3 << 19))
    os.symlink("notes/f00.txt", root / "link")
    return root


def listing(url: str, cap: str) -> dict:
    with urllib.request.urlopen(f"{url}uri/{cap}?t=json") as r:
        return json.load(r)[1]["children"]


def index_bytes(url: str, cap: str) -> bytes:
    """Every index chunk of snapshot ``cap``, decompressed and joined (its raw records)."""
    from lafs_backup.store.index import decompress
    from lafs_backup.store.snapshot import index_caps

    idx = listing(url, cap).get("index")
    if idx is None:
        return b""
    with urllib.request.urlopen(f"{url}uri/{idx[1]['ro_uri']}?t=json") as r:
        chunks = index_caps(json.load(r))
    out = b""
    for chunk in chunks:
        with urllib.request.urlopen(f"{url}uri/{chunk}") as r:
            out += decompress(r.read())
    return out


def reachable(url: str, cap: str) -> set[str]:
    """The caps of every object reachable from ``cap`` (what `check` renews)."""
    req = urllib.request.Request(f"{url}uri/{cap}?t=stream-manifest", method="POST")
    with urllib.request.urlopen(req) as r:
        lines = [json.loads(line) for line in r.read().splitlines() if line.startswith(b"{")]
    return {x["cap"] for x in lines if x.get("cap")}  # (the last line is the stats)


def dump(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``dump`` through the real CLI, its tar stream as bytes."""
    return subprocess.run([sys.executable, "-m", "lafs_backup", "--url", url, "dump", *args, "--force"],
                          env=cli_env(home), capture_output=True, timeout=300)


def backups(lb) -> list[dict]:
    return [b for b in json_lines(lb("--json", "list", check=True).out) if b.get("type") == "backup"]


@pytest.mark.parametrize("tree", ["index", "tahoe"])
def test_rewrite_removes_a_file_everywhere_and_keeps_the_rest(lb, grid, home, tmp_path, tree):
    src = make_source(tmp_path / "src")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"destination:\n  tree: {tree}\n")
    c = ["-c", str(conf)]
    lb(*c, "backup", str(src), "--tag", "daily", check=True)
    [old] = backups(lb)
    assert b"secret.txt" in index_bytes(grid.url, old["cap"])
    old_objects = reachable(grid.url, old["cap"])

    # --dry-run lists what would go, with sizes, and writes nothing.
    before = grid.requests()
    r = lb(*c, "rewrite", "latest", "--exclude", "secret.txt", "--exclude", "*.iso", "--dry-run", check=True)
    assert "would remove: notes/secret.txt (2.0 KiB)" in r.out or "would remove: notes/secret.txt (" in r.out
    assert "would remove: deep/er/secret.txt (" in r.out and "would remove: big.iso (1.5 MiB)" in r.out
    r = lb(*c, "--json", "rewrite", "latest", "--exclude", "secret.txt", "--exclude", "*.iso", "--dry-run",
           check=True)
    said = json_lines(r.out)
    gone = {x["path"]: x["bytes"] for x in said if x["type"] == "removed"}
    assert gone == {"notes/secret.txt": (src / "notes/secret.txt").stat().st_size,
                    "deep/er/secret.txt": len(MARK), "big.iso": 3 << 19}
    assert said[-1]["removed_bytes"] == sum(gone.values()) and said[-1]["rewritten"] == 0
    assert grid.requests()["put"] == before["put"] and grid.requests()["mkdir"] == before["mkdir"]
    assert backups(lb) == [old]

    before = grid.requests()
    r = lb(*c, "--json", "rewrite", "latest", "--exclude", "secret.txt", "--exclude", "*.iso", "--forget",
           check=True)
    said = json_lines(r.out)
    assert {x["path"] for x in said if x["type"] == "removed"} == set(gone)
    assert [x["id"] for x in said if x["type"] == "forget"] == [old["id"]]
    [made] = [x for x in said if x["type"] == "rewritten"]
    # Only what changed is written: the four directories on the way to what was removed (records of
    # the index alone in a tree kept there), the index chunks that held them, and the root's own.
    assert made["directories_made"] == 4
    sent = {k: v - before[k] for k, v in grid.requests().items()}
    assert sent["put"] == made["index_chunks_made"] >= 1
    assert sent["mkdir"] == (4 if tree == "tahoe" else 0) + 2 + (1 if made["objects_unlinked"] else 0)
    assert made["objects_unlinked"] >= (1 if tree == "index" else 0)
    [new] = backups(lb)
    assert new["id"] != old["id"] and new["cap"] != old["cap"]
    assert (new["time"], new["timestamp"], new["host"], new["source"], new["tags"], new["generation"]) == \
        (old["time"], old["timestamp"], old["host"], old["source"], old["tags"], old["generation"])
    assert new["rewritten_from"] == old["id"]
    assert f"(rewritten from {old['id']})" in lb("list", check=True).out

    # The secret is in no listing, no find, no dump, no index chunk of the new snapshot.
    listed = lb("ls", "-R", "latest", check=True).out
    assert "secret.txt" not in listed and "big.iso" not in listed and "kept.txt" in listed
    assert lb("find", "secret.txt").out.strip() == ""
    assert "notes/f00.txt" in lb("find", "f00.txt", check=True).out
    tar = dump(grid.url, home, "latest", ".")
    assert tar.returncode == 0 and b"secret.txt" not in tar.stdout and b"hunter2" not in tar.stdout
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        names = t.getnames()
    assert "deep/er/kept.txt" in [n.lstrip("./") for n in names] and not [n for n in names if "secret" in n]
    assert dump(grid.url, home, "latest", "notes/secret.txt").returncode != 0
    raw = index_bytes(grid.url, new["cap"])
    assert raw and b"secret.txt" not in raw and MARK not in raw and b"big.iso" not in raw
    # The ISO's object is no longer reachable from the new snapshot (check renews it no more).
    new_objects = reachable(grid.url, new["cap"])
    assert old_objects - new_objects and new_objects - old_objects  # (the changed directories)
    assert len(old_objects - new_objects) >= (3 if tree == "index" else 2)

    # Everything else restores identically.
    out = tmp_path / "out"
    lb("restore", "latest", "--target", str(out), check=True)
    want = describe_tree(src)
    for gone_path in (b"notes/secret.txt", b"deep/er/secret.txt", b"big.iso"):
        del want[gone_path]
    assert describe_tree(out) == want
    check_ok(grid.url, home)


def test_without_forget_both_are_kept_and_a_snapshot_without_matches_is_left_alone(lb, grid, home, tmp_path):
    src = make_source(tmp_path / "src")
    lb("backup", str(src), check=True)
    [old] = backups(lb)
    r = lb("rewrite", old["id"], "--exclude", "/notes/secret.txt", check=True)
    assert "removed: notes/secret.txt" in r.out and "deep/er" not in r.out
    assert "the originals are kept" in r.err and "immutable shares cannot be deleted" in r.err
    both = backups(lb)
    assert [b["id"] for b in both if b["rewritten_from"] is None] == [old["id"]]
    [new] = [b for b in both if b["rewritten_from"] == old["id"]]
    assert new["time"] == old["time"]
    assert "secret.txt" not in lb("ls", new["id"], "notes", check=True).out
    assert "secret.txt" in lb("ls", old["id"], "notes", check=True).out
    assert "deep/er/secret.txt" in lb("find", "secret.txt", "--snapshot", new["id"], check=True).out

    # A rerun (as after a kill before --forget) finds the same rewrite recorded, and records no other.
    r = lb("rewrite", old["id"], "--exclude", "/notes/secret.txt", check=True)
    assert f"recorded already: {old['id']}" in r.out
    assert backups(lb) == both

    before = grid.requests()
    r = lb("rewrite", new["id"], "--exclude", "/notes/secret.txt", "--forget", check=True)
    assert f"unchanged: {new['id']}" in r.out and "nothing in it matches" in r.out
    assert grid.requests()["mkdir"] == before["mkdir"] and grid.requests()["put"] == before["put"]
    assert backups(lb) == both
    r = lb("rewrite", "latest")
    assert r.code == 2 and "say what to remove" in r.err
    check_ok(grid.url, home)
