"""Choosing what to back up: the selection options, each against the real grid, and their rules alone."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import json_lines, run_cli
from lafs_backup.filters import compile_rules, parse_if_present, parse_size
from lafs_backup.backup.scan import scan
from lafs_backup.backup.select import CACHEDIR_SIGNATURE, Listed, Selection, listed_paths
from lafs_backup.errors import UsageError

SIG = CACHEDIR_SIGNATURE + b"\n# This file is a cache directory tag.\n"


def write(root: Path, rel: str, data: bytes | str = b"x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def names(root: Path | str) -> set[str]:
    """Every path below ``root`` (directories with a trailing '/')."""
    out = set()
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for n in dirs:
            out.add(os.path.normpath(os.path.join(rel, n)) + "/")
        for n in files:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def walked(root: Path, sel: Selection) -> set[str]:
    warnings: list[tuple[bytes, str]] = []
    out = set()
    for e in scan(root, sel, lambda p, m: warnings.append((p, m))):
        if e.path:
            out.add(os.fsdecode(e.path) + ("/" if e.kind == "d" else ""))
    sel.warnings = warnings  # type: ignore[attr-defined]
    return out


# -- the rules alone (no grid) ------------------------------------------------------------------

def test_sizes_and_markers_parse_or_name_the_problem():
    assert parse_size("500M") == 500 << 20 and parse_size("2G") == 2 << 30 and parse_size("1.5KiB") == 1536
    assert parse_size("4096") == 4096 and parse_size(10) == 10 and parse_size("3kb") == 3072
    for bad in ("", "12X", "-1", "M"):
        with pytest.raises(UsageError, match="is not a size"):
            parse_size(bad)
    assert parse_if_present(".nobackup") == (b".nobackup", None)
    assert parse_if_present("CACHEDIR.TAG:Signature: 8a") == (b"CACHEDIR.TAG", b"Signature: 8a")
    with pytest.raises(UsageError, match="does not start with a file name"):
        parse_if_present(":header")


def test_ignore_files_follow_gitignore_rules(tmp_path):
    src = tmp_path / "src"
    write(src, ".lafsbackupignore", "*.o\n!keep.o\nbuild/\n/top-only\n")
    for rel in ("a.o", "keep.o", "x/b.o", "x/keep.o", "build/out", "x/build/out", "x/build.txt", "top-only",
                "x/top-only", "x/.lafsbackupignore", "x/y/z.log", "x/y/keep.log"):
        write(src, rel)
    # A deeper file overrides the one above: it ignores logs but re-includes keep.o's sibling rule.
    write(src, "x/.lafsbackupignore", "*.log\n!keep.log\nkeep.o\n")
    sel = Selection(ignore_names=(b".lafsbackupignore",))
    got = walked(src, sel)
    assert got == {".lafsbackupignore", "keep.o", "x/", "x/build.txt", "x/top-only", "x/.lafsbackupignore",
                   "x/y/", "x/y/keep.log"}, got
    counts = sel.excluded.counts
    assert counts["ignore file .lafsbackupignore"][0] == 5  # a.o, x/b.o, build/, x/build/, top-only
    assert counts["ignore file x/.lafsbackupignore"][0] == 2  # x/keep.o and x/y/z.log


def test_a_cache_tag_counts_only_with_its_signature(tmp_path):
    src = tmp_path / "src"
    write(src, "real/CACHEDIR.TAG", SIG)
    write(src, "real/blob", b"b" * 1000)
    write(src, "fake/CACHEDIR.TAG", b"Signature: not the right one\n")
    write(src, "fake/blob", b"b")
    write(src, "link/CACHEDIR.TAG", b"")
    (src / "link" / "CACHEDIR.TAG").unlink()
    (src / "link" / "CACHEDIR.TAG").symlink_to(src / "real" / "CACHEDIR.TAG")  # never followed
    write(src, "link/blob", b"b")
    sel = Selection(exclude_caches=True)
    got = walked(src, sel)
    assert "real/CACHEDIR.TAG" in got and "real/blob" not in got
    assert {"fake/blob", "link/blob"} <= got
    assert sel.excluded.counts["--exclude-caches"] == [1, 1000]


def test_files_from_takes_the_listed_paths_and_their_parents_only(tmp_path):
    src = tmp_path / "src"
    for rel in ("a/b/c.txt", "a/b/d.txt", "a/e.txt", "f/g.txt", "h.txt", "glob/one.md", "glob/two.md",
                "glob/three.txt"):
        write(src, rel)
    root = os.fsencode(src)
    listed = listed_paths(root, [(b"a/b/c.txt", True), (os.fsencode(src / "f"), True), (b"glob/*.md", True),
                                 (b"nothing-here", True)])
    sel = Selection(listed=listed)
    got = walked(src, sel)
    assert got == {"a/", "a/b/", "a/b/c.txt", "f/", "f/g.txt", "glob/", "glob/one.md", "glob/two.md"}, got
    assert [m for p, m in sel.warnings] == ["listed by --files-from, but not in the source (or excluded by "
                                            "another rule)"]
    with pytest.raises(UsageError, match="is not below the source"):
        listed_paths(root, [(b"/etc/passwd", False)])
    assert Listed([b"x"]).wants(b"x/y/z") and not Listed([b"x"]).wants(b"xy")


def test_filter_rules_come_first_and_are_named(tmp_path):
    src = tmp_path / "src"
    write(src, "keep/a", "1")
    write(src, "drop/b", "22")
    write(src, "big", b"z" * 5000)
    sel = Selection(filter=compile_rules(["-^/drop/"]), larger_than=4096)
    assert walked(src, sel) == {"keep/", "keep/a"}
    assert sel.excluded.counts == {"filter rule '-^/drop/'": [1, 0], "--exclude-larger-than": [1, 5000]}


# -- against the real grid ----------------------------------------------------------------------

def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write(src, "docs/a.txt", "alpha\n" * 100)
    write(src, "docs/notes.o", "object")
    write(src, "docs/.lafsbackupignore", "*.o\n")
    write(src, "cache/CACHEDIR.TAG", SIG)
    write(src, "cache/blob.bin", os.urandom(20000))
    write(src, "skipme/.nobackup", "")
    write(src, "skipme/secret", "s")
    write(src, "header/.marker", "KEEP OUT\n")
    write(src, "header/x", "x")
    write(src, "header-no/.marker", "fine\n")
    write(src, "header-no/y", "y")
    write(src, "big.iso", os.urandom(3 << 20))
    write(src, "repo/.gitignore", "target/\n")
    write(src, "repo/target/build.out", "built")
    write(src, "repo/src.rs", "fn main() {}")
    return src


def test_backup_with_every_option_restores_exactly_the_selection(grid, home, tmp_path):
    src = _tree(tmp_path)
    opts = ["--exclude-caches", "--exclude-if-present", ".nobackup", "--exclude-if-present", ".marker:KEEP",
            "--exclude-larger-than", "1M", "--git-ignore"]
    # --dry-run first: it says what would go, and writes nothing to the grid or the cache.
    before = grid.requests()
    d = run_cli(["--url", grid.url, "--json", "backup", str(src), "--dry-run", *opts], home)
    assert d.code == 0, d.err
    plan = json.loads(d.out.splitlines()[-1])
    assert plan["type"] == "dry-run" and plan["files_to_upload"] + plan["files_inline"] == plan["files"]
    assert plan["files"] == 7 and plan["files_unchanged"] == 0
    assert grid.requests() == before
    assert not list((home / "state").rglob("*.sqlite"))  # no cache was made

    r = run_cli(["--url", grid.url, "--json", "backup", str(src), *opts], home)
    assert r.code == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])
    ex = summary["excluded"]
    assert ex["--exclude-caches"] == {"entries": 1, "bytes": 20000}
    assert ex["--exclude-if-present .nobackup"]["entries"] == 1
    assert ex["--exclude-if-present .marker:KEEP"]["entries"] == 1
    assert ex["--exclude-larger-than"] == {"entries": 1, "bytes": 3 << 20}
    assert ex["ignore file docs/.lafsbackupignore"] == {"entries": 1, "bytes": 6}
    assert ex["ignore file repo/.gitignore"]["entries"] == 1
    out = tmp_path / "out"
    run_cli(["--url", grid.url, "restore", summary["cap"], "--target", str(out)], home, check=True)
    assert names(out) == {"docs/", "docs/a.txt", "docs/.lafsbackupignore", "cache/", "cache/CACHEDIR.TAG",
                          "header-no/", "header-no/.marker", "header-no/y", "repo/", "repo/.gitignore",
                          "repo/src.rs"}, names(out)
    assert (out / "docs" / "a.txt").read_text() == "alpha\n" * 100

    # The text summary names each rule with its counts; a dry run now finds everything unchanged.
    d = run_cli(["--url", grid.url, "--noise", "backup", str(src), "--dry-run", *opts], home, check=True)
    assert "excluded by --exclude-larger-than: 1 entries, 3.0 MiB of files" in d.err
    # --noise names each excluded path with its reason.
    assert "excluded by --exclude-larger-than: b'big.iso'" in d.err
    assert "excluded by ignore file repo/.gitignore: b'repo/target'" in d.err
    assert "7 unchanged" in d.err and "would upload: 0 files" in d.err, d.err


def test_files_from_forms_back_up_exactly_the_list(grid, home, tmp_path):
    src = tmp_path / "src"
    for rel in ("keep/one", "keep/sub/two", "drop/three", "odd name\twith tab", "spaced name ", "x/y"):
        write(src, rel, rel)
    plain = tmp_path / "plain.txt"
    plain.write_text("# my list\nkeep\n\n")
    verbatim = tmp_path / "verbatim.txt"
    verbatim.write_text("spaced name \n")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"odd name\twith tab\0" + os.fsencode(src / "x" / "y") + b"\0")
    r = run_cli(["--url", grid.url, "backup", str(src), "--files-from", str(plain), "--files-from-verbatim",
                 str(verbatim), "--files-from-raw", str(raw)], home)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    run_cli(["--url", grid.url, "restore", r.out.strip(), "--target", str(out)], home, check=True)
    assert names(out) == {"keep/", "keep/one", "keep/sub/", "keep/sub/two", "spaced name ", "odd name\twith tab",
                          "x/", "x/y"}
    # A listed path that is not there is a warning that names it (exit code 1), not silence.
    plain.write_text("keep\nnot-there\n")
    r = run_cli(["--url", grid.url, "backup", str(src), "--files-from", str(plain)], home)
    assert r.code == 1 and "not-there: listed by --files-from" in r.err, r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_one_file_system_records_the_mount_point_but_not_its_contents(grid, home, tmp_path):
    src = tmp_path / "src"
    write(src, "here/file", "on the source's file system")
    mnt = src / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0750", "none", str(mnt)], check=True)
    try:
        write(mnt, "elsewhere", "on another file system")
        r = run_cli(["--url", grid.url, "--json", "backup", str(src), "--one-file-system"], home)
        assert r.code == 0, r.err
        summary = json.loads(r.out.splitlines()[-1])
        assert summary["excluded"]["--one-file-system"]["entries"] == 1
        out = tmp_path / "out"
        run_cli(["--url", grid.url, "restore", summary["cap"], "--target", str(out)], home, check=True)
        assert names(out) == {"here/", "here/file", "mnt/"}
        assert (os.stat(out / "mnt").st_mode & 0o7777) == 0o750  # the mount point, as it was
        # Without the option the other file system is backed up too.
        r = run_cli(["--url", grid.url, "backup", str(src)], home, check=True)
        out2 = tmp_path / "out2"
        run_cli(["--url", grid.url, "restore", r.out.strip(), "--target", str(out2)], home, check=True)
        assert (out2 / "mnt" / "elsewhere").read_text() == "on another file system"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_glob_source_backs_up_the_directory_the_policy_picks(grid, home, tmp_path):
    snaps = tmp_path / "snaps"
    for i, name in enumerate(("daily-2026-11-30", "daily-2026-12-01", "daily-2026-11-29")):
        write(snaps / name, "stamp", name)
        t = time.time() - 86400 * (3 - i)
        os.utime(snaps / name, (t, t))
    write(snaps, "daily-not-a-dir", "x")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"source:\n  path: '{snaps}/daily-*'\n")
    r = run_cli(["--url", grid.url, "-c", str(conf), "--json", "backup"], home, check=True)
    listed = json_lines(run_cli(["--url", grid.url, "--json", "list"], home, check=True).out)
    assert listed[-1]["source"] == str(snaps / "daily-2026-12-01")  # alphasort_last, the default
    r = run_cli(["--url", grid.url, "-c", str(conf), "-o", "source.pick_policy=mtime_newest", "backup"], home,
                check=True)
    listed = json_lines(run_cli(["--url", grid.url, "--json", "list"], home, check=True).out)
    assert listed[-1]["source"] == str(snaps / "daily-2026-11-29")  # touched last
    out = tmp_path / "out"
    run_cli(["--url", grid.url, "restore", r.out.strip(), "--target", str(out)], home, check=True)
    assert (out / "stamp").read_text() == "daily-2026-11-29"
    # `--source PATTERN` picks the backups of every directory the glob matches.
    got = json_lines(run_cli(["--url", grid.url, "--json", "list", "--source", f"{snaps}/daily-*"], home,
                             check=True).out)
    assert len(got) == 2
    bad = run_cli(["--url", grid.url, "-o", f"source.path={snaps}/weekly-*", "backup"], home)
    assert bad.code == 2 and "matches no directory" in bad.err
    bad = run_cli(["--url", grid.url, "-c", str(conf), "-o", "source.pick_policy=random", "backup"], home)
    assert bad.code == 2 and "source.pick_policy" in bad.err


def test_bad_selection_options_name_the_problem(grid, home, tmp_path):
    src = tmp_path / "src"
    write(src, "a", "a")
    r = run_cli(["--url", grid.url, "backup", str(src), "--exclude-larger-than", "lots"], home)
    assert r.code == 2 and "--exclude-larger-than: 'lots' is not a size" in r.err
    r = run_cli(["--url", grid.url, "backup", str(src), "--files-from", str(tmp_path / "nope")], home)
    assert r.code == 2 and "nope" in r.err and "No such file" in r.err
    r = run_cli(["--url", grid.url, "-o", "source.exclude_larger_than=9Q", "backup", str(src)], home)
    assert r.code == 2 and "source.exclude_larger_than" in r.err
