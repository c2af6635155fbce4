"""Sparse files on the real grid: stored as their data and its layout, restored sparse, dumped and compared whole."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, json_lines

MiB = 1 << 20


def make_sparse(path: Path, size: int, extents: list[tuple[int, int]], seed: str) -> None:
    """``size`` bytes, random (incompressible) data at ``extents``, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, (off, n) in enumerate(extents):
            f.seek(off)
            f.write(_random(f"{seed}:{i}", n))


def _random(seed: str, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def summary(out: str) -> dict:
    return json.loads(out.splitlines()[-1])


def holes_supported(where: Path) -> bool:
    probe = where / "probe"
    make_sparse(probe, 4 * MiB, [(2 * MiB, 4096)], "probe")
    try:
        return allocated(probe) < MiB
    finally:
        probe.unlink()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    if not holes_supported(tmp_path):
        pytest.skip("this file system does not make holes")
    s = tmp_path / "src"
    s.mkdir()
    # 64 MiB with 1 MiB of data in 3 extents (the second one's end ends the file's data, then a trailing hole).
    make_sparse(s / "disk.img", 64 * MiB, [(0, 256 << 10), (20 * MiB, 512 << 10), (40 * MiB, 256 << 10)], "a")
    return s


def ls_json(lb, *args: str) -> dict[str, dict]:
    r = lb("--json", "ls", *args, check=True)
    return {x["path"]: x for x in json_lines(r.out) if "path" in x}


def test_a_sparse_file_goes_up_as_its_data_and_comes_back_sparse(lb, grid, home, src, tmp_path):
    r = lb("--json", "backup", str(src), check=True)  # the sparse file alone first
    assert summary(r.out)["bytes_sent"] < 2 * MiB  # ~1 MiB of data, not 64 MiB of zeros
    # A dense file, and one whose zeros are written (not holes): stored as they always were.
    (src / "dense.bin").write_bytes(_random("dense", 3 * MiB))
    with open(src / "zeros.bin", "wb") as f:
        f.write(_random("z1", MiB) + bytes(6 * MiB) + _random("z2", MiB))
    want = {p.name: sha(p) for p in src.iterdir()}
    data = b"".join(_random(f"a:{i}", n) for i, n in enumerate((256 << 10, 512 << 10, 256 << 10)))
    r = lb("--json", "backup", str(src), check=True)
    first = summary(r.out)
    # The sparse file is unchanged since the first backup: only the two dense files go up.
    assert first["bytes_sent"] < 3 * MiB + 8 * MiB + MiB

    listed = ls_json(lb, "latest")
    assert listed["disk.img"]["size"] == 64 * MiB
    assert listed["disk.img"]["sparse"] == {"data_size": MiB, "extents": 3}
    assert listed["disk.img"]["sha256"] == hashlib.sha256(data).hexdigest()  # its data's
    for name in ("dense.bin", "zeros.bin"):  # the format of a file without holes is unchanged
        assert "sparse" not in listed[name] and listed[name]["sha256"] == want[name]

    out = tmp_path / "out"
    lb("restore", "latest", "--target", str(out), check=True)
    assert {p.name: sha(p) for p in out.iterdir()} == want
    assert os.path.getsize(out / "disk.img") == 64 * MiB
    assert allocated(out / "disk.img") <= 2 * MiB  # sparse again: its data, not 64 MiB
    assert allocated(out / "zeros.bin") <= 3 * MiB  # written zeros come back as holes too

    # dump gives the whole logical content, zeros in the holes.
    p = subprocess.run([sys.executable, "-m", "lafs_backup", "--url", grid.url, "dump", "latest", "disk.img"],
                       env=cli_env(home), capture_output=True, timeout=300)
    assert p.returncode == 0 and len(p.stdout) == 64 * MiB
    assert hashlib.sha256(p.stdout).hexdigest() == want["disk.img"]

    assert lb("verify", "latest").code == 0
    # The restored copy is the same content: kept as it is by --overwrite if-changed.
    before = os.stat(out / "disk.img").st_ino
    r = lb("restore", "latest", "--target", str(out), "--overwrite", "if-changed", check=True)
    assert os.stat(out / "disk.img").st_ino == before

    # diff against the live source: touched only (its content read and found the same), then a
    # byte written into a hole (the same data at the extents, other content).
    os.utime(src / "disk.img", ns=(1, 1))
    r = lb("--json", "diff", "latest", "--live")
    changes = {c["path"]: c["changed"] for c in json_lines(r.out) if c.get("type") == "changed"}
    assert changes == {"/disk.img": ["mtime"]}, r.err
    with open(src / "disk.img", "r+b") as f:
        f.seek(30 * MiB)
        f.write(b"\1")
    os.utime(src / "disk.img", ns=(1, 1))
    r = lb("--json", "diff", "latest", "--live")
    changes = {c["path"]: c["changed"] for c in json_lines(r.out) if c.get("type") == "changed"}
    assert changes == {"/disk.img": ["content", "mtime"]}, r.err


def test_unchanged_and_rebuilt_cache_reruns_keep_the_layout(lb, grid, home, src, tmp_path):
    want = sha(src / "disk.img")
    caps = [summary(lb("--json", "backup", str(src), check=True).out)["cap"]]
    os.utime(src, ns=(1, 1))  # (another backup, not the same root)
    r = lb("--json", "backup", str(src), check=True)  # unchanged: the edge is made from the cache rows
    s = summary(r.out)
    assert s["files_unchanged"] == 1 and s["bytes_read"] == 0
    caps.append(s["cap"])
    for f in (home / "state" / "lafs-backup").glob("entry-cache.*"):
        f.unlink()  # a new machine: the cache is rebuilt from the last backup
    os.utime(src, ns=(2, 2))  # (another backup, not the same root)
    r = lb("--json", "backup", str(src), check=True)
    s = summary(r.out)
    assert s["files_unchanged"] == 1 and s["bytes_sent"] < MiB
    assert "entry cache was rebuilt" in r.out
    caps.append(s["cap"])
    assert len(set(caps)) == 3
    for n, ref in enumerate(caps):
        out = tmp_path / f"out{n}"
        lb("restore", ref, "--target", str(out), check=True)
        assert sha(out / "disk.img") == want and allocated(out / "disk.img") <= 2 * MiB
        assert ls_json(lb, ref)["disk.img"]["sparse"] == {"data_size": MiB, "extents": 3}


def test_a_tree_of_tahoe_directories_stores_it_whole_and_still_restores_it_sparse(lb, grid, home, src, tmp_path):
    want = sha(src / "disk.img")
    lb("backup", str(src), check=True)  # sparse, in the index
    conf = tmp_path / "tahoe.yaml"
    conf.write_text("destination:\n  tree: tahoe\n")
    os.utime(src, ns=(3, 3))
    # The same cache: the unchanged file's layout cannot be recorded in a Tahoe directory, so it
    # is read again and stored whole (compressed: its holes cost little).
    r = lb("-c", str(conf), "--json", "backup", str(src), check=True)
    assert summary(r.out)["files_unchanged"] == 0
    assert "sparse" not in ls_json(lb, "latest")["disk.img"]
    assert ls_json(lb, "latest")["disk.img"]["sha256"] == want
    out = tmp_path / "out"
    lb("restore", "latest", "--target", str(out), check=True)
    assert sha(out / "disk.img") == want
    assert allocated(out / "disk.img") <= 2 * MiB  # its zeros written as holes

    # Back in the index, reading every file to check it against its stored state: the SHA-256 of
    # the whole file and that of its data are not taken for silent corruption.
    os.utime(src, ns=(4, 4))
    r = lb("--json", "backup", "--mode", "verify", str(src))
    assert r.code == 0 and "corruption" not in r.out + r.err, r.out + r.err
    assert ls_json(lb, "latest")["disk.img"]["sparse"] == {"data_size": MiB, "extents": 3}


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="a FUSE mount needs /dev/fuse and root here (CI runs as root)")
def test_mount_reads_a_sparse_file_whole(lb, grid, home, src, tmp_path):
    want = (src / "disk.img").read_bytes()
    lb("backup", str(src), check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", "--url", grid.url, "mount", str(mnt)],
                         env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (mnt / "snapshots").exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.1)
        f = mnt / "snapshots" / "latest" / "disk.img"
        assert os.path.getsize(f) == 64 * MiB
        with open(f, "rb") as fh:
            fh.seek(63 * MiB)  # in the trailing hole, before the spool reached it
            assert fh.read(MiB) == bytes(MiB)
            fh.seek(20 * MiB - 10)  # across a hole's end and the next extent's start
            assert fh.read(4096) == want[20 * MiB - 10:20 * MiB + 4086]
        assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256(want).digest()
    finally:
        p.send_signal(15)
        _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
