"""The Entry record: one file, directory or symlink as phase one saw it."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field


KIND_FILE = "f"
KIND_DIR = "d"
KIND_LINK = "l"
KINDS = (KIND_FILE, KIND_DIR, KIND_LINK)


def kind_of(mode: int) -> str | None:
    """The queue kind letter for an ``st_mode``, or None for unsupported types."""
    if stat.S_ISREG(mode):
        return KIND_FILE
    if stat.S_ISDIR(mode):
        return KIND_DIR
    if stat.S_ISLNK(mode):
        return KIND_LINK
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """One queue line.

    ``path`` is relative to the source root, as raw bytes; the root itself is
    ``b""``.  ``target`` is a symlink's target.  ``extras`` holds optional
    named attributes as bytes, in a stable order.
    """

    kind: str
    path: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    nlink: int
    target: bytes | None = None
    extras: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def name(self) -> bytes:
        return self.path.rpartition(b"/")[2]

    @property
    def parent(self) -> bytes | None:
        """The parent's relative path; None for the root."""
        if not self.path:
            return None
        return self.path.rpartition(b"/")[0]

    @classmethod
    def from_stat(cls, path: bytes, st: "os.stat_result", target: bytes | None = None) -> "Entry":  # noqa: F821
        kind = kind_of(st.st_mode)
        if kind is None:
            raise ValueError("unsupported file type")
        return cls(
            kind=kind, path=path, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
            size=st.st_size if kind != KIND_DIR else 0,
            mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
            nlink=st.st_nlink, target=target,
        )


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name
