"""One entry cache and one key per grid, named by the grid: another URL of the same gateway finds them, a
second grid gets its own with the same configuration, and a command on one grid never opens the other's
cache; caches named by the gateway's URL before are moved to their grid's name."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

from conftest import json_lines, local_grid, make_tree, run_cli


def _summary(r) -> dict:
    return json.loads(r.out.splitlines()[-1])


def test_another_url_of_the_grid_uses_its_cache_and_key(lb, grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    lb("backup", str(src), check=True)
    alias = grid.url.replace("127.0.0.1", "localhost")
    assert alias != grid.url
    before = grid.requests()
    r = run_cli(["--url", alias, "--json", "backup", str(src)], home, check=True)
    s = _summary(r)
    assert s["files_uploaded"] == 0 and s["files_unchanged"] == s["files"], s  # the same cache
    assert grid.requests() == before  # nothing stored again
    assert "made a repository" not in r.out + r.err  # the same key, so the same repository
    state = home / "state" / "lafs-backup"
    assert len(list(state.glob("entry-cache.*.sqlite"))) == 1
    assert len(list((state / "repositories").glob("*.key"))) == 1
    assert len(json_lines(run_cli(["--url", alias, "list", "--json"], home, check=True).out)) == 2


def test_caches_and_keys_named_by_the_url_move_to_their_grids_name(lb, grid, home, tmp_path):
    """As an earlier version left them: the cache and the key named by a digest of the gateway's URL,
    the cache recording that URL and no grid.  The next backup finds both (nothing stored again,
    no new repository) and moves them to the grid's name."""
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    lb("backup", str(src), check=True)
    state = home / "state" / "lafs-backup"
    (cache,) = state.glob("entry-cache.*.sqlite")
    (key,) = (state / "repositories").glob("*.key")
    named = hashlib.sha256(grid.url.encode()).hexdigest()[:12]
    old = state / f"entry-cache.{named}.sqlite"
    for f in state.glob(cache.name + "*"):
        if not f.name.endswith(".lock"):
            f.rename(state / (old.name + f.name[len(cache.name):]))
    db = sqlite3.connect(old)
    db.execute("DELETE FROM meta WHERE key='grid'")
    db.execute("INSERT INTO meta VALUES ('destination', ?)", (grid.url,))
    db.commit()
    db.close()
    key.rename(key.with_name(f"{named}.key"))
    (state / "grids.json").unlink()  # (not even the registry is left)
    before = grid.requests()
    r = lb("--json", "backup", str(src), check=True)
    s = _summary(r)
    assert s["files_uploaded"] == 0 and s["subtrees_kept"] == 1, s  # the cache and its trees file, found
    assert grid.requests() == before
    said = r.out + r.err  # (--json: the notes are records on stdout)
    assert "made a repository" not in said and "the entry cache" in said and "is now" in said, said
    assert [p.name for p in state.glob("entry-cache.*.sqlite")] == [cache.name] and not old.exists()
    assert [p.name for p in (state / "repositories").glob("*.key")] == [key.name]
    assert len(json_lines(lb("list", "--json", check=True).out)) == 2


def test_one_configuration_for_two_grids_and_reads_never_open_the_other_grids_cache(grid, home, tmp_path):
    """With source.entry_cache.path set (as most configurations set it), each grid has its own cache
    in that directory.  Every read command against grid B works while grid A's cache is unreadable,
    and leaves it as it was: they never open it."""
    from treecompare import differences

    caches = tmp_path / "caches"
    conf = ["-o", f"source.entry_cache.path={caches}/"]
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    with local_grid(tmp_path / "gridb", nodes=1, needed=1, happy=1) as gb:
        on_a, on_b = ["--url", grid.url, *conf], ["--url", gb.url, *conf]
        run_cli([*on_a, "backup", str(src)], home, check=True)
        (a_cache,) = caches.glob("*.sqlite")
        r = run_cli([*on_b, "list"], home)  # grid B has no backup yet, and no cache: none is made
        assert r.code == 0 and "belongs to" not in r.err, r.err
        assert list(caches.glob("*.sqlite")) == [a_cache]
        (src / "only-on-b.txt").write_text("backed up to grid B only\n")
        run_cli([*on_b, "backup", str(src)], home, check=True)
        (b_cache,) = set(caches.glob("*.sqlite")) - {a_cache}
        # Grid A's cache made unreadable: a command on grid B that opened it would fail.
        kept = a_cache.read_bytes()
        assert not os.path.exists(f"{a_cache}-wal")
        a_cache.write_bytes(b"not a database " * 100)
        listing = sorted(os.listdir(caches))
        out = tmp_path / "restored"
        for args in (["list"], ["ls", "-l", "latest"], ["find", "*.txt"], ["dump", "latest", "only-on-b.txt"],
                     ["verify", "latest"], ["diff", "latest", "--live"], ["restore", "latest", "--target", str(out)]):
            r = run_cli([*on_b, *args], home)
            assert r.code == 0, (args, r.err)
            assert str(a_cache) not in r.err and "rebuild" not in r.err, (args, r.err)
        assert a_cache.read_bytes() == b"not a database " * 100 and sorted(os.listdir(caches)) == listing
        assert differences(src, out) == []
        a_cache.write_bytes(kept)
        on_grid_a = json_lines(run_cli([*on_a, "list", "--json"], home, check=True).out)
        on_grid_b = json_lines(run_cli([*on_b, "list", "--json"], home, check=True).out)
        assert len(on_grid_a) == 1 and len(on_grid_b) == 1 and on_grid_a[0]["cap"] != on_grid_b[0]["cap"]
        assert b_cache.exists()
