"""Compare two directory trees entry by entry.

:func:`differences` checks type, bytes, mode, mtime_ns and symlink targets
(optionally uid/gid).  :func:`full_differences` checks everything lafs-backup
preserves: also uid, gid, ACL text and the raw ACL xattrs, capability text
and raw bytes, all extended attributes, hard-link groups and rdev.  Both walk
with directory fds, so paths longer than PATH_MAX are compared too.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from pathlib import Path

from lafs_backup.system import posix1e

_ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")


def _walk(root: bytes):
    """Yield (relative path, dir fd, name) for every entry, the root as (b'.', None, root)."""
    yield b".", None, root
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == b"." else rel_dir + b"/" + name
            yield rel, dirfd, name


def _xattrs(path: bytes, follow: bool) -> dict[bytes, bytes]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return out
    for n in names:
        try:
            out[os.fsencode(n)] = os.getxattr(path, n, follow_symlinks=follow)
        except OSError:
            pass
    return out


def describe_tree(root: Path | str, full: bool = False, owners: bool = False,
                  skip_sockets: bool = True) -> dict[bytes, dict]:
    root_b = os.fsencode(str(root))
    out: dict[bytes, dict] = {}
    inodes: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for rel, dfd, name in _walk(root_b):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if skip_sockets and stat.S_ISSOCK(st.st_mode):
            continue
        rec: dict = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                     "mtime_ns": st.st_mtime_ns}
        if owners or full:
            rec["uid"], rec["gid"] = st.st_uid, st.st_gid
        if stat.S_ISLNK(st.st_mode):
            rec["target"] = os.readlink(name, dir_fd=dfd)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                rec["data"] = f.read()
            if st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)].append(rel)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            rec["rdev"] = st.st_rdev
        if full:
            path = name if dfd is None else b"/proc/self/fd/%d/%s" % (dfd, name)
            link = stat.S_ISLNK(st.st_mode)
            rec["xattrs"] = _xattrs(path, follow=not link)  # includes raw ACL and capability bytes
            if not link and not stat.S_ISFIFO(st.st_mode):
                rec["acl"] = posix1e.get_acl(path)
                if stat.S_ISDIR(st.st_mode):
                    rec["default_acl"] = posix1e.get_acl(path, default=True)
                if stat.S_ISREG(st.st_mode):
                    rec["caps"] = posix1e.get_caps(path)
        out[rel] = rec
    for group in inodes.values():
        for rel in group:
            out[rel]["hardlinks"] = tuple(sorted(group))
    return out


def _diff(ta: dict, tb: dict) -> list[str]:
    diffs = []
    for rel in sorted(set(ta) | set(tb)):
        if rel not in tb:
            diffs.append(f"missing in restore: {rel!r}")
        elif rel not in ta:
            diffs.append(f"extra in restore: {rel!r}")
        elif ta[rel] != tb[rel]:
            what = sorted(k for k in set(ta[rel]) | set(tb[rel]) if ta[rel].get(k) != tb[rel].get(k))
            detail = "; ".join(f"{k}: {ta[rel].get(k)!r:.80} != {tb[rel].get(k)!r:.80}" for k in what)
            diffs.append(f"differs: {rel!r}: {detail}")
    return diffs


def differences(a: Path | str, b: Path | str, owners: bool = False, root_mtime: bool = True) -> list[str]:
    """Differences in type, bytes, mode, mtime_ns, symlink target (and uid/gid with ``owners``)."""
    ta, tb = describe_tree(a, owners=owners), describe_tree(b, owners=owners)
    if not root_mtime:
        ta[b"."].pop("mtime_ns"), tb[b"."].pop("mtime_ns")
    return _diff(ta, tb)


def full_differences(a: Path | str, b: Path | str) -> list[str]:
    """Differences in everything lafs-backup preserves."""
    return _diff(describe_tree(a, full=True), describe_tree(b, full=True))
