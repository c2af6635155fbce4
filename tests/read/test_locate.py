"""A directory found through the few index chunks on its path, not the whole index (read.locate).

A tree whose directories live in its index alone, made by the real uploader
on a fake gateway, with chunks made small so that its index has many: every
directory is found with the same entries as a reader that loads the whole
index, from a few chunks; a path that is not there is said so; and an index
whose chunks are out of the expected order gives either the right entry or
None (then the whole index is loaded), never a wrong one.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from builders import run
from fakes import FakeCache, FakeGateway
from lafs_backup.errors import SnapshotError
from lafs_backup.read.browse import Browser
from lafs_backup.read.reader import Reader
from lafs_backup.store import index
from lafs_backup.store.entry import KIND_DIR
from lafs_backup.store.snapshot import index_body, index_caps
from lafs_backup.read.locate import Locator, Paths


def _tree(root):
    """Three levels: 6 top directories of 8 subdirectories of 25 files (and files beside them)."""
    for a in range(6):
        for b in range(8):
            sub = root / f"a{a}" / f"b{b:02d}"
            sub.mkdir(parents=True)
            for f in range(25):
                (sub / f"f{f:02d}").write_text(f"{a} {b} {f}\n")
        (root / f"a{a}" / "note.txt").write_text(f"note {a}\n")
    (root / "top.txt").write_text("top\n")
    return root


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(index, "CHUNK_MIN", 1500)
    monkeypatch.setattr(index, "CHUNK_AVG", 3000)


async def _listing(browser: Browser, item) -> list[tuple[bytes, str, int]]:
    return sorted((c.path, c.kind, c.size()) for c in await browser.children(item))


def _dirs(src) -> list[bytes]:
    return [b""] + [p.relative_to(src).as_posix().encode() for p in sorted(src.rglob("*")) if p.is_dir()]


@pytest_twisted.ensureDeferred
async def test_each_directory_is_found_from_a_few_chunks(tmp_path, small_chunks):
    src = _tree(tmp_path / "src")
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    whole = Reader(gw)
    every = Browser(whole)
    chunks = index_caps(await gw.get_json(json.loads(gw.dirs[cap])["index"][1]["ro_uri"]))
    assert len(chunks) > 20
    loads: list[int] = []
    for rel in _dirs(src):
        reader = Reader(gw)
        browser = Browser(reader)
        loc = Locator(reader, browser, cap)
        assert await loc.open()
        item = await loc.path(rel)
        assert item is not None and item.kind == KIND_DIR and item.path == rel
        assert await _listing(browser, item) == await _listing(every, await every.lookup(cap, rel))
        loads.append(loc.loaded)
        reader.close()
    # (a directory's subtree is found by interpolation among its siblings: a few chunks a level, a
    # dozen at worst here, where no chunk of the levels above bounds it from below)
    assert max(loads) <= len(chunks) // 3 and sum(loads) / len(loads) <= len(chunks) / 6, (loads, len(chunks))
    # A file is found too; a path that is not there is said so, from its parent's listing.
    reader = Reader(gw)
    loc = Locator(reader, Browser(reader), cap)
    assert await loc.open()
    found = await loc.path(b"a3/b05/f07")
    assert found is not None and found.kind == "f" and found.size() == len(b"3 5 7\n")
    with pytest.raises(SnapshotError):
        await loc.path(b"a3/b99")
    with pytest.raises(SnapshotError):
        await loc.path(b"a3/note.txt/x")
    for r in (reader, whole):
        r.close()


@pytest_twisted.ensureDeferred
async def test_chunks_out_of_order_give_the_right_entry_or_none(tmp_path, small_chunks):
    src = _tree(tmp_path / "src")
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    root = json.loads(gw.dirs[cap])
    chunks = index_caps(await gw.get_json(root["index"][1]["ro_uri"]))
    # The same chunks linked in another order (the last, which holds the root, still last).
    shuffled = chunks[1:-1][::-1]
    shuffled = shuffled[len(shuffled) // 2:] + shuffled[:len(shuffled) // 2] + [chunks[0], chunks[-1]]
    gw.dirs[root["index"][1]["ro_uri"]] = index_body(shuffled)
    whole = Reader(gw)
    every = Browser(whole)
    nones = 0
    for rel in _dirs(src):
        reader = Reader(gw)
        browser = Browser(reader)
        loc = Locator(reader, browser, cap)
        assert await loc.open()
        item = await loc.path(rel)
        if item is None:
            nones += 1
        else:
            assert await _listing(browser, item) == await _listing(every, await every.lookup(cap, rel))
        reader.close()
    whole.close()
    assert nones > 0  # (the order misled some searches: they gave up rather than guess)


async def _walk(browser: Browser, item) -> list[tuple[bytes, str, int]]:
    return [(c.path, c.kind, c.size()) async for c in browser.walk(item)]


@pytest_twisted.ensureDeferred
async def test_a_subtree_is_read_from_its_own_chunks(tmp_path, small_chunks):
    """``Paths.lookup(below=True)`` loads the chunks of the subtree alone, and a walk below it
    gives what a reader of the whole index gives (found there, not by loading the rest)."""
    src = _tree(tmp_path / "src")
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    chunks = index_caps(await gw.get_json(json.loads(gw.dirs[cap])["index"][1]["ro_uri"]))
    whole = Reader(gw)
    every = Browser(whole)
    for rel in (b"a0", b"a3", b"a5", b"a2/b07", b""):
        reader = Reader(gw, use_index=False)  # (as ls and dump make it for one path)
        browser = Browser(reader)
        item = await Paths(browser).lookup(cap, rel, below=True)
        assert item.path == rel and item.kind == KIND_DIR
        held = reader.index.chunks if reader.index is not None else 0
        assert await _walk(browser, item) == await _walk(every, await every.lookup(cap, rel))
        assert reader.index is not None and reader.index.chunks == held, rel  # (nothing more was loaded)
        if rel:
            assert held < len(chunks) // 3, (rel, held, len(chunks))
        reader.close()
    whole.close()


@pytest_twisted.ensureDeferred
async def test_paths_out_of_order_still_give_the_right_entries(tmp_path, small_chunks):
    """With the chunks out of the expected order, a path and the walk below it are still right:
    the locator gives up and the whole index is loaded, or a directory below that is not among
    the chunks loaded loads the rest."""
    src = _tree(tmp_path / "src")
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache(), tree="index")
    root = json.loads(gw.dirs[cap])
    chunks = index_caps(await gw.get_json(root["index"][1]["ro_uri"]))
    shuffled = chunks[1:-1][::-1]
    shuffled = shuffled[len(shuffled) // 2:] + shuffled[:len(shuffled) // 2] + [chunks[0], chunks[-1]]
    gw.dirs[root["index"][1]["ro_uri"]] = index_body(shuffled)
    whole = Reader(gw)
    every = Browser(whole)
    paths = [rel for rel in _dirs(src)][::7] + [b"a3/b05/f07"]
    for rel in paths:
        reader = Reader(gw, use_index=False)
        browser = Browser(reader)
        item = await Paths(browser).lookup(cap, rel, below=True)
        want = await every.lookup(cap, rel)
        assert (item.path, item.kind, item.size()) == (want.path, want.kind, want.size())
        assert await _walk(browser, item) == await _walk(every, want)
        reader.close()
    reader = Reader(gw, use_index=False)
    with pytest.raises(SnapshotError):
        await Paths(Browser(reader)).lookup(cap, b"a3/b99")
    reader.close()
    whole.close()
