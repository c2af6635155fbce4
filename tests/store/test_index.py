"""The snapshot index: a whole snapshot's directories in a few chunks, shared across snapshots by content.

Unit tests of the chunk format and its content-defined boundaries, then a
50,000-entry tree on the real grid: restore, ls -R, find and diff read the
index instead of one listing per directory; an unchanged rerun stores no
chunk; a small change stores only the chunks around it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import pytest_twisted

from conftest import cli_env, json_lines, run_cli
from lafs_backup.store import index
from lafs_backup.store.index import BadIndex, IndexWriter, compress, records
from treecompare import differences


def _body(i: int, size: int = 900) -> bytes:
    return json.dumps({f"f{i}-{j}": ["filenode", {"ro_uri": "URI:LIT:", "metadata": {"n": j}}]
                       for j in range(size // 60)}).encode()


def _chunks(recs: list[tuple[str, bytes, bytes]]) -> list[bytes]:
    w = IndexWriter()
    out = [c for cap, body, names in recs if (c := w.add(cap, body, names)) is not None]
    last = w.finish()
    return out + ([last] if last is not None else [])


def _stream(n: int) -> list[tuple[str, bytes, bytes]]:
    return [(f"URI:DIR2-CHK:cap{i}", _body(i), b"fnames of %d" % i) for i in range(n)]


def test_records_round_trip_in_order_and_a_salt_is_ignored():
    recs = _stream(8000)
    chunks = _chunks(recs)
    assert len(chunks) > 3  # ~7 MB of records: several chunks
    assert all(len(c) <= index.CHUNK_MAX for c in chunks)
    back = [r for c in chunks for r in records(compress(c))]
    assert back == recs
    salted = compress(chunks[0]) + b"\0salt" + os.urandom(16)
    assert list(records(salted)) == list(records(compress(chunks[0])))


def test_a_directory_met_twice_is_recorded_once():
    w = IndexWriter()
    w.add("URI:DIR2-CHK:a", b"{}", b"")
    w.add("URI:DIR2-CHK:a", b"{}", b"")
    assert list(records(compress(w.finish()))) == [("URI:DIR2-CHK:a", b"{}", b"")]
    assert w.dirs == 1


def test_a_chunk_of_the_first_format_is_read_and_made_again_byte_for_byte():
    from lafs_backup.store.index import chunk_bytes

    old = msgpack.packb([1, [["URI:DIR2-CHK:a", b"{}"], ["URI:DIR2-CHK:b", b"{ }"]]], use_bin_type=True)
    recs = list(records(compress(old)))
    assert recs == [("URI:DIR2-CHK:a", b"{}", None), ("URI:DIR2-CHK:b", b"{ }", None)]
    assert chunk_bytes(recs) == old  # (a rebuilt cache keys it by these bytes)
    new = _chunks(_stream(2))[0]
    assert chunk_bytes(list(records(compress(new)))) == new


def test_names_made_from_the_children_are_the_names_of_the_body():
    from lafs_backup.store.entry import unescape
    from lafs_backup.store.snapshot import Child, body_names, child_names, dir_body

    odd = [b"plain", b"new\nline", b"tab\there", b"back\\slash", b"\xff\xfe bytes", b" lead", b"trail ",
           "e\u0301".encode(), "\u00e9".encode(), b"sub", b"link", b"z" * 200]
    kinds = {b"sub": ("dir", "URI:DIR2-CHK:sub"), b"link": ("symlink", "URI:LIT:abc")}
    children = [Child(n, kinds.get(n, ("file", "URI:LIT:"))[1], {"type": kinds.get(n, ("file",))[0], "mode": 0o644})
                for n in reversed(odd)]
    names = child_names(children)
    assert names == body_names(dir_body(children))
    lines = names.decode().split("\n")
    assert len(lines) == len(odd) and all("\n" not in l for l in lines)
    assert [unescape(l[1:].split("\t")[0]) for l in lines] == sorted(odd)
    assert "dsub\tURI:DIR2-CHK:sub" in lines and "llink" in lines


def test_damaged_or_foreign_chunks_are_refused():
    good = compress(_chunks(_stream(3))[0])
    with pytest.raises(BadIndex):
        list(records(good[:len(good) // 2]))
    with pytest.raises(BadIndex):
        list(records(b"not a chunk at all"))
    with pytest.raises(BadIndex, match="format 99"):
        list(records(compress(msgpack.packb([99, []]))))
    with pytest.raises(BadIndex, match="not a directory cap"):
        list(records(compress(msgpack.packb([index.FORMAT, [[1, 2]]]))))


def test_boundaries_follow_content_so_a_change_touches_few_chunks():
    recs = _stream(16000)
    before = set(_chunks(recs))
    changed = list(recs)
    changed[6800] = (changed[6800][0] + "x", _body(-1), b"x")  # one directory changed
    changed.insert(12000, ("URI:DIR2-CHK:new", _body(-2), b"new"))  # and one added
    after = _chunks(changed)
    assert len(before) > 10
    new = [c for c in after if c not in before]
    assert 1 <= len(new) <= 4, (len(new), len(after))
    # A hundred new directories in one place (a tarball unpacked): the chunks around them, not
    # every chunk after them.
    grown = recs[:5000] + [(f"URI:DIR2-CHK:added{i}", _body(10_000 + i), b"a") for i in range(100)] + recs[5000:]
    new = [c for c in _chunks(grown) if c not in before]
    assert len(new) <= 6, len(new)


async def _fake_snapshot(gw, dirs: int = 30) -> tuple[str, list[str]]:
    """A snapshot of ``dirs`` directories of 20 files made on a fake gateway, with its index."""
    from lafs_backup.store.snapshot import Child, child_names, dir_body, index_body, root_body

    writer, subdirs, chunks = IndexWriter(), [], []
    for d in range(dirs):
        files = [Child(b"f%02d" % i, "URI:LIT:", {"type": "file", "size": 0, "mode": 0o644, "dir": d})
                 for i in range(20)]
        body = dir_body(files)
        cap = await gw.mkdir_immutable(body)
        subdirs.append(Child(b"d%03d" % d, cap, {"type": "dir", "mode": 0o755}))
        if (raw := writer.add(cap, body, child_names(files))) is not None:
            chunks.append(await gw.put_bytes(compress(raw)))
    top = dir_body(subdirs)
    tree = await gw.mkdir_immutable(top)
    for raw in (writer.add(tree, top, child_names(subdirs)), writer.finish()):
        if raw is not None:
            chunks.append(await gw.put_bytes(compress(raw)))
    root = await gw.mkdir_immutable(root_body(Child(b"", tree, {"type": "dir"}), None,
                                              await gw.mkdir_immutable(index_body(chunks))))
    return root, chunks


async def _walk(reader, cap: str) -> list[tuple[bytes, str]]:
    tree, _ = await reader.root(cap)
    out = []
    for d in await reader.children(tree):
        out += [(d.name + b"/" + n.name, n.kind) for n in await reader.children(d)]
    return out


@pytest_twisted.ensureDeferred
async def test_a_reader_walks_a_snapshot_from_its_index_and_survives_a_damaged_chunk(monkeypatch):
    from fakes import FakeGateway
    from lafs_backup.read.reader import Reader

    monkeypatch.setattr(index, "CHUNK_MIN", 2000)  # several chunks for a small tree
    monkeypatch.setattr(index, "CHUNK_AVG", 4000)
    gw = FakeGateway()
    root, chunks = await _fake_snapshot(gw)
    assert len(chunks) >= 3
    plain = Reader(gw, use_index=False)
    expected = await _walk(plain, root)
    assert len(expected) == 600
    gw.counts.clear()
    indexed = Reader(gw)
    assert await _walk(indexed, root) == expected
    assert gw.counts["get"] == 2 + len(chunks)  # the root, the index directory, the chunks: no listing
    # A chunk that cannot be read: its directories are read from the grid, nothing is lost.
    gw.objects[chunks[1]] = b"damaged" * 10
    gw.counts.clear()
    damaged = Reader(gw)
    assert await _walk(damaged, root) == expected
    assert 2 + len(chunks) < gw.counts["get"] < 2 + len(chunks) + 31
    for r in (plain, indexed, damaged):
        r.close()


# -- on the real grid ------------------------------------------------------------------------------

N_ENTRIES = 50_000


def make_tree(dest: Path, n: int) -> int:
    """``n`` entries in directories of 250 (files mostly empty, some tiny, every fiftieth one packed),
    two levels deep; returns the number of directories."""
    dirs = 0
    made = 1
    while made < n:
        sub = dest / f"d{dirs // 20:02d}" / f"e{dirs:04d}"
        sub.mkdir(parents=True)
        made += 1 + (dirs % 20 == 0)
        dirs += 1 + (dirs % 20 == 0)
        for i in range(min(249, n - made)):
            with open(sub / f"f{i:03d}", "wb") as f:
                if i % 50 == 0:
                    f.write(b"packed content %d %d\n" % (dirs, i) * 8)
                elif i % 10 == 0:
                    f.write(b"tiny %d\n" % i)
            made += 1
    return dirs


def _requests(err: str, command: str) -> dict[str, int]:
    m = re.search(command + r": gateway requests (\{.*\})", err)
    assert m, err
    return json.loads(m.group(1).replace("'", '"'))


@pytest.fixture(scope="module")
def scale(grid, tmp_path_factory):
    base = tmp_path_factory.mktemp("index")
    home = base / "home"
    home.mkdir()
    src = base / "src"
    dirs = make_tree(src, N_ENTRIES)
    lb = ["--url", grid.url]
    first = json.loads(run_cli([*lb, "--json", "backup", str(src)], home, check=True, timeout=600).out.splitlines()[-1])
    return src, home, lb, first, dirs


def _lb(scale, *args: str) -> tuple[str, str]:
    src, home, lb, _, _ = scale
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *lb, "-o", "logging.level=info", *args],
                       env=cli_env(home), capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode in (0, 1), p.stderr.decode()
    return p.stdout.decode("utf-8", "surrogateescape"), p.stderr.decode()


def test_the_first_backup_stores_an_index_and_an_unchanged_rerun_stores_none(scale):
    src, home, lb, first, dirs = scale
    # (How many: the cut points depend on the directory caps, hence on the grid's convergence secret.)
    assert 2 <= first["index_chunks"] < dirs / 5 and first["index_chunks_new"] == first["index_chunks"]
    again = json.loads(run_cli([*lb, "--json", "backup", str(src)], home, check=True).out.splitlines()[-1])
    assert again["cap"] == first["cap"]
    assert again["index_chunks_new"] == 0 and again["index_chunks"] == first["index_chunks"]


def test_restore_reads_the_index_not_each_directory(scale, tmp_path):
    src, home, lb, first, dirs = scale
    out = tmp_path / "restored"
    r = run_cli([*lb, "--json", "restore", first["cap"], "--target", str(out)], home, check=True, timeout=600)
    gets = json.loads(r.out.splitlines()[-1])["requests"]["get"]
    # The root, the index directory, its chunks, the objects directory and the packs: no listing of
    # any of the ~215 directories.  Three more read the repository (its root, its writers, this
    # machine's records), which names the restored snapshot's id in the summary.
    assert gets <= 3 + first["index_chunks"] + first["packs"] + 3, (gets, first["index_chunks"], first["packs"])
    assert first["index_chunks"] < dirs / 5
    assert differences(src, out) == []


def test_ls_and_find_walk_the_whole_snapshot_from_the_index(scale):
    src, home, lb, first, dirs = scale
    out, err = _lb(scale, "ls", "-R", first["cap"])
    listed = {line.rstrip("/") for line in out.splitlines()}
    on_disk = {os.path.relpath(os.path.join(d, n), src) for d, ds, fs in os.walk(src) for n in ds + fs}
    assert listed == on_disk
    assert sum(_requests(err, "ls").values()) <= 2 + first["index_chunks"]
    out, err = _lb(scale, "find", "f007", "--snapshot", first["cap"])
    assert len(out.splitlines()) == sum("f007" in fs for _, _, fs in os.walk(src))
    # The repository's records of which backups there are, then the snapshot as ls read it.
    assert sum(_requests(err, "find").values()) <= 6 + first["index_chunks"] < dirs / 5


def _index_chunks_of(url: str, snapshot: str) -> set[str]:
    from lafs_backup.store.snapshot import index_caps

    return set(index_caps([None, {"children": _children(url, _children(url, snapshot)["index"][1]["ro_uri"])}]))


def test_a_small_change_stores_the_chunks_around_it_and_diff_shows_exactly_it(scale, grid):
    src, home, lb, first, dirs = scale
    touched = sorted(src.glob("d03/e*/f01*"))[:20]
    for p in touched:
        p.write_bytes(b"changed " + p.name.encode() * 10)
    second = json.loads(run_cli([*lb, "--json", "backup", str(src)], home, check=True).out.splitlines()[-1])
    assert 1 <= second["index_chunks_new"] <= 6, second
    out, err = _lb(scale, "diff", first["cap"], second["cap"])
    changed = {line.split()[1] for line in out.splitlines()}
    assert changed == {"/" + str(p.relative_to(src)) for p in touched}
    # Only the chunks one snapshot has and the other has not: what the change rewrote, in each.  (How
    # many old chunks one new chunk replaces depends on where the cut points fell, so the count is
    # taken from the two indexes themselves.)
    loaded = sum(int(n) for n in re.findall(r"index: (\d+) chunks", err))
    old_chunks, new_chunks = _index_chunks_of(grid.url, first["cap"]), _index_chunks_of(grid.url, second["cap"])
    assert len(new_chunks - old_chunks) == second["index_chunks_new"], (len(new_chunks - old_chunks), second)
    assert loaded == len(old_chunks ^ new_chunks) >= 2, (loaded, len(old_chunks ^ new_chunks))
    assert loaded < len(old_chunks) + len(new_chunks), (loaded, second)  # not both whole
    gets = _requests(err, "diff")["get"]
    # (4 of them list the repository's records: diff names both sides by their ids, even given caps)
    assert gets <= 8 + 4 + loaded, err

    # A snapshot against itself: nothing loaded, nothing listed.
    out, err = _lb(scale, "diff", second["cap"], second["cap"])
    assert out == "" and re.findall(r"index: (\d+) chunks", err) == ["0"], err


def _children(url: str, cap: str) -> dict:
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(f"{url}uri/{urllib.parse.quote(cap)}?t=json", timeout=60) as r:
        return json.loads(r.read())[1]["children"]


def test_verify_checks_the_index_against_the_directories(scale, grid):
    import urllib.parse
    import urllib.request

    src, home, lb, first, dirs = scale
    r = run_cli([*lb, "verify", "--sample", "1", first["cap"]], home, timeout=600)
    assert r.code == 0, r.err
    assert "index" not in r.err
    # A snapshot root made by hand whose index belongs to another snapshot (the one before the small
    # change): its tree lives in the index alone (the default), and the index it links lacks the
    # tree's root record, so verify says the directory is missing from it.
    listed = [b for b in json_lines(run_cli([*lb, "--json", "list"], home, check=True).out)]
    caps = sorted({b["cap"] for b in listed})
    assert len(caps) >= 2, listed
    newer, older = (_children(grid.url, c) for c in (caps[0], caps[1]))
    assert newer["index"][1]["ro_uri"] != older["index"][1]["ro_uri"]
    body = json.dumps({"tree": newer["tree"], "index": older["index"]}).encode()
    req = urllib.request.Request(f"{grid.url}uri?t=mkdir-immutable", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        mixed = resp.read().decode().strip()
    r = run_cli([*lb, "verify", "--sample", "1", mixed], home, timeout=600)
    assert r.code != 0
    assert "missing from the snapshot index" in r.err, r.err


@pytest_twisted.ensureDeferred
async def test_records_waiting_for_their_turn_spill_to_a_file_and_the_index_is_whole(tmp_path, monkeypatch):
    from fakes import FakeCache, FakeGateway
    from builders import run, tree

    from lafs_backup.backup import indexer
    from lafs_backup.read.reader import Reader

    monkeypatch.setattr(indexer, "_HELD", 0)  # every record waiting goes through the spill file
    gw, cache = FakeGateway(), FakeCache()
    cap, up = await run(tree(tmp_path / "src", dirs=6, files=5), gw, cache)
    assert up.index_caps and up.index._spill is None  # closed
    plain, indexed = Reader(gw, use_index=False), Reader(gw)

    async def everything(reader) -> list:
        tree_node, _ = await reader.root(cap)
        out, todo = [], [tree_node]
        while todo:
            for n in await reader.children(todo.pop()):
                out.append((n.name, n.cap, dict(n.metadata)))
                if n.kind == "d":
                    todo.append(n)
        return out

    expected = await everything(plain)
    gw.counts.clear()
    assert await everything(indexed) == expected
    assert gw.counts["get"] == 2 + len(up.index_caps)  # nothing read by directory
    plain.close()
    indexed.close()


@pytest_twisted.ensureDeferred
async def test_ls_reads_names_from_either_format_of_index_and_the_lines_are_the_same(monkeypatch):
    """A snapshot whose index chunks have no names (format 1, made by an earlier version) is
    listed from its bodies: ``ls -R`` writes the very lines it writes from names."""
    from fakes import FakeGateway
    from lafs_backup.commands.ls import names_walk, shown
    from lafs_backup.read.browse import Browser
    from lafs_backup.read.reader import Reader

    monkeypatch.setattr(index, "CHUNK_MIN", 2000)
    monkeypatch.setattr(index, "CHUNK_AVG", 4000)
    gw = FakeGateway()
    root, chunks = await _fake_snapshot(gw, dirs=12)
    listings = {}
    for name in ("names", "items"):
        browser = Browser(Reader(gw))
        top = await browser.root(root)
        if name == "names":
            listings[name] = [line async for batch in names_walk(browser, top, size=7) for line in batch]
        else:
            listings[name] = [shown(i) async for i in browser.walk(top)]
        browser.reader.close()
    assert listings["names"] == listings["items"] and len(listings["names"]) == 12 + 12 * 20
    # The same snapshot's chunks made again in format 1 (no names): the same lines, from the bodies.
    for cap in chunks:
        old = [[c, b] for c, b, _ in records(gw.objects[cap])]
        gw.objects[cap] = compress(msgpack.packb([1, old], use_bin_type=True))
    browser = Browser(Reader(gw))
    top = await browser.root(root)
    assert browser.reader.has_index and browser.reader.indexed_names(top.node.cap) is None
    assert [line async for batch in names_walk(browser, top) for line in batch] == listings["names"]
    browser.reader.close()


@pytest_twisted.ensureDeferred
async def test_ls_from_names_escapes_a_path_as_from_the_bodies_whatever_its_names(tmp_path):
    """ls -R from the index's names prints each path exactly as from the directories' bodies: bytes
    that are not UTF-8 and control characters as \\xHH, a backslash doubled (names.shown)."""
    from fakes import FakeCache, FakeGateway
    from builders import run

    from lafs_backup.commands.ls import names_walk, shown
    from lafs_backup.read.browse import Browser
    from lafs_backup.read.reader import Reader

    src = tmp_path / "src"
    src.mkdir()
    root = os.fsencode(src)
    for d, files in ((b"caf\xc3\xa9", [b"\xff.mp3", b"plain"]), (b"a\nb", [b"caf\xc3\xa9", b"x\\y", b" lead"]),
                     (b"back\\slash", [b"caf\xc3\xa9"]), (b"caf\xc3\xa9/t\tab", [b"n"])):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        for f in files:
            with open(os.path.join(root, d, f), "wb") as fh:
                fh.write(b"x")
    gw = FakeGateway()
    cap, _ = await run(src, gw, FakeCache())
    browser = Browser(Reader(gw))
    top = await browser.root(cap)
    assert browser.reader.has_index
    from_names = [line async for batch in names_walk(browser, top, size=3) for line in batch]
    from_items = [shown(i) async for i in browser.walk(top)]
    assert from_names == from_items and len(from_items) == 11
    assert "café/\\xff.mp3" in from_names and "a\\x0ab/café" in from_names and "back\\\\slash/café" in from_names
    sub = await browser.lookup(cap, b"a\nb")
    assert [line async for batch in names_walk(browser, sub) for line in batch] == [
        shown(i) async for i in browser.walk(sub)]
    browser.reader.close()
