"""restore --include/--exclude through the real CLI against the real local grid: only what the globs
take is restored, the directories on the way with their attributes, with a sub-path, dry, and with
--delete touching nothing they leave out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import json_lines

T0 = 1_600_000_000
FILES = {"etc/app.conf": b"conf " * 30, "etc/app.bin": b"\x00bin" * 40, "etc/sub/deep.conf": b"deep " * 20,
         "docs/a.pdf": b"%PDF " * 50, "docs/b.txt": b"text " * 30, "docs/old/c.pdf": b"%PDF old " * 10,
         "home/x.conf": b"x " * 70, "build/out.o": b"\x7fELF" * 64}
DIRS = {"etc": 0o750, "etc/sub": 0o700, "docs": 0o755, "docs/old": 0o755, "home": 0o711, "build": 0o755}


def tree(root: Path) -> Path:
    for rel, data in FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (T0, T0))
    for i, (rel, mode) in enumerate(sorted(DIRS.items(), key=lambda x: -x[0].count("/"))):
        os.chmod(root / rel, mode)
        os.utime(root / rel, (T0 + 1000 + i, T0 + 1000 + i))
    return root


def contents(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = "/" if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def src(lb, tmp_path: Path) -> Path:
    s = tree(tmp_path / "src")
    lb("backup", str(s), check=True)
    return s


def restore(lb, src: Path, target: Path, *args: str, check: bool = True):
    return lb("--json", "restore", "latest", "--source", str(src), "--target", str(target), *args, check=check)


def summary_of(out: str) -> dict:
    return [x for x in json_lines(out) if x.get("type") == "summary"][-1]


def test_include_restores_what_matches_and_the_directories_on_the_way(lb, src, tmp_path):
    target = tmp_path / "t"
    r = restore(lb, src, target, "--include", "*.conf")
    assert contents(target) == {"etc": "/", "etc/app.conf": FILES["etc/app.conf"], "etc/sub": "/",
                                "etc/sub/deep.conf": FILES["etc/sub/deep.conf"], "home": "/",
                                "home/x.conf": FILES["home/x.conf"]}
    for rel in ("etc", "etc/sub", "home"):  # restored with their attributes, as the snapshot has them
        have, want = os.stat(target / rel), os.stat(src / rel)
        assert (stat.S_IMODE(have.st_mode), have.st_mtime_ns) == (DIRS[rel], want.st_mtime_ns), rel
    assert os.stat(target / "etc/app.conf").st_mtime == T0
    s = summary_of(r.out)
    assert s["files"] == 3 and s["written"] == 3
    # An included directory comes with all it holds, but what --exclude takes (each option its own layer).
    t2 = tmp_path / "t2"
    restore(lb, src, t2, "--include", "/docs/", "--exclude", "*.pdf", "--iinclude", "HOME/X.CONF")
    assert contents(t2) == {"docs": "/", "docs/b.txt": FILES["docs/b.txt"], "docs/old": "/", "home": "/",
                            "home/x.conf": FILES["home/x.conf"]}


def test_include_file_and_exclude_file_as_backup_reads_them(lb, src, tmp_path):
    inc, exc = tmp_path / "inc", tmp_path / "exc"
    inc.write_text("# what to bring back\n/etc/\n\n")
    exc.write_text("*.bin\n")
    target = tmp_path / "t"
    restore(lb, src, target, "--include-file", str(inc), "--exclude-file", str(exc))
    assert sorted(contents(target)) == ["etc", "etc/app.conf", "etc/sub", "etc/sub/deep.conf"]
    r = restore(lb, src, tmp_path / "t3", "--include-file", str(tmp_path / "missing"), check=False)
    assert r.code == 2 and "--include-file" in r.err and "No such file" in r.err


def test_a_sub_path_with_globs_anchored_at_the_snapshot_root_and_dry(lb, src, tmp_path):
    target = tmp_path / "t"
    r = restore(lb, src, target, "etc", "--include", "/etc/*.conf", "--dry-run")
    lines = json_lines(r.out)
    assert [(x["action"], x["path"]) for x in lines if x.get("type") == "dry-run"] == [("write", "etc/app.conf")]
    assert not target.exists()
    restore(lb, src, target, "etc", "--include", "/etc/*.conf")
    assert contents(target) == {"etc": "/", "etc/app.conf": FILES["etc/app.conf"]}
    # A path the globs leave out is said to be, and nothing is made.
    r = restore(lb, src, tmp_path / "t2", "build", "--exclude", "/build/")
    assert r.code == 0
    assert {"type": "note", "path": "build", "message": "left out by --include/--exclude"} in json_lines(r.out)
    assert not (tmp_path / "t2" / "build").exists()
    assert summary_of(r.out)["files"] == 0


def test_delete_touches_only_what_the_globs_take(lb, src, tmp_path):
    target = tmp_path / "t"
    lb("restore", "latest", "--source", str(src), "--target", str(target), check=True)
    extras = {"etc/extra.conf": b"gone", "etc/extra.bin": b"stays: not included", "top.conf": b"gone",
              "etc/sub/extra.conf": b"stays: below an excluded directory", "newdir/z.conf": b"gone",
              "newdir/keep.txt": b"stays: not included", "docs/local.conf": b"gone",
              "docs/keep.txt": b"stays"}
    for rel, data in extras.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    (target / "etc/app.conf").write_bytes(b"edited")
    (target / "etc/app.bin").write_bytes(b"edited, but not included")
    before = contents(target)
    args = ("--include", "*.conf", "--exclude", "sub/", "--delete")
    r = restore(lb, src, target, *args, "--dry-run")
    said = sorted((x["action"], x["path"]) for x in json_lines(r.out) if x.get("type") == "dry-run")
    gone = ["docs/local.conf", "etc/extra.conf", "newdir/z.conf", "top.conf"]
    assert said == sorted([("delete", p) for p in gone] + [("overwrite", "etc/app.conf"),
                                                          ("overwrite", "home/x.conf")])
    assert contents(target) == before
    r = restore(lb, src, target, *args)
    after = contents(target)
    assert summary_of(r.out)["deleted"] == 4
    assert after == {**{k: v for k, v in before.items() if k not in gone}, "etc/app.conf": FILES["etc/app.conf"]}
    assert after["etc/app.bin"] == b"edited, but not included" and after["newdir"] == "/"


def test_many_included_files_cost_a_few_requests_not_one_each(lb, tmp_path):
    s = tmp_path / "many"
    for i in range(300):
        (s / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (s / f"d{i % 3}" / f"f{i}.txt").write_bytes(f"file {i} ".encode() * 40)
        (s / f"d{i % 3}" / f"f{i}.bin").write_bytes(f"other {i} ".encode() * 40)
    lb("backup", str(s), check=True)
    target = tmp_path / "t"
    r = restore(lb, s, target, "--include", "*.txt")
    summary = summary_of(r.out)
    assert summary["files"] == 300 and (target / "d1" / "f1.txt").read_bytes() == b"file 1 " * 40
    assert not (target / "d1" / "f1.bin").exists()
    # Each pack read by range a few times, then fetched whole: not one request per file.
    assert summary["requests"]["get"] < 30, summary["requests"]
