"""The Entry record: one file, directory or symlink as phase one saw it."""

from __future__ import annotations

import os
import re
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
    def from_stat(cls, path: bytes, st: os.stat_result, target: bytes | None = None,
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


# -- names as text: printable, one line, byte for byte ---------------------------------------------
_UNESCAPE_RE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
# Printable ASCII but backslash, with no space at either end: written as is.
_PLAIN = re.compile(rb"(?:[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]*[\x21-\x5b\x5d-\x7e])?)?")


def escape(raw: bytes, extra: str = "") -> str:
    """Encode name bytes as printable text; :func:`unescape` reverses it."""
    if not extra and _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    s = raw.decode("utf-8", "surrogateescape")
    if (s.isprintable() and "\\" not in s and s[:1] != " " and s[-1:] != " "
            and not any(c in s for c in extra)):
        return s
    out = []
    last = len(s) - 1
    for i, c in enumerate(s):
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, via surrogateescape
            out.append("\\x%02x" % (o - 0xDC00))
        elif not c.isprintable() or c in extra or (c == " " and (i == 0 or i == last)):
            out.extend("\\x%02x" % b for b in c.encode("utf-8"))
        else:
            out.append(c)
    return "".join(out)


def unescape(text: str) -> bytes:
    """Decode a field written by :func:`escape`."""
    if "\\" not in text:
        return text.encode("utf-8")
    out = bytearray()
    pos = 0
    for m in _UNESCAPE_RE.finditer(text):
        out += text[pos:m.start()].encode("utf-8")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    rest = text[pos:]
    if "\\" in rest:
        raise ValueError("bad escape sequence")
    out += rest.encode("utf-8")
    return bytes(out)
