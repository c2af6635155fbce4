"""Compare two directory trees entry by entry: type, bytes, mode, mtime_ns and symlink targets."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def snapshot_tree(root: Path | str, owners: bool = False, root_mtime: bool = True) -> dict[bytes, tuple]:
    """Describe every entry below ``root`` (and ``root`` itself as b'.')."""
    root_b = os.fsencode(str(root))
    out: dict[bytes, tuple] = {}

    def describe(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        mtime = st.st_mtime_ns if (rel != b"." or root_mtime) else None
        rec: tuple = (kind, stat.S_IMODE(st.st_mode), mtime)
        if owners:
            rec += (st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            rec += (os.readlink(path),)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                rec += (f.read(),)
        out[rel] = rec
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(path):
                describe(path + b"/" + name, name if rel == b"." else rel + b"/" + name)

    describe(root_b, b".")
    return out


def differences(a: Path | str, b: Path | str, **kw: bool) -> list[str]:
    """Human-readable differences between two trees; empty when identical."""
    ta, tb = snapshot_tree(a, **kw), snapshot_tree(b, **kw)
    diffs = []
    for rel in sorted(set(ta) | set(tb)):
        if rel not in tb:
            diffs.append(f"missing in restore: {rel!r}")
        elif rel not in ta:
            diffs.append(f"extra in restore: {rel!r}")
        elif ta[rel] != tb[rel]:
            fa, fb = ta[rel], tb[rel]
            names = ["type", "mode", "mtime_ns"] + (["uid", "gid"] if kw.get("owners") else []) + ["data"]
            what = [n for n, x, y in zip(names, fa, fb) if x != y]
            diffs.append(f"differs: {rel!r}: {', '.join(what)}")
    return diffs
