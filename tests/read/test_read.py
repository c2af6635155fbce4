"""The reader, restore, verify and diff, over an in-memory gateway holding snapshots the store made."""

from __future__ import annotations

import json
import os
import stat

import pytest_twisted

from fakes import FakeCache, FakeGateway
from lafs_backup.read.diff import Change, LiveDiff, SnapshotDiff
from lafs_backup.read.reader import Reader
from lafs_backup.read.restore import Restorer
from lafs_backup.read.verify import Verifier
from lafs_backup.report import Reporter
from lafs_backup.encoding import compile_rules
from lafs_backup.store.snapshot import Node
from builders import run, tree
from treecompare import differences


async def snapshot(root, gw=None, cache=None):
    gw, cache = gw or FakeGateway(), cache or FakeCache()
    cap, _ = await run(root, gw, cache)
    return cap, gw, cache


@pytest_twisted.ensureDeferred
async def test_restore_reads_packs_whole_and_brings_everything_back(tmp_path):
    root = tree(tmp_path / "src")
    (root / "big.bin").write_bytes(os.urandom(2 << 20))  # above the pack limit: its own object
    os.chmod(root / "d1", 0o750)
    cap, gw, _ = await snapshot(root)
    reader = Reader(gw, whole_packs=True)
    rep = Reporter()
    await Restorer(reader, rep, str(tmp_path / "out"), owners=False).run(cap)
    reader.close()
    assert differences(root, tmp_path / "out") == []
    assert gw.counts["range"] == 0  # each pack fetched once, whole
    assert rep.stats.files == 25 and rep.stats.problems == 0


