"""Selection on the command line: --exclude, --iexclude, --exclude-file, ``-o filter=[...]``, several
sources in one backup, a symlinked source; against the real grid, and the globs alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import json_lines

from lafs_backup import config
from lafs_backup.backup.scan import scan
from lafs_backup.backup.select import Selection, compile_globs
from lafs_backup.errors import UsageError


def write(root: Path, rel: str, data: str = "x") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data)


def names(root: Path) -> set[str]:
    out = set()
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out |= {os.path.normpath(os.path.join(rel, n)) + "/" for n in dirs}
        out |= {os.path.normpath(os.path.join(rel, n)) for n in files}
    return out


TREE = ("a.bin", "sub/b.bin", "sub/deep/c.BIN", "build/out", "sub/build/out", "keep.txt", "Notes.TMP",
        "sub/notes.tmp", "docs/x.pdf", "sub/docs/y.pdf")


def tree(root: Path) -> Path:
    for rel in TREE:
        write(root, rel, rel)
    return root


# -- the globs alone (no grid) ------------------------------------------------------------------

def test_globs_compile_as_ignore_file_lines(tmp_path):
    src = tree(tmp_path / "src")
    sel = Selection(globs=(compile_globs(["*.bin", "/build/", "docs/*.pdf", "# a comment", ""], "--exclude"),
                           compile_globs(["*.tmp"], "--iexclude", fold=True)))
    got = {os.fsdecode(e.path) + ("/" if e.kind == "d" else "")
           for e in scan(src, sel, lambda p, m: None) if e.path}
    # '*.bin' at any depth (case-sensitive: c.BIN stays), '/build/' and 'docs/*.pdf' only at the root,
    # '*.tmp' ignoring case.
    assert got == {"sub/", "sub/deep/", "sub/deep/c.BIN", "sub/build/", "sub/build/out", "keep.txt",
                   "docs/", "sub/docs/", "sub/docs/y.pdf"}, got
    counts = sel.excluded.counts
    assert counts["--exclude"][0] == 4 and counts["--iexclude"][0] == 2
    layer = compile_globs(["*.o", "!keep.o"], "--exclude")
    assert layer.verdict(b"x/a.o", False) is True and layer.verdict(b"x/keep.o", False) is False
    assert layer.verdict(b"a.c", False) is None


def test_list_overrides_parse_as_written():
    assert config.parse_override('filter=["-\\.bin$", -/cache/]') == ("filter", ["-\\.bin$", "-/cache/"])
    assert config.parse_override("filter=[-[0-9]{1,3}\\.tmp$, '+x']") == ("filter", ["-[0-9]{1,3}\\.tmp$", "+x"])
    assert config.parse_override("filter=[]") == ("filter", [])
    assert config.parse_override("operation.jobs=3") == ("operation.jobs", 3)


# -- against the grid ---------------------------------------------------------------------------

def backups(lb) -> list[dict]:
    """The backups ``list --json`` lists (one JSON document a line)."""
    return [b for b in json_lines(lb("--json", "list", check=True).out) if b["type"] == "backup"]


def restored(lb, cap: str, out: Path) -> set[str]:
    lb("restore", cap, "--target", str(out), check=True)
    return names(out)


def test_exclude_options_take_effect(lb, tmp_path):
    src = tree(tmp_path / "src")
    globs = tmp_path / "globs.txt"
    globs.write_text("# generated documents\ndocs/*.pdf\n\n/build/\n")
    r = lb("--json", "backup", str(src), "--exclude", "*.bin", "--iexclude", "*.tmp", "--exclude-file", str(globs))
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["excluded"]["--exclude"]["entries"] == 2
    assert summary["excluded"]["--iexclude"]["entries"] == 2
    assert summary["excluded"][f"--exclude-file {globs}"]["entries"] == 2
    assert restored(lb, summary["cap"], tmp_path / "out") == {
        "sub/", "sub/deep/", "sub/deep/c.BIN", "sub/build/", "sub/build/out", "keep.txt", "docs/", "sub/docs/",
        "sub/docs/y.pdf"}
    # The same globs through -o filter=[...] as rules (regexes, a list as the shell lets one write it).
    r = lb("-o", 'filter=["-\\.bin$", -^/build/, "-(?i)\\.tmp$"]', "backup", str(src))
    assert r.code == 0, r.err
    assert restored(lb, r.out.strip(), tmp_path / "out2") == {
        "sub/", "sub/deep/", "sub/deep/c.BIN", "sub/build/", "sub/build/out", "keep.txt", "docs/", "docs/x.pdf",
        "sub/docs/", "sub/docs/y.pdf"}
    bad = lb("backup", str(src), "--exclude-file", str(tmp_path / "nope"))
    assert bad.code == 2 and "--exclude-file" in bad.err and "No such file" in bad.err, bad.err
    bad = lb("-o", "filter=[*.bin]", "backup", str(src))
    assert bad.code == 2 and "--exclude" in bad.err, bad.err


def test_several_sources_are_each_their_own(lb, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "a", "one")
    write(two, "b", "two")
    r = lb("backup", str(one), str(two))
    assert r.code == 0, r.err
    caps = r.out.split()
    assert len(caps) == 2 and caps[0] != caps[1]
    listed = backups(lb)
    assert sorted(b["source"] for b in listed) == [str(one), str(two)]
    assert len({b["id"] for b in listed}) == 2
    assert restored(lb, caps[1], tmp_path / "out") == {"b"}
    bad = lb("backup", str(one), str(two), "--queue-only", str(tmp_path / "q"))
    assert bad.code == 2 and "several sources" in bad.err, bad.err
    # A mistake in any source stops the command before any backup.
    bad = lb("backup", str(one), str(tmp_path / "missing"))
    assert bad.code == 2 and f"Source {tmp_path / 'missing'} does not exist" in bad.err, bad.err
    assert len(backups(lb)) == 2


def test_a_symlinked_source_is_recorded_under_the_path_given(lb, tmp_path):
    real = tmp_path / "real"
    write(real, "f", "through the link")
    link = tmp_path / "link"
    link.symlink_to(real)
    r = lb("backup", str(link))
    assert r.code == 0, r.err
    listed = backups(lb)
    assert [b["source"] for b in listed] == [str(link)]
    assert restored(lb, r.out.strip(), tmp_path / "out") == {"f"}
    assert (tmp_path / "out" / "f").read_text() == "through the link"


def test_a_missing_source_and_a_file_are_named(lb, tmp_path):
    r = lb("backup", str(tmp_path / "x"))
    assert r.code == 2 and f"Source {tmp_path / 'x'} does not exist" in r.err, r.err
    write(tmp_path, "file")
    r = lb("backup", str(tmp_path / "file"))
    assert r.code == 2 and f"Source {tmp_path / 'file'} is not a directory" in r.err, r.err


def test_globs_refuse_a_bad_pattern():
    with pytest.raises(UsageError, match="--exclude"):
        compile_globs(["!"], "--exclude")
