"""Looking inside backups without restoring them: ls, find, dump (bytes and tar) and a FUSE mount."""

from __future__ import annotations

import io
import json
import os
import shutil
import re
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lafs_backup.report import size_text

from conftest import cli_env, run_cli
from treecompare import differences

ODD = b"odd \xff\xfe name"  # not UTF-8


def build(root: Path) -> Path:
    root.mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("read me\n" * 30)  # small: packed
    (root / "docs" / "notes.md").write_text("# notes\n" * 10)
    deep = root / "docs" / "deep" / "er"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("at the bottom\n" * 20)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))  # an object of its own
    (root / "text.log").write_text("a line that compresses well\n" * 100000)  # lz4-encoded object
    odd = os.path.join(os.fsencode(root), ODD)
    with open(odd, "wb") as f:
        f.write(b"bytes under a name that is not UTF-8\n" * 4)
    os.link(root / "docs" / "readme.txt", root / "hardlink.txt")
    (root / "link").symlink_to("docs/readme.txt")
    private = root / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("s3cret\n")
    os.chmod(private / "secret", 0o600)
    os.setxattr(root / "docs" / "notes.md", "user.note", b"tagged")
    os.mkfifo(root / "fifo")
    t = 1_700_000_000_123_456_789
    os.utime(root / "docs" / "notes.md", ns=(t, t))
    return root


@pytest.fixture(scope="module")
def backed(grid, tmp_path_factory):
    base = tmp_path_factory.mktemp("browse")
    home = base / "home"
    home.mkdir()
    src = build(base / "src")
    lb = ["--url", grid.url]
    first = run_cli([*lb, "backup", str(src)], home, check=True).out.strip()
    (src / "docs" / "added.txt").write_text("new in the second backup\n")
    second = run_cli([*lb, "backup", str(src)], home, check=True).out.strip()
    return src, home, lb, first, second


def source_entries(src: Path) -> dict[bytes, os.stat_result]:
    out = {}
    root = os.fsencode(src)
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def test_ls_lists_every_entry_with_its_metadata(backed):
    src, home, lb, first, second = backed
    r = run_cli([*lb, "--json", "ls", "latest", "-R"], home, check=True)
    got = {}
    for line in r.out.splitlines():
        obj = json.loads(line)
        path = __import__("base64").b64decode(obj["path_b64"]) if "path_b64" in obj else os.fsencode(obj["path"])
        got[path] = obj
    want = source_entries(src)
    assert set(got) == set(want)
    for path, st in want.items():
        obj = got[path]
        kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}
        assert obj["type"] == kind[stat.S_IFMT(st.st_mode)], path
        assert obj["mode"] == stat.S_IMODE(st.st_mode) and obj["mtime_ns"] == st.st_mtime_ns, path
        assert (obj["uid"], obj["gid"]) == (st.st_uid, st.st_gid)
        if stat.S_ISREG(st.st_mode):
            assert obj["size"] == st.st_size
    assert got[b"link"]["target"] == "docs/readme.txt"
    assert got[b"hardlink.txt"]["hardlink"] == got[b"docs/readme.txt"]["hardlink"]
    # The plain recursive listing reads names alone (the index's): the same lines, in pre-order.
    from lafs_backup.report import _printable

    def shown(items):
        return [_printable(p.decode("utf-8", "surrogateescape")) + ("/" if stat.S_ISDIR(st.st_mode) else "")
                for p, st in sorted(items, key=lambda kv: kv[0].split(b"/"))]

    r = run_cli([*lb, "ls", "-R", "latest"], home, check=True)
    assert r.out.splitlines() == shown(want.items())
    assert any("\\x" in line for line in r.out.splitlines())  # (the name that is not UTF-8)
    r = run_cli([*lb, "ls", "-R", "latest", "docs"], home, check=True)
    assert r.out.splitlines() == shown((p, st) for p, st in want.items() if p.startswith(b"docs/"))
    # One directory, by generation number; and the long form.
    r = run_cli([*lb, "ls", "1", "docs"], home, check=True)
    assert r.out.split() == ["docs/deep/", "docs/notes.md", "docs/readme.txt"]  # 'added.txt' came later
    r = run_cli([*lb, "ls", "-l", second, "private"], home, check=True)
    assert re.match(r"-rw------- \S+\s+\S+\s+7 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  private/secret$", r.out.strip()), r.out
    # Sizes as people read them, on request: the same line with "7 B"; a file of MiBs in MiB.
    r = run_cli([*lb, "ls", "-l", "--human-readable", second, "private"], home, check=True)
    assert re.match(r"-rw------- \S+\s+\S+\s+7 B \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  private/secret$", r.out.strip()), r.out
    big = (src / "big.bin").stat().st_size
    r = run_cli([*lb, "ls", "-l", "--human-readable", second, "big.bin"], home, check=True)
    assert f" {size_text(big)} " in r.out and str(big) not in r.out, r.out
    r = run_cli([*lb, "ls", second, "nowhere"], home)
    assert r.code == 4 and "no such path in the snapshot" in r.err


