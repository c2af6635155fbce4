"""Hostile sources: each problem is a warning naming the path, the run ends partial, and the rest is stored."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time

from conftest import cli_env, make_tree
from treecompare import differences

PARTIAL = 1


def _drop_dac_override() -> None:
    """Run as root without the capabilities that bypass file permissions (CAP_DAC_*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_file_and_directory(grid, home, tmp_path):
    src = tmp_path / "src"
    make_tree(src, small=20, medium=0, large=0)
    secret = src / "secret.txt"
    secret.write_bytes(b"s" * 500)
    locked = src / "locked-dir"
    locked.mkdir()
    (locked / "inside").write_bytes(b"i" * 500)
    os.chmod(secret, 0)
    os.chmod(locked, 0)
    try:
        p = subprocess.run([sys.executable, "-m", "lafs_backup", "--url", grid.url, "backup", str(src)],
                           env=cli_env(home), capture_output=True, text=True, timeout=300,
                           preexec_fn=_drop_dac_override if os.geteuid() == 0 else None)
    finally:
        os.chmod(secret, 0o644)
        os.chmod(locked, 0o755)
    assert p.returncode == PARTIAL, p.stderr
    assert "warning: secret.txt: skipped: Permission denied" in p.stderr
    assert "warning: locked-dir: cannot read directory: Permission denied" in p.stderr
    assert "warnings: 2" in p.stderr
    from conftest import run_cli
    out = tmp_path / "out"
    run_cli(["--url", grid.url, "restore", p.stdout.strip(), "--target", str(out)], home, check=True)
    shutil.rmtree(locked)
    secret.unlink()
    assert differences(src, out, root_mtime=False) == []


def test_vanished_and_replaced_between_the_phases(lb, tmp_path):
    src = tmp_path / "src"
    make_tree(src, small=30, medium=0, large=0)
    gone = sorted(src.rglob("*.txt"))[0]
    (src / "was-a-dir").mkdir()
    (src / "was-a-dir" / "child.txt").write_bytes(b"c" * 100)
    q = tmp_path / "q"
    lb("backup", str(src), "--queue-only", str(q), check=True)
    gone.unlink()
    shutil.rmtree(src / "was-a-dir")
    (src / "was-a-dir").write_bytes(b"now a file")
    r = lb("backup", str(src), "--reuse-queue", str(q))
    assert r.code == PARTIAL, r.err
    rel = gone.relative_to(src)
    assert f"warning: {rel}: skipped: it vanished since the scan" in r.err
    assert "warning: was-a-dir/child.txt: skipped: it vanished since the scan" in r.err
    assert "warning: was-a-dir: skipped: it is no longer a directory" in r.err
    out = tmp_path / "out"
    lb("restore", r.out.strip(), "--target", str(out), check=True)
    (src / "was-a-dir").unlink()
    assert differences(src, out, root_mtime=False) == []


def test_file_changing_while_read_is_read_again_then_warned(lb, tmp_path):
    src = tmp_path / "src"
    make_tree(src, small=20, medium=0, large=0)
    busy = src / "growing.log"
    busy.write_bytes(os.urandom(40 << 20))
    stop = threading.Event()

    def writer() -> None:
        with open(busy, "ab") as f:
            while not stop.is_set():
                f.write(b"more log\n")
                f.flush()
                time.sleep(0.002)

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = lb("backup", str(src))
    finally:
        stop.set()
        t.join()
    assert r.code == PARTIAL, r.err
    assert "warning: growing.log: changed while it was being read (twice); stored as last read" in r.err
    out = tmp_path / "out"
    lb("restore", r.out.strip(), "--target", str(out), check=True)
    restored = (out / "growing.log").read_bytes()
    assert busy.read_bytes().startswith(restored) and len(restored) >= 40 << 20
    busy.unlink()
    (out / "growing.log").unlink()
    assert differences(src, out, root_mtime=False) == []


def test_file_shrinking_under_its_raw_upload_is_read_again_not_a_crash(lb, tmp_path):
    """A file uploaded as its raw bytes (here: a plain tree, packing off) that shrinks while its
    body is being sent: read again from a private copy, with a warning, never an internal error."""
    src = tmp_path / "src"
    src.mkdir()
    busy = src / "rotating.img"
    full = os.urandom(40 << 20)
    busy.write_bytes(full)
    stop = threading.Event()

    def rotator() -> None:  # truncated and written again, like a log rotated in place
        while not stop.is_set():
            with open(busy, "r+b") as f:
                f.truncate(1 << 20)
                f.seek(0, 2)
                f.write(full[1 << 20:])
            time.sleep(0.001)

    conf = tmp_path / "plain.yaml"
    conf.write_text("destination:\n  pack:\n    max_file_size: 0\n")
    t = threading.Thread(target=rotator)
    t.start()
    try:
        r = lb("-c", str(conf), "backup", str(src))
    finally:
        stop.set()
        t.join()
    assert "internal error" not in r.err and "Traceback" not in r.err, r.err
    assert r.code in (0, PARTIAL), r.err
    out = tmp_path / "out"
    lb("restore", r.out.strip(), "--target", str(out), check=True)  # its SHA-256 matches what was stored
    got = (out / "rotating.img").read_bytes()
    assert full.startswith(got) and len(got) >= 1 << 20
