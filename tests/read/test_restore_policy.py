"""Restore into a directory that already holds things: --overwrite, --delete and --dry-run, and the
summary's counts (against the real local grid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import json_lines

T0 = 1_600_000_000  # the backed-up files' mtime (2020)
ORIGINAL = {"a.txt": b"alpha " * 40, "b.txt": b"bravo " * 30, "sub/c.txt": b"charlie " * 25,
            "sub/same.txt": b"unchanged " * 20}


def make_source(root: Path) -> Path:
    for rel, data in ORIGINAL.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (T0, T0))
    return root


def contents(root: Path) -> dict[str, bytes | str]:
    """Every entry below ``root``: a file's bytes, a symlink's target, a directory as '/'."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = os.readlink(p) if p.is_symlink() else "/" if p.is_dir() else p.read_bytes()
    return out


def summary_of(out: str) -> dict:
    return [x for x in json_lines(out) if x.get("type") == "summary"][-1]


@pytest.fixture
def backed_up(lb, tmp_path: Path) -> Path:
    src = make_source(tmp_path / "src")
    lb("backup", str(src), check=True)
    return src


def restored(lb, src: Path, target: Path) -> Path:
    lb("restore", "latest", "--source", str(src), "--target", str(target), check=True)
    return target


def edit(target: Path) -> None:
    """a.txt: same size, new content, older; b.txt: new content, newer; sub/c.txt: new content, older;
    sub/same.txt: the same content, newer."""
    (target / "a.txt").write_bytes(b"ALPHA " * 40)
    os.utime(target / "a.txt", (T0 - 100, T0 - 100))
    (target / "b.txt").write_bytes(b"local edit")
    os.utime(target / "b.txt", (T0 + 10**8, T0 + 10**8))
    (target / "sub/c.txt").write_bytes(b"older")
    os.utime(target / "sub/c.txt", (T0 - 10**8, T0 - 10**8))
    os.utime(target / "sub/same.txt", (T0 + 50, T0 + 50))


@pytest.mark.parametrize("policy, overwritten, skipped", [
    ("always", {"a.txt", "b.txt", "sub/c.txt", "sub/same.txt"}, set()),
    ("if-changed", {"a.txt", "b.txt", "sub/c.txt"}, {"sub/same.txt"}),
    ("if-newer", {"a.txt", "sub/c.txt"}, {"b.txt", "sub/same.txt"}),
    ("never", set(), {"a.txt", "b.txt", "sub/c.txt", "sub/same.txt"}),
])
def test_overwrite_policy(lb, backed_up, tmp_path, policy, overwritten, skipped):
    target = restored(lb, backed_up, tmp_path / "t")
    edit(target)
    (target / "extra.txt").write_bytes(b"mine")
    edited = contents(target)
    r = lb("--json", "restore", "latest", "--source", str(backed_up), "--target", str(target),
           "--overwrite", policy, check=True)
    s = summary_of(r.out)
    assert (s["written"], s["overwritten"], s["skipped"], s["deleted"], s["failed"]) == \
        (0, len(overwritten), len(skipped), 0, 0)
    assert s["files"] == len(overwritten)
    assert s["bytes_written"] == sum(len(ORIGINAL[p]) for p in overwritten)
    now = contents(target)
    for rel in ORIGINAL:
        assert now[rel] == (ORIGINAL[rel] if rel in overwritten else edited[rel]), rel
    assert now["extra.txt"] == b"mine"  # no --delete: left
    for rel in overwritten:
        assert os.stat(target / rel).st_mtime == T0
    if policy == "if-changed":
        # Left because its content is the same, yet its recorded attributes are back.
        assert os.stat(target / "sub/same.txt").st_mtime == T0
    if policy in ("if-newer", "never"):
        assert os.stat(target / "sub/same.txt").st_mtime == T0 + 50