def test_find_across_backups_newest_first(backed):
    src, home, lb, first, second = backed
    r = run_cli([*lb, "find", "*.txt"], home, check=True)
    lines = r.out.splitlines()
    gens = [int(ln.split()[1]) for ln in lines]
    assert gens == sorted(gens, reverse=True)  # newest first
    assert sum(1 for ln in lines if ln.endswith("docs/added.txt")) == 1  # only in the second backup
    assert sum(1 for ln in lines if ln.endswith("docs/readme.txt")) == 2
    assert "docs/added.txt: in 1 backups" in r.err and "docs/readme.txt: in 2 backups" in r.err
    r = run_cli([*lb, "--json", "find", "--regex", r"^docs/deep/.*\.txt$", "--snapshot", "1"], home, check=True)
    objs = [json.loads(x) for x in r.out.splitlines()]
    assert [o["path"] for o in objs if o["type"] == "match"] == ["docs/deep/er/leaf.txt"]
    assert objs[-1]["type"] == "summary" and objs[-1]["matches"] == 1 and objs[-1]["backups"] == 1
    r = run_cli([*lb, "find", "odd*"], home, check=True)
    assert r.out.count("odd") == 2


def _dump(lb, home, *args) -> tuple[bytes, str, int]:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *lb, "-o", "logging.level=info", "dump", *args],
                       env=cli_env(home), capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    return p.stdout, p.stderr.decode(), p.returncode


def test_dump_writes_exact_bytes_with_few_requests(backed):
    src, home, lb, first, second = backed
    def requests(err: str) -> int:
        return sum(json.loads(re.search(r"dump: gateway requests (\{.*\})", err).group(1).replace("'", '"')).values())

    # (the local copies that the backup and the tests before this one kept, dropped)
    shutil.rmtree(home / "state" / "lafs-backup" / "index-cache", ignore_errors=True)
    data, err, code = _dump(lb, home, second, "docs/deep/er/leaf.txt")
    assert code == 0, err
    assert data == (src / "docs" / "deep" / "er" / "leaf.txt").read_bytes()
    # The snapshot's root, its index directory and its one index chunk (the directories on the way
    # live there alone), then one Range read of the pack.
    assert requests(err) == 4, err
    # 'latest' reads the repository (3), and asks the gateway which grid it fronts (1), to find
    # that grid's cache of what this machine recorded; the root and index directory listings are
    # immutable, kept locally since the last dump; the Range read again.
    data, err, code = _dump(lb, home, "latest", "docs/deep/er/leaf.txt")
    assert code == 0 and data == (src / "docs" / "deep" / "er" / "leaf.txt").read_bytes()
    assert requests(err) == 5, err
    # With no local copies, every one of them is asked of the gateway.
    data, err, code = _dump([*lb, "-o", "operation.index_cache=0"], home, "latest", "docs/deep/er/leaf.txt")
    assert code == 0 and data == (src / "docs" / "deep" / "er" / "leaf.txt").read_bytes()
    assert requests(err) == 8, err
    for rel in ("big.bin", "text.log"):
        data, err, code = _dump(lb, home, second, rel)
        assert code == 0 and data == (src / rel).read_bytes(), (rel, err)
    data, err, code = _dump(lb, home, second, os.fsdecode(ODD))
    assert code == 0 and data == (src / os.fsdecode(ODD)).read_bytes()
    _data, err, code = _dump(lb, home, second, "link")
    assert code == 2 and "is a symlink" in err


