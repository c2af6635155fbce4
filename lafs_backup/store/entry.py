"""The Entry record: one file, directory or symlink as phase one saw it."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field


KIND_FILE = "f"
KIND_DIR = "d"
KIND_LINK = "l"
KIND_FIFO = "p"
KIND_CHAR = "c"
KIND_BLOCK = "b"
KIND_SOCKET = "s"
KINDS = (KIND_FILE, KIND_DIR, KIND_LINK, KIND_FIFO, KIND_CHAR, KIND_BLOCK, KIND_SOCKET)
SPECIAL_KINDS = (KIND_FIFO, KIND_CHAR, KIND_BLOCK, KIND_SOCKET)

_FMT = {stat.S_IFREG: KIND_FILE, stat.S_IFDIR: KIND_DIR, stat.S_IFLNK: KIND_LINK,
        stat.S_IFIFO: KIND_FIFO, stat.S_IFCHR: KIND_CHAR, stat.S_IFBLK: KIND_BLOCK,
        stat.S_IFSOCK: KIND_SOCKET}


def kind_of(mode: int) -> str | None:
    """The queue kind letter for an ``st_mode``, or None for an unknown type."""
    return _FMT.get(stat.S_IFMT(mode))


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

    def extra(self, key: str) -> bytes | None:
        for k, v in self.extras:
            if k == key:
                return v
        return None

    @classmethod
    def from_stat(cls, path: bytes, st: "os.stat_result", target: bytes | None = None,  # noqa: F821
                  extras: tuple[tuple[str, bytes], ...] = ()) -> "Entry":
        kind = kind_of(st.st_mode)
        if kind is None:
            raise ValueError("unsupported file type")
        return cls(
            kind=kind, path=path, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
            size=st.st_size if kind in (KIND_FILE, KIND_LINK) else 0,
            mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
            nlink=st.st_nlink, target=target, extras=extras,
        )


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name