def test_dry_run_changes_nothing_then_delete(lb, backed_up, tmp_path):
    target = restored(lb, backed_up, tmp_path / "t")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    edit(target)
    (target / "extra.txt").write_bytes(b"mine")
    (target / "extra-dir/deeper").mkdir(parents=True)
    (target / "extra-dir/deeper/f").write_bytes(b"x")
    (target / "sub/extra-link").symlink_to(outside / "precious")
    (target / "dir-link").symlink_to(outside)
    before = contents(target)
    stamps = {rel: os.lstat(target / rel).st_mtime_ns for rel in before}

    r = lb("restore", "latest", "--source", str(backed_up), "--target", str(target),
           "--overwrite", "if-changed", "--delete", "--dry-run", check=True)
    lines = set(r.out.splitlines())
    assert lines == {"would overwrite a.txt", "would overwrite b.txt", "would overwrite sub/c.txt",
                     "would skip sub/same.txt", "would delete extra.txt", "would delete extra-dir/deeper/f",
                     "would delete extra-dir/deeper", "would delete extra-dir", "would delete sub/extra-link",
                     "would delete dir-link"}
    assert contents(target) == before
    assert {rel: os.lstat(target / rel).st_mtime_ns for rel in before} == stamps
    # Its summary says what would be done, and claims nothing restored.
    assert "would be overwritten: 3" in r.err and "would be deleted: 6" in r.err, r.err
    assert "restored files" not in r.err and "written\n" not in r.err, r.err

    # A dry run into a directory that does not exist: everything would be written, nothing made.
    r = lb("--json", "restore", "latest", "--source", str(backed_up), "--target", str(tmp_path / "none"),
           "--dry-run", check=True)
    records = json_lines(r.out)
    assert sorted(x["path"] for x in records if x.get("action") == "write") == sorted(ORIGINAL)
    assert summary_of(r.out)["written"] == len(ORIGINAL) and summary_of(r.out)["dry_run"] is True
    assert not (tmp_path / "none").exists()

    # --delete with a PATH: only below it.
    r = lb("--json", "restore", "latest", "sub", "--source", str(backed_up), "--target", str(target),
           "--delete", check=True)
    assert summary_of(r.out)["deleted"] == 1
    assert not (target / "sub/extra-link").is_symlink()
    assert (target / "extra.txt").exists()

    r = lb("--json", "restore", "latest", "--source", str(backed_up), "--target", str(target), "--delete",
           check=True)
    s = summary_of(r.out)
    assert s["deleted"] == 5 and s["overwritten"] == 4
    assert contents(target) == {"sub": "/", **{rel: data for rel, data in ORIGINAL.items()}}
    assert (outside / "precious").read_bytes() == b"keep me"  # symlinks removed, never followed


def test_blocked_by_a_directory_is_failed_and_json_names_the_snapshot(lb, backed_up, tmp_path):
    target = tmp_path / "t"
    (target / "a.txt").mkdir(parents=True)
    (target / "a.txt/inside").write_bytes(b"x")
    r = lb("--json", "restore", "latest", "--source", str(backed_up), "--target", str(target))
    assert r.code == 1, r.err
    s = summary_of(r.out)
    assert s["operation"] == "restore"
    assert (s["written"], s["overwritten"], s["skipped"], s["failed"]) == (len(ORIGINAL) - 1, 0, 0, 1)
    assert s["files"] == len(ORIGINAL) - 1
    assert s["bytes_written"] == sum(len(d) for rel, d in ORIGINAL.items() if rel != "a.txt")
    assert "files_uploaded" not in s and "bytes_uploaded" not in s
    listed = json_lines(lb("--json", "list", check=True).out)
    assert s["id"] == listed[-1]["id"]
    assert (target / "a.txt/inside").read_bytes() == b"x"

    # The text summary says the same.
    r = lb("restore", "latest", "--source", str(backed_up), "--target", str(target))
    assert r.code == 1
    assert "failed: 1" in r.err and f"restored files: {len(ORIGINAL) - 1}," in r.err
    assert json.dumps(s)  # (a JSON document)


def test_decide_is_a_pure_decision():
    from lafs_backup.read.restore import decide
    from lafs_backup.store.entry import KIND_FILE, KIND_LINK

    def st(mode: int, size: int = 5, mtime_ns: int = 10, nlink: int = 1) -> os.stat_result:
        return os.stat_result((mode, 1, 1, nlink, 0, 0, size, 0, 0, 0), {"st_mtime_ns": mtime_ns})

    meta = {"size": 5, "mtime_ns": 20, "sha256": "00" * 32}
    reg, lnk, dr = 0o100644, 0o120777, 0o40755
    assert decide("never", KIND_FILE, meta, None).action == "write"
    assert decide("always", KIND_FILE, meta, st(dr)).action == "blocked"
    assert decide("always", KIND_FILE, meta, st(reg)).action == "overwrite"
    assert decide("never", KIND_FILE, meta, st(reg)).action == "skip"
    assert decide("if-newer", KIND_FILE, meta, st(reg, mtime_ns=10)).action == "overwrite"
    assert decide("if-newer", KIND_FILE, meta, st(reg, mtime_ns=20)).action == "skip"
    assert decide("if-changed", KIND_FILE, meta, st(reg, size=6)).action == "overwrite"
    assert decide("if-changed", KIND_FILE, meta, st(reg)).action == "compare"
    assert decide("if-changed", KIND_FILE, meta, st(reg, nlink=2)).action == "overwrite"
    assert decide("if-changed", KIND_FILE, meta, st(lnk)).action == "overwrite"
    assert decide("if-changed", KIND_LINK, {}, st(lnk), b"x", b"x").action == "skip"
    assert decide("if-changed", KIND_LINK, {}, st(lnk), b"x", b"y").action == "overwrite"