def test_dump_of_a_directory_is_a_tar_that_tar_restores(backed, tmp_path):
    src, home, lb, first, second = backed
    data, err, code = _dump(lb, home, second, ".")
    assert code == 0, err
    names = tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape").getnames()
    assert "docs/notes.md" in names and os.fsdecode(ODD) in names
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xpf", "-", "-C", str(out)], input=data,
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    assert differences(src, out, owners=True, root_mtime=False) == []
    assert os.getxattr(out / "docs" / "notes.md", "user.note") == b"tagged"
    assert os.stat(out / "hardlink.txt").st_ino == os.stat(out / "docs" / "readme.txt").st_ino
    # A subtree comes out under its own name.
    data, err, code = _dump(lb, home, second, "docs/deep")
    assert code == 0
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == ["deep", "deep/er", "deep/er/leaf.txt"]


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="a FUSE mount needs /dev/fuse and root here (CI runs as root)")
def test_mount_serves_every_file_with_its_attributes(backed, tmp_path):
    src, home, lb, first, second = backed
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *lb, "mount", str(mnt)], env=cli_env(home),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (mnt / "snapshots").exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.1)
        snaps = sorted(os.listdir(mnt / "snapshots"))
        assert len(snaps) == 3 and "latest" in snaps
        assert os.readlink(mnt / "snapshots" / "latest") == max(s for s in snaps if s != "latest")
        t0 = time.monotonic()
        assert "docs" in os.listdir(mnt / "snapshots" / "latest")
        print(f"first listing: {time.monotonic() - t0:.3f}s")
        view = mnt / "snapshots" / os.readlink(mnt / "snapshots" / "latest")
        assert differences(src, view, owners=True) == []  # types, bytes, modes, mtimes, owners, targets
        assert os.getxattr(view / "docs" / "notes.md", "user.note") == b"tagged"
        with open(view / "big.bin", "rb") as f:  # random access into a large file
            f.seek(2 << 20)
            assert f.read(4096) == (src / "big.bin").read_bytes()[2 << 20:(2 << 20) + 4096]
        host_views = os.listdir(mnt / "hosts")
        assert len(host_views) == 1 and len(os.listdir(mnt / "hosts" / host_views[0])) == 2
        with pytest.raises(OSError):
            (view / "docs" / "new").write_text("read-only")
    finally:
        p.send_signal(15)
        _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "unmounted" in err.decode() and not os.path.ismount(mnt)


# -- the pure parts ---------------------------------------------------------------------------

def test_find_patterns_match_names_or_whole_paths():
    from lafs_backup.read.browse import matcher

    by_name = matcher("*.txt")
    assert by_name(b"a/b/c.txt") and not by_name(b"a/b.txt/c")
    whole = matcher("docs/*/x")
    assert whole(b"docs/a/x") and not whole(b"other/docs/a/x")
    rx = matcher(r"\.(jpe?g|png)$", regex=True)
    assert rx(b"p/holiday.JPG".lower()) and not rx(b"p/holiday.gif")
    assert matcher("odd*")(ODD)
    with pytest.raises(Exception, match="invalid regular expression"):
        matcher("(", regex=True)


def test_the_mount_layout_names_every_backup_once():
    from lafs_backup.history import Backup
    from lafs_backup.read.mount import _Snap, _Virtual, layout

    def b(i: int, ts: float, host: str, source: str, tags=()):
        # Repository ids hold a "/" (writer/record): never valid in a file name.
        return Backup(f"{host}.0123/2023{i}.g{i}", i, f"URI:DIR2-CHK:{i}", source.encode(), "x", ts, host=host,
                      tags=tags)

    top = layout([b(2, 1_700_000_100.5, "ann", "/home/ann", ("daily",)), b(1, 1_700_000_000.0, "ann", "/etc"),
                  b(3, 1_700_000_100.2, "bob", "/home/ann")])
    snaps = top.children["snapshots"]
    assert isinstance(snaps, _Virtual)
    names = [n for n in snaps.children if n != "latest"]
    # Two backups in the same second: the later one gets its short id appended; oldest first.
    later = "2023-11-14T22:15:00Z-" + b(2, 1_700_000_100.5, "ann", "/home/ann", ("daily",)).short_id
    assert names == ["2023-11-14T22:13:20Z", "2023-11-14T22:15:00Z", later]
    assert all("/" not in n for n in names)
    assert all(isinstance(snaps.children[n], _Snap) for n in names)
    assert snaps.children["latest"].target == later
    assert set(top.children["hosts"].children) == {"ann", "bob"}
    assert set(top.children["sources"].children) == {"%2Fetc", "%2Fhome%2Fann"}
    assert top.children["tags"].children["daily"].children[later].target == "../../snapshots/" + later
