"""The uploader (the scheduler) with an in-memory gateway and a Clock: order, bounds, reuse, failure."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from builders import run, tree, uploader
from fakes import FakeCache, FakeGateway
from lafs_backup.filters import compile_rules
from lafs_backup.backup.source import LocalSource
from lafs_backup.backup.upload import Budget, Settings, Uploader
from lafs_backup.errors import GatewayError
from lafs_backup.report import Reporter
from lafs_backup.store.store import Store, StoreSettings


@pytest_twisted.ensureDeferred
async def test_a_tree_becomes_one_snapshot_and_an_unchanged_rerun_sends_nothing(tmp_path):
    root = tree(tmp_path / "src")
    gw, cache = FakeGateway(), FakeCache()
    cap, up = await run(root, gw, cache)
    listing = json.loads(gw.dirs[cap])
    assert set(listing) == {"tree", "objects", "index"}  # the source root, the packs it uses, its index
    s = up.stats
    assert (s.files, s.files_new, s.dirs, s.symlinks) == (24, 24, 7, 1) and s.packs == 1
    before = dict(gw.counts)
    cap2, up2 = await run(root, gw, cache)
    assert cap2 == cap and dict(gw.counts) == before  # settled from the cache, no request at all
    assert up2.stats.files_unchanged == 24 and up2.stats.dirs_unchanged == 7 + 3  # and objects, index, root


@pytest_twisted.ensureDeferred
async def test_what_progress_reads_bytes_to_store_storing_and_sent(tmp_path):
    """New and changed files count in the bytes to store as they are handed to the saver, and in the bytes
    being stored until they are done; unchanged ones never; the bytes sent are the gateway's, this run's."""
    root = tree(tmp_path / "src")
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    total = sum(p.stat().st_size for p in files)
    gw, cache = FakeGateway(), FakeCache()
    _, up = await run(root, gw, cache)
    assert up.stats.bytes_to_store == total and up.bytes_storing == 0
    assert up.bytes_sent == gw.bytes_sent > 0
    changed = files[0]
    changed.write_bytes(changed.read_bytes() + b"more")
    sent = gw.bytes_sent
    _, up2 = await run(root, gw, cache)
    assert up2.stats.bytes_to_store == changed.stat().st_size and up2.bytes_storing == 0
    assert up2.bytes_sent == gw.bytes_sent - sent > 0  # (its own run's: the first run's not counted)


@pytest_twisted.ensureDeferred
async def test_the_window_bounds_the_entries_in_flight(tmp_path):
    root = tree(tmp_path / "src", dirs=1, files=10)
    gw, cache = FakeGateway(), FakeCache()
    gw.hold = True
    up, src = uploader(root, gw, cache, window=3)
    entries = list(src.walk(compile_rules([]), lambda p, m: None, lambda k, m: None))
    store = up.store
    store.settings = StoreSettings(pack_max_file_size=0)  # one upload per file: each a task in flight
    up.saver._small_max = 0
    d = Deferred.fromCoroutine(up.run(entries))
    while not d.called:
        assert gw.in_flight <= 3
        gw.release()
        await _turn()
    assert gw.most_in_flight <= 3
    await d


@pytest_twisted.ensureDeferred
async def test_deeper_directories_ask_for_their_slot_first(tmp_path):
    root = tree(tmp_path / "src", dirs=2, files=1)
    gw, cache = FakeGateway(), FakeCache()
    await run(root, gw, cache)
    # d0/deeper and d1/deeper (depth 2) ask with priority -2, d0 and d1 with -1, the root with 0.
    assert sorted(p for p in gw.priorities if p < 0) == [-2, -2, -1, -1]


@pytest_twisted.ensureDeferred
async def test_a_fatal_error_halts_the_run_and_nothing_more_is_sent(tmp_path):
    root = tree(tmp_path / "src", dirs=2, files=3)
    gw, cache = FakeGateway(), FakeCache()
    gw.fail[("mkdir", 1)] = 400
    with pytest.raises(GatewayError):
        await run(root, gw, cache)
    assert isinstance(gw.halted, GatewayError)


@pytest_twisted.ensureDeferred
async def test_the_byte_budget_waits_in_order_and_asks_for_relief():
    starved = []
    b = Budget(100, lambda: starved.append(1))
    assert await b.take(60) == 60
    d1 = Deferred.fromCoroutine(b.take(50))
    d2 = Deferred.fromCoroutine(b.take(10))  # would fit, but waits its turn behind d1
    assert not d1.called and not d2.called and starved
    b.give(60)
    assert d1.called and d2.called and b.free == 40


async def _turn():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_files_decided_ahead_are_decided_as_one_by_one(tmp_path):
    """A batch of files decided together comes to the decisions one at a time would: unchanged,
    known only without its inode (a rebuilt cache), changed since the walk, vanished."""
    from lafs_backup.store.snapshot import file_key

    root = tree(tmp_path / "src")
    gw, cache = FakeGateway(), FakeCache()
    await run(root, gw, cache)
    up, src = uploader(root, gw, cache)
    entries = list(src.walk(compile_rules([]), lambda p, m: None, lambda k, m: None))
    files = [e for e in entries if e.kind == "f"]
    rebuilt, changed, vanished = files[0], files[1], files[2]
    st = src.lstat(rebuilt.path)
    hit = cache.rows.pop(file_key(rebuilt.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    cache.rows[file_key(rebuilt.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, None)] = hit
    (root / changed.path.decode()).write_text("changed since the walk")
    (root / vanished.path.decode()).unlink()
    one = uploader(root, gw, cache)[0].saver
    expected = {e.path: one.decide(e) for e in files}
    assert list(up.saver.ahead(entries, size=5)) == entries
    assert {e.path: up.saver.decide(e) for e in files} == expected
    actions = {e.path: expected[e.path][0].action for e in (rebuilt, changed, vanished)}
    assert actions == {rebuilt.path: "unchanged", changed.path: "read", vanished.path: "skip"}
    assert up.saver.decider._ahead == {}


@pytest_twisted.ensureDeferred
async def test_small_files_queued_behind_slow_large_ones_never_run_out_of_stack(tmp_path):
    """Hundreds of small files wait for an open-file slot while large ones upload slowly: each
    starts in a turn of its own when a slot is given back (each woke the next inside the one
    before, until the stack ran out and the backup waited forever)."""
    import os

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    root = tmp_path / "src"
    root.mkdir()
    for i in range(3000):
        (root / f"s{i:05d}").write_bytes(os.urandom(2000))
        if i % 100 == 0:
            (root / f"s{i:05d}.big").write_bytes(os.urandom(1100 << 10))  # above the pack limit
    gw, cache = FakeGateway(), FakeCache()
    put = gw.put_file

    async def slowly(*args, **kw):
        await deferLater(reactor, 0.2, lambda: None)
        return await put(*args, **kw)

    gw.put_file = slowly
    src = LocalSource(bytes(root))
    rep = Reporter()
    store = Store(gw, cache, 1, StoreSettings(), rep.stats, clock=reactor)
    up = Uploader(src, store, cache, 1, rep, Settings(), clock=reactor)
    entries = list(src.walk(compile_rules([]), lambda p, m: None, lambda k, m: None))
    done = Deferred.fromCoroutine(up.run(entries))
    done.addTimeout(60, reactor)
    cap = await done
    assert cap in gw.dirs and rep.stats.files == 3030 and rep.stats.warnings == 0


@pytest_twisted.ensureDeferred
async def test_a_run_of_small_files_keeps_each_files_outcome(tmp_path, monkeypatch):
    """New small files go through runs read in a thread: a file that vanished after the walk is
    skipped with the one-file path's warning, the others are stored, and the rerun finds them all
    unchanged."""
    from lafs_backup.backup import batch

    runs = []
    reader = batch.read_small_files
    monkeypatch.setattr(batch, "read_small_files", lambda source, es, enc: runs.append(len(es)) or reader(source, es, enc))
    root = tree(tmp_path / "src", dirs=2, files=5)
    gw, cache = FakeGateway(), FakeCache()
    up, src = uploader(root, gw, cache)
    warned = []
    up.rep.warn = lambda path, message: warned.append((path, message))
    entries = list(src.walk(compile_rules([]), lambda p, m: None, lambda k, m: None))
    files = [e for e in entries if e.kind == "f"]
    (root / files[3].path.decode()).unlink()
    await up.run(entries)
    assert warned == [(files[3].path, "skipped: it vanished since the scan")]
    assert sum(runs) == len(files) and len(runs) < len(files)  # (every file in a run, several to a run)
    assert up.stats.files == len(files) and up.stats.files_new == len(files) - 1
    _, again = await run(root, gw, cache)
    assert again.stats.files_unchanged == len(files) - 1 and again.stats.files_new == 0
