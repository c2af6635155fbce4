"""Phase one: post-order, byte order, filters, and odd names."""

from __future__ import annotations

import os

from lafs_backup.filters import compile_rules
from lafs_backup.backup.scan import scan


def test_children_come_before_their_directory_whatever_the_names(tmp_path):
    # The names that broke the original tool's sort|tac under en_US.UTF-8.
    for d in ("a", "ab"):
        (tmp_path / d).mkdir()
    (tmp_path / "a" / "0file").write_text("x")
    (tmp_path / "a" / "zfile").write_text("y")
    (tmp_path / "a b").write_text("z")
    os.symlink("a/0file", tmp_path / "link")
    out = [e.path for e in scan(str(tmp_path), compile_rules([]), lambda p, m: None)]
    assert out[-1] == b""
    for i, p in enumerate(out):
        if p:
            parent = p.rpartition(b"/")[0]
            assert out.index(parent) > i, (p, out)
    assert sorted(out) == sorted([b"a", b"a/0file", b"a/zfile", b"ab", b"a b", b"link", b""])


def test_excluded_directory_is_not_descended(tmp_path):
    (tmp_path / "skip").mkdir()
    os.chmod(tmp_path / "skip", 0o000)  # would warn if it were read
    warnings = []
    out = [e.path for e in scan(str(tmp_path), compile_rules(["-^/skip/$"]), lambda p, m: warnings.append(p))]
    os.chmod(tmp_path / "skip", 0o755)
    assert out == [b""] and warnings == []


def test_odd_names_survive(tmp_path):
    odd = [b"new\nline", b"\xff\xfe", b" spaced ", b"back\\slash", b"x" * 255,
           "caf\u00e9".encode(), "cafe\u0301".encode()]
    for n in odd:
        with open(os.path.join(os.fsencode(str(tmp_path)), n), "wb") as f:
            f.write(b"data")
    out = {e.path for e in scan(str(tmp_path), compile_rules([]), lambda p, m: None)}
    assert out == set(odd) | {b""}


def test_symlinks_are_recorded_not_followed(tmp_path):
    os.symlink("/etc", tmp_path / "abs")
    os.symlink("loop", tmp_path / "loop")
    entries = {e.path: e for e in scan(str(tmp_path), compile_rules([]), lambda p, m: None)}
    assert entries[b"abs"].kind == "l" and entries[b"abs"].target == b"/etc"
    assert entries[b"loop"].target == b"loop"
    assert set(entries) == {b"", b"abs", b"loop"}


def test_an_incremental_walk_keeps_unchanged_directories_and_holds_files_being_written(tmp_path):
    from lafs_backup.backup.scan import WalkHooks

    for d in ("keep/sub", "walk"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "keep/sub/x").write_text("x")
    import time

    (tmp_path / "walk/old").write_text("old")
    time.sleep(0.05)  # (past the file system's time granularity)
    (tmp_path / "walk/hot").write_text("being written")
    hot = os.lstat(tmp_path / "walk/hot")
    entered = []

    def on_dir(rel, fd):
        assert os.fstat(fd).st_ino == os.lstat(os.path.join(str(tmp_path), os.fsdecode(rel))).st_ino
        entered.append(rel)

    hooks = WalkHooks(on_dir=on_dir, reuse=lambda rel: "URI:DIR2-CHK:k" if rel == b"keep" else None,
                      hot_since_ns=max(hot.st_mtime_ns, hot.st_ctime_ns))
    entries = {e.path: e for e in scan(str(tmp_path), compile_rules([]), lambda p, m: None, hooks=hooks)}
    assert set(entries) == {b"", b"keep", b"walk", b"walk/old", b"walk/hot"}  # nothing below the kept one
    assert entries[b"keep"].extra("reuse") == b"URI:DIR2-CHK:k" and entered == [b"", b"walk"]
    assert entries[b"walk/hot"].extra("hold") == b"" and entries[b"walk/old"].extra("hold") is None


def test_one_loop_walks_any_tree_and_closes_what_it_opened():
    """The walk over a tree of plain values (as a remote source gives one): order, selection, a
    directory that cannot be listed warned in the tree's words, every opened directory closed."""
    import stat

    from lafs_backup.backup.fsspec_source import make_stat
    from lafs_backup.backup.scan import walk
    from lafs_backup.backup.select import Selection
    from lafs_backup.store.entry import Entry

    f, d = make_stat(stat.S_IFREG | 0o644, 3, 10, 1), make_stat(stat.S_IFDIR | 0o755, 0, 10, 0)
    tree_of = {b"": [(b"a", d, None), (b"b", f, (("etag", b"1"),)), (b"bad", d, None), (b"skip", d, None)],
               b"a": [(b"c", f, None)], b"skip": []}
    opened, closed = [], []

    class Tree:
        cannot = "cannot list directory"

        def root(self, warn):
            opened.append(b"")
            return b"", tree_of[b""], Entry.from_stat(b"", d)

        def enter(self, parent, name, rel, warn):
            if rel not in tree_of:
                raise OSError(13, "Permission denied")
            opened.append(rel)
            return rel, tree_of[rel]

        def head(self, handle):
            return lambda name, n: None

        def keep(self, handle, name, rel, st, listed, warn):
            return listed or ()

        def dir_entry(self, rel, st, extras, children):
            return Entry.from_stat(rel, st, extras=extras)

        def readlink(self, handle, name):
            raise AssertionError("no symlinks here")

        def close(self, handle):
            closed.append(handle)

    warnings = []
    out = list(walk(Tree(), Selection(filter=compile_rules(["-^/skip/$"])), lambda p, m: warnings.append((p, m))))
    assert [e.path for e in out] == [b"a/c", b"a", b"b", b""]
    assert dict(out[2].extras) == {"etag": b"1"}
    assert warnings == [(b"bad", "cannot list directory: Permission denied; skipped")]
    assert sorted(opened) == sorted(closed) == [b"", b"a"]
