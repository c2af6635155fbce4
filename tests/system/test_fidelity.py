"""Metadata fidelity against the real grid: everything that makes a file what it is comes back.

Run as root (as CI does): ownership, devices, trusted.* xattrs and
capabilities need it.
"""

from __future__ import annotations

import os
import socket
import stat
import unicodedata
from pathlib import Path

import pytest

from lafs_backup.system import posix1e
from treecompare import describe_tree, full_differences

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _mkdir_long_path(base: bytes) -> bytes:
    """A file whose path below ``base`` is longer than PATH_MAX (4096 bytes)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    comp = b"L" * 200
    depth = 0
    while depth * 201 < 4300:
        os.mkdir(comp, 0o755, dir_fd=fd)
        nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        depth += 1
    f = os.open(b"deep.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
    os.write(f, b"deep content " * 10)
    os.close(f)
    os.utime(b"deep.txt", ns=(1_600_000_000_123_456_789,) * 2, dir_fd=fd)
    os.close(fd)
    return b"/".join([comp] * depth) + b"/deep.txt"


def build_hostile_tree(root: Path) -> None:
    r = os.fsencode(str(root))
    root.mkdir()
    (root / "empty-dir").mkdir()
    (root / "empty-file").write_bytes(b"")
    # ACLs with named users and groups, and a default ACL on a directory.
    acl_file = root / "acl-file.txt"
    acl_file.write_bytes(b"acl protected\n" * 20)
    posix1e.set_acl(os.fsencode(str(acl_file)), "u::rw-,u:nobody:r--,u:1234:rw-,g::r--,g:nogroup:r--,m::rw-,o::---")
    acl_dir = root / "acl-dir"
    acl_dir.mkdir()
    posix1e.set_acl(os.fsencode(str(acl_dir)), "u::rwx,u:nobody:r-x,g::r-x,m::r-x,o::---")
    posix1e.set_acl(os.fsencode(str(acl_dir)), "u::rwx,u:1234:rwx,g::r-x,g:4321:r-x,m::rwx,o::---", default=True)
    (acl_dir / "inside.txt").write_bytes(b"x" * 100)
    # A capability.
    ping = root / "ping"
    ping.write_bytes(b"\x7fELF pretend binary" * 10)
    os.chmod(ping, 0o755)
    posix1e.set_caps(os.fsencode(str(ping)), "cap_net_raw+ep")
    # Extended attributes, one of them binary, and one on a symlink.
    xf = root / "xattrs.bin"
    xf.write_bytes(os.urandom(300))
    os.setxattr(xf, "user.comment", b"hello world")
    os.setxattr(xf, "user.binary", bytes(range(256)))
    os.setxattr(xf, "trusted.secret", b"\x00\xff\x00")
    # A hard-link group of three, across directories, and ownership by ids with and without names.
    (root / "links").mkdir()
    h = root / "links" / "one"
    h.write_bytes(b"linked content\n" * 100)
    os.link(h, root / "links" / "two")
    os.link(h, root / "three")
    os.chown(h, 1234, 5678)
    owned = root / "owned-by-nobody"
    owned.write_bytes(b"n" * 70)
    os.chown(owned, 65534, 65534)
    # Special files.
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null-device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "socket"))
    s.close()
    # setuid, setgid and sticky bits.
    su = root / "setuid-prog"
    su.write_bytes(b"#!/bin/sh\necho hi there, this is long enough\n")
    os.chmod(su, 0o4755)
    sg = root / "setgid-dir"
    sg.mkdir()
    os.chmod(sg, 0o2775)
    st_dir = root / "sticky-tmp"
    st_dir.mkdir()
    os.chmod(st_dir, 0o1777)
    # A sparse file: 8 MiB with a little data in the middle.
    with open(root / "sparse.img", "wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(b"island of data" * 100)
    # Symlinks: dangling, absolute, a loop, owned by someone else.
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/etc/hostname", root / "absolute")
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    os.lchown(root / "dangling", 1234, 5678)
    # Every odd name.
    odd = root / "odd"
    odd.mkdir()
    ob = os.fsencode(str(odd))
    names = [b"new\nline", b"tab\there", b"\xff\xfe invalid utf-8", b" leading and trailing ",
             b"back\\slash", b"n" * 255, unicodedata.normalize("NFC", "caf\u00e9").encode(),
             unicodedata.normalize("NFD", "caf\u00e9").encode()]
    for i, n in enumerate(names):
        with open(ob + b"/" + n, "wb") as f:
            f.write(b"odd %d " % i * 20)
    _mkdir_long_path(r)
    # Precise times everywhere, directories and symlinks included (children first).
    t = 1_700_000_000_000_000_001
    for dirpath, dirnames, filenames, dirfd in os.fwalk(r, topdown=False, follow_symlinks=False):
        for n in filenames + dirnames:
            if n == b"socket":
                continue
            t += 1_000_003
            os.utime(n, ns=(t, t), dir_fd=dirfd, follow_symlinks=False)
    os.utime(r, ns=(t + 7, t + 7))


@root_only
def test_everything_comes_back(lb, tmp_path):
    src = tmp_path / "src"
    build_hostile_tree(src)
    before = describe_tree(src, full=True, skip_sockets=False)
    r = lb("backup", str(src))
    assert r.code == 0, r.err
    assert "sockets are recorded but cannot be restored" in r.err
    cap = r.out.strip()
    out = tmp_path / "restored"
    rr = lb("restore", cap, "--target", str(out))
    assert rr.code == 0, rr.err
    assert "socket not restored" in rr.err
    assert full_differences(src, out) == []
    assert not (out / "socket").exists()
    # The backup changed nothing in the source: no atime, xattr or ACL writes.
    assert describe_tree(src, full=True, skip_sockets=False) == before


@root_only
def test_atime_is_left_alone(lb, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for p in (src / "a.txt", src / "sub" / "b.txt"):
        p.write_bytes(os.urandom(5000))
    old = 1_500_000_000_000_000_000
    for p in (src / "a.txt", src / "sub" / "b.txt", src / "sub", src):
        os.utime(p, ns=(old, old + 5))  # atime older than mtime: relatime would update it
    lb("backup", str(src), check=True)
    for p in (src / "a.txt", src / "sub" / "b.txt", src / "sub", src):
        assert os.stat(p).st_atime_ns == old, p


@root_only
def test_numeric_owner_and_no_owner(lb, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f.txt"
    f.write_bytes(b"owned" * 20)
    os.chown(f, 65534, 65534)  # nobody:nogroup
    cap = lb("backup", str(src), check=True).out.strip()
    out = tmp_path / "a"
    lb("restore", cap, "--target", str(out), "--no-owner", check=True)
    assert (os.stat(out / "f.txt").st_uid, os.stat(out / "f.txt").st_gid) == (0, 0)
    out = tmp_path / "b"
    lb("restore", cap, "--target", str(out), "--numeric-owner", check=True)
    assert (os.stat(out / "f.txt").st_uid, os.stat(out / "f.txt").st_gid) == (65534, 65534)


def test_missing_libacl_records_nothing_false(tmp_path, monkeypatch):
    from lafs_backup.filters import compile_rules
    from lafs_backup.backup.scan import scan

    f = tmp_path / "f"
    f.write_text("x")
    if os.geteuid() == 0 or os.stat(f).st_uid == os.geteuid():
        posix1e.set_acl(os.fsencode(str(f)), "u::rw-,u:1234:r--,g::r--,m::r--,o::---")
    monkeypatch.setattr(posix1e, "ACL_LIBRARY", "libacl-missing.so.0")
    monkeypatch.setattr(posix1e, "_libs", {})
    notes = []
    entries = list(scan(str(tmp_path), compile_rules([]), lambda p, m: None,
                        lambda k, m: notes.append((k, m))))
    keys = {k for e in entries for k, _ in e.extras}
    assert "acl" not in keys and "acl_names" not in keys
    assert notes == [("no-libacl", "libacl-missing.so.0 is not available: POSIX ACLs are not captured")]
