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
