"""Restore as root into a tree where another user owns a directory and races the restore."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

ATTACKER = 54321  # a uid with no account: the owner of a directory inside the target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restoring ownership needs root")


@pytest.fixture
def open_dir():
    """A directory the attacker can reach (the test's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="lafs-hostile-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _attack(evil: Path, bait: Path, stop_after: float) -> None:
    """In a child running as ATTACKER: the moment a file is created or written in ``evil``
    (inotify), rename it away and put a symlink to ``bait`` in its place; also sweep the
    directory now and then.  Runs until the parent kills it."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    ifd = libc.inotify_init()
    IN_CREATE, IN_CLOSE_WRITE, IN_MOVED_TO, IN_ATTRIB = 0x100, 0x8, 0x80, 0x4
    os.setgid(ATTACKER)
    os.setuid(ATTACKER)
    # Sitting in its own directory, as a logged-in user does: names relative to it keep working
    # whatever happens to the directories above.
    os.chdir(evil)
    libc.inotify_add_watch(ifd, b".", IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB)

    def swap(name: str) -> None:
        if name.endswith(".moved"):
            return
        p = name
        try:
            if os.path.islink(p):
                return
            os.rename(p, p + ".moved")
            os.symlink(str(bait), p)
        except OSError:
            pass

    deadline = time.monotonic() + stop_after
    while time.monotonic() < deadline:
        buf = os.read(ifd, 1 << 16)
        pos = 0
        while pos < len(buf):
            _, _, _, length = struct.unpack_from("iIII", buf, pos)
            name = buf[pos + 16:pos + 16 + length].rstrip(b"\0").decode()
            pos += 16 + length
            swap(name)


def test_attributes_never_follow_a_swapped_in_symlink(lb, open_dir):
    src = open_dir / "src"
    evil_src = src / "evil"
    evil_src.mkdir(parents=True)
    for i in range(1000):
        f = evil_src / f"tool{i:03d}"
        f.write_bytes(b"#!/bin/sh\necho %d\n" % i * 4)
        os.chmod(f, 0o4755)  # setuid root, as recorded
    os.mkfifo(evil_src / "pipe")
    (evil_src / "sub").mkdir()
    os.chown(evil_src, ATTACKER, ATTACKER)
    lb("backup", str(src), check=True)

    bait = open_dir / "bait"
    bait.write_bytes(b"not yours")
    os.chmod(bait, 0o600)
    before = os.stat(bait)
    target = open_dir / "target"
    (target / "evil").mkdir(parents=True)
    os.chmod(target, 0o755)
    os.chown(target / "evil", ATTACKER, ATTACKER)

    pid = os.fork()
    if pid == 0:  # the attacker
        try:
            _attack(target / "evil", bait, 60)
        finally:
            os._exit(0)
    try:
        r = lb("restore", "latest", "--target", str(target))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert r.code in (0, 1), r.err  # warnings for what the attacker broke, never a crash
    after = os.stat(bait)
    assert stat.S_IMODE(after.st_mode) == 0o600, oct(after.st_mode)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert bait.read_bytes() == b"not yours"
    assert os.listxattr(bait) == []
    # What the attacker did not touch came back as recorded.
    restored = [p for p in (target / "evil").iterdir() if p.name.startswith("tool") and not p.is_symlink()
                and not p.name.endswith(".moved")]
    for p in restored:
        st = os.lstat(p)
        assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_uid == 0