@pytest_twisted.ensureDeferred
async def test_a_few_paths_use_range_reads_and_a_resumed_download_continues(tmp_path):
    root = tree(tmp_path / "src")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    cap, gw, _ = await snapshot(root)
    reader = Reader(gw, whole_packs=False)
    gw.cut_download_at = 1 << 20
    await Restorer(reader, Reporter(), str(tmp_path / "out"), owners=False).run(cap, [b"d2/g1.txt", b"big.bin"])
    assert gw.counts["range"] == 1 and gw.ranges == [1 << 20]
    assert (tmp_path / "out" / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.bin", "d2"]


@pytest_twisted.ensureDeferred
async def test_content_that_does_not_match_is_a_problem_and_not_placed(tmp_path):
    root = tree(tmp_path / "src", dirs=1, files=1)
    cap, gw, _ = await snapshot(root)
    for c, data in gw.objects.items():  # damage the pack the way a forged grid would
        gw.objects[c] = data.replace(b"file 0/0", b"FILE 0/0")
    rep = Reporter(err=open(os.devnull, "w"))
    reader = Reader(gw, whole_packs=True)
    await Restorer(reader, rep, str(tmp_path / "out"), owners=False).run(cap)
    reader.close()
    assert rep.stats.problems == 1
    assert not (tmp_path / "out" / "d0" / "deeper" / "f0.txt").exists()
    assert not [p for p in (tmp_path / "out").rglob(".lafs-restore-*")]


@pytest_twisted.ensureDeferred
async def test_reader_decodes_compressed_members_and_checks_them(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "notes.txt").write_bytes(b"compress me " * 5000)
    gw, cache = FakeGateway(), FakeCache()
    from builders import uploader
    from lafs_backup.filters import compile_rules as flt

    up, src = uploader(root, gw, cache)
    up.store.settings = type(up.store.settings)(pack_target_size=1 << 16, encoding=compile_rules("lz4", 512, []))
    cap = await up.run(list(src.walk(flt([]), lambda p, m: None, lambda k, m: None)))
    reader = Reader(gw)
    tree_node, _ = await reader.root(cap)
    (child,) = await reader.children(tree_node)
    assert child.enc == "lz4" and child.pack is not None
    got = []
    content = await reader.content(child, got.append)
    assert b"".join(got) == b"compress me " * 5000 and content.matches is True
    forged = Node(child.name, child.kind, child.cap, {**child.metadata, "sha256": "0" * 64})
    assert (await reader.content(forged, lambda c: None)).matches is False


@pytest_twisted.ensureDeferred
async def test_verify_reads_every_file_back(tmp_path):
    root = tree(tmp_path / "src", dirs=2, files=2)
    cap, gw, _ = await snapshot(root)

    async def deep_check(cap, sink, add_lease=True, repair=False, verify=False):
        sink(b'{"type": "stats", "stats": {}}\n')
    gw.stream_deep_check = deep_check
    rep = Reporter()
    v = Verifier(gw, Reader(gw, whole_packs=True), rep)
    await v.run(cap)
    assert v.files_read == 8 and rep.stats.problems == 0


@pytest_twisted.ensureDeferred
async def test_snapshot_diff_skips_identical_subtrees_and_live_diff_follows_the_source(tmp_path):
    root = tree(tmp_path / "src", dirs=3, files=2)
    gw, cache = FakeGateway(), FakeCache()
    a, _, _ = await snapshot(root, gw, cache)
    (root / "d2" / "g0.txt").write_text("changed content")
    b, _, _ = await snapshot(root, gw, cache)
    found: list[Change] = []
    reader = Reader(gw)
    before = gw.counts["get"]
    await SnapshotDiff(reader, found.append).run(a, b)
    assert [c.line() for c in found if c.path != "/d2"] == ["M /d2/g0.txt (content, mtime)"]
    assert gw.counts["get"] - before <= 6  # d0 and d1 are not listed: same caps
    live: list[Change] = []
    (root / "d0" / "new.txt").write_text("n")
    await LiveDiff(reader, bytes(root), live.append).run(b)
    assert "+ /d0/new.txt" in [c.line() for c in live]


def test_the_applier_acts_on_the_descriptor(tmp_path):
    from lafs_backup.system.meta import Applier, FdHandle, LinkHandle

    warned = []
    ap = Applier(warned.append, lambda k, m: None, owners=False, numeric=False)
    f = tmp_path / "f"
    f.write_text("x")
    fd = os.open(f, os.O_RDONLY)
    try:
        ap.apply(FdHandle(fd), {"mode": 0o100640, "mtime_ns": 1_000_000_000_123}, "f", {b"user.k": b"v"})
    finally:
        os.close(fd)
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1_000_000_000_123
    assert os.getxattr(f, "user.k") == b"v" and warned == []
    (tmp_path / "l").symlink_to("f")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ap.apply(LinkHandle(dfd, b"l"), {"mode": 0o120777, "mtime_ns": 5_000_000_000}, "l", {})
    finally:
        os.close(dfd)
    assert os.lstat(tmp_path / "l").st_mtime_ns == 5_000_000_000
    assert os.stat(f).st_mtime_ns == 1_000_000_000_123  # the link's target untouched


def test_the_reporter_speaks_text_or_json(capsys):
    import io

    out, err = io.StringIO(), io.StringIO()
    rep = Reporter(out=out, err=err)
    rep.warn(b"a/b", "skipped: gone")
    rep.advise("leases", "renew soon")
    rep.emit("M /x (mode)", {"type": "changed"})
    assert rep.stats.warnings == 1  # advice does not make a run partial
    assert "warning: a/b: skipped: gone" in err.getvalue() and "warning: renew soon" in err.getvalue()
    assert out.getvalue() == "M /x (mode)\n"
    out2 = io.StringIO()
    j = Reporter(json_mode=True, out=out2, err=io.StringIO())
    j.warn(b"a", "w")
    j.emit("ignored", {"type": "changed"})
    summary = j.finish("backup")
    lines = [json.loads(ln) for ln in out2.getvalue().splitlines()]
    assert [x["type"] for x in lines] == ["warning", "changed", "summary"] and summary["warnings"] == 1


@pytest_twisted.ensureDeferred
async def test_a_restore_of_many_directories_never_runs_out_of_stack(tmp_path):
    """Directories that wait for their listing slot, then all find their content at hand: each
    starts in a turn of its own (and packs the prefetch finds started are skipped in a loop), never inside the one that finished before it (a few hundred
    waiting, the stack ran out and the restore stopped, waiting for nothing)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    root = tmp_path / "src"
    for d in range(600):  # (fewer than 2,000 entries: the fake uploader's clock is never advanced)
        sub = root / f"d{d:04d}"
        sub.mkdir(parents=True)
        (sub / "packed").write_bytes(os.urandom(40 << 10))  # (a pack or two each: hundreds of packs)
        (sub / "inline").write_bytes(b"y")
    cap, gw, _ = await snapshot(root)
    real = gw.download

    async def later(*args, **kw):  # packs arrive a moment later, as from a real gateway
        await deferLater(reactor, 0.01, lambda: None)
        return await real(*args, **kw)

    gw.download = later
    reader = Reader(gw, whole_packs=True)
    rep = Reporter()
    done = Deferred.fromCoroutine(Restorer(reader, rep, str(tmp_path / "out"), window=16, owners=False,
                                           clock=reactor).run(cap))
    done.addTimeout(60, reactor)
    await done
    reader.close()
    assert differences(root, tmp_path / "out") == []
    assert rep.stats.files == 1200
    # (Files that needed their pack started most downloads; the background prefetch then found
    # hundreds of packs started and skipped them, each in a loop, not each inside the one before.)
    assert gw.counts["get"] >= 300


@pytest_twisted.ensureDeferred
async def test_leaves_of_directories_the_restore_made_are_not_looked_up_again(tmp_path, monkeypatch):
    """A directory the restore made was empty: its leaves skip the overwrite policy's lookup (their
    O_EXCL create still refuses anything that appeared), and every one is written.  A target that
    already held a directory has each of its leaves decided by the policy."""
    from lafs_backup.read.overwrite import Existing

    root = tree(tmp_path / "src")
    cap, gw, _ = await snapshot(root)
    asked: list[bytes] = []
    decide = Existing.decide

    async def counting(self, node, dfd, rel):
        asked.append(rel)
        return await decide(self, node, dfd, rel)

    monkeypatch.setattr(Existing, "decide", counting)
    reader = Reader(gw, whole_packs=True)
    rep = Reporter()
    await Restorer(reader, rep, str(tmp_path / "new" / "out"), owners=False).run(cap)
    assert differences(root, tmp_path / "new" / "out") == []
    assert asked == [] and rep.stats.files == 24
    (tmp_path / "kept" / "d1").mkdir(parents=True)
    asked.clear()
    rep = Reporter()
    restorer = Restorer(reader, rep, str(tmp_path / "kept"), owners=False)
    await restorer.run(cap)
    reader.close()
    assert differences(root, tmp_path / "kept") == []
    leaves = {str(p.relative_to(root)).encode() for d in (root, root / "d1") for p in d.iterdir()
              if p.is_symlink() or not p.is_dir()}
    assert sorted(asked) == sorted(leaves) and len(asked) < rep.stats.files + rep.stats.symlinks
    assert restorer.counts.written == rep.stats.files + rep.stats.symlinks
