"""Sparse files: their data extents found with SEEK_DATA/SEEK_HOLE, read as one concatenation, laid out again.

A sparse file is stored as the concatenation of its data extents (so
hashing and deduplication work on its data alone) and its :class:`Layout`:
its logical size and where each extent lies; everything else is a hole,
read as zeros.  A file without holes has no layout and is stored as it
always was.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

#: The edge metadata key of a sparse file's extents: ``[[offset, length], ...]``, in order.
EXTENTS = "extents"
#: Holes shorter than this are kept as zeros inside the extent around them (a hole costs a few
#: bytes of metadata and a seek; a file system allocates in blocks anyway).  A file is recorded
#: as sparse only when at least one hole this long is left.
MIN_HOLE = 64 << 10
#: At most this many extents are recorded: a file more fragmented than that has its shortest
#: holes kept as zeros until it fits, so its metadata stays small.
MAX_EXTENTS = 1024
#: Restore writes an aligned block of zeros this long as a hole (a seek), whatever the layout.
ZERO_BLOCK = 64 << 10
_ZEROS = bytes(1 << 20)
#: errnos of a file system that cannot say where its holes are: the file is read as dense.
_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY, errno.ESPIPE)


class ReadAt(Protocol):
    def pread(self, n: int, offset: int) -> bytes: ...


@dataclass(frozen=True)
class Layout:
    """Where a sparse file's data lies: ``extents`` as (offset, length), in order, apart, each
    within ``size`` bytes (the logical size); the rest are holes."""

    size: int
    extents: tuple[tuple[int, int], ...]

    @property
    def data_size(self) -> int:
        """Bytes of data: the length of the stored concatenation."""
        return sum(n for _, n in self.extents)

    def cut(self, n: int) -> Layout:
        """The layout of the first ``n`` bytes of data only (what a shrinking file gave)."""
        out = []
        for off, length in self.extents:
            if n <= 0:
                break
            out.append((off, min(length, n)))
            n -= length
        return Layout(self.size, tuple(out))

    def as_json(self) -> list[list[int]]:
        return [[off, n] for off, n in self.extents]

    def key_bytes(self) -> bytes:
        """The layout as canonical bytes (what the entry cache keeps)."""
        return json.dumps([self.size, self.as_json()], separators=(",", ":")).encode("ascii")


def layout_of(meta: Mapping[str, Any]) -> Layout | None:
    """The layout recorded in a file's edge metadata (None: a dense file).  Raises ValueError for
    a layout that is not one (extents out of order, overlapping, or beyond the size)."""
    raw = meta.get(EXTENTS)
    if raw is None:
        return None
    size = meta.get("size")
    if not isinstance(size, int) or not isinstance(raw, list):
        raise ValueError("a sparse file's extents are not recorded properly")
    return checked(size, raw)


def checked(size: int, raw: object) -> Layout:
    """``raw`` (``[[offset, length], ...]``) as the layout of a ``size``-byte file; ValueError if
    it is not one."""
    if not isinstance(raw, list):
        raise ValueError("extents are not a list")
    out = []
    end = 0
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or not all(type(x) is int for x in item)
                or item[0] < end or item[1] <= 0 or item[0] + item[1] > size):
            raise ValueError("a sparse file's extents are out of order or beyond its size")
        out.append((item[0], item[1]))
        end = item[0] + item[1]
    return Layout(size, tuple(out))


def from_cache(cap: str, size: int) -> Layout | None:
    """The layout an entry cache row keeps (see :func:`as_cap`); None if it is not one."""
    if not cap.startswith("URI:LIT:"):
        return None
    try:
        text = cap[len("URI:LIT:"):].upper()
        got_size, raw = json.loads(base64.b32decode(text + "=" * (-len(text) % 8)))
        return checked(size, raw) if got_size == size else None
    except (ValueError, TypeError):
        return None


def as_cap(layout: Layout) -> str:
    """A layout as the entry cache keeps it: the LIT cap of its canonical bytes (an object whose
    content is the layout; Tahoe's 55-byte limit is where it stops uploading, not what a LIT cap
    may hold)."""
    return "URI:LIT:" + base64.b32encode(layout.key_bytes()).decode("ascii").lower().rstrip("=")


# -- finding the extents ------------------------------------------------------------------------
def data_extents(fd: int, size: int) -> Layout | None:
    """The layout of the first ``size`` bytes of the file open as ``fd``, or None: it has no hole
    worth recording (nearly every file: one ``lseek``), or its file system cannot tell.

    Holes shorter than :data:`MIN_HOLE` stay inside their extents; at most :data:`MAX_EXTENTS`
    extents are returned.  The file's offset is left where it was (reads go by offset).
    """
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None or size < MIN_HOLE:
        return None
    try:
        if os.lseek(fd, 0, seek_hole) >= size:
            return None  # no hole before the end (or a file system that reports none)
        found: list[tuple[int, int]] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, seek_data)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after pos: a hole to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, seek_hole), size)
            if end <= start:  # (a file changing under us: read the rest as data)
                end = size
            found.append((start, end - start))
            pos = end
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return None
        raise
    return _merged(size, found)


def _merged(size: int, found: list[tuple[int, int]]) -> Layout | None:
    """``found`` with holes shorter than the gap kept as data (the gap doubled until at most
    :data:`MAX_EXTENTS` are left); None when no hole of :data:`MIN_HOLE` is left."""
    gap = MIN_HOLE
    while True:
        out: list[tuple[int, int]] = []
        for off, n in found:
            if out and off - (out[-1][0] + out[-1][1]) < gap:
                out[-1] = (out[-1][0], off + n - out[-1][0])
            else:
                out.append((off, n))
        if len(out) <= MAX_EXTENTS:
            break
        gap *= 2
    holes = size - sum(n for _, n in out)
    if holes < MIN_HOLE:
        return None
    return Layout(size, tuple(out))


class ExtentView:
    """The data of a sparse file read by offset, as one concatenation of its extents: what is
    hashed and stored.  A file that shrank under it reads short, as the file itself would."""

    def __init__(self, src: ReadAt, layout: Layout) -> None:
        self._src = src
        self._starts: list[int] = []  # where each extent begins in the concatenation
        at = 0
        for _, n in layout.extents:
            self._starts.append(at)
            at += n
        self._extents = layout.extents
        self.size = at

    def pread(self, n: int, offset: int) -> bytes:
        parts = []
        i = self._find(offset)
        while n > 0 and i < len(self._extents):
            off, length = self._extents[i]
            within = offset - self._starts[i]
            want = min(n, length - within)
            got = self._src.pread(want, off + within)
            parts.append(got)
            if len(got) < want:
                break
            n -= want
            offset += want
            i += 1
        return b"".join(parts)

    def _find(self, offset: int) -> int:
        lo, hi = 0, len(self._starts)
        while lo < hi:  # the last extent starting at or before offset
            mid = (lo + hi) // 2
            if self._starts[mid] <= offset:
                lo = mid + 1
            else:
                hi = mid
        i = max(0, lo - 1)
        if i < len(self._extents) and offset - self._starts[i] >= self._extents[i][1]:
            return len(self._extents)  # at or past the end
        return i


# -- laying the data out again --------------------------------------------------------------------
class Unfold:
    """Turns a sparse file's data, fed in order, into its logical content: ``write(bytes)`` for
    the bytes in order, ``hole(n)`` for each run of ``n`` zeros (None: zeros are written, at most
    1 MiB at a time).  :meth:`finish` ends it with the trailing hole; ``overflow`` counts data
    bytes beyond the extents (a damaged object)."""

    def __init__(self, layout: Layout, write: Callable[[bytes], object],
                 hole: Callable[[int], object] | None = None) -> None:
        self.layout = layout
        self._write = write
        self._hole = hole
        self.reset()

    def reset(self) -> None:
        """Start over (the download starts again)."""
        self._i = 0  # the extent being filled
        self._into = 0  # bytes of it filled
        self.pos = 0  # logical bytes given out
        self.overflow = 0

    def _skip_to(self, offset: int) -> None:
        n = offset - self.pos
        if n <= 0:
            return
        self.pos = offset
        if self._hole is not None:
            self._hole(n)
            return
        while n > 0:
            k = min(n, len(_ZEROS))
            self._write(_ZEROS[:k])
            n -= k

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        extents = self.layout.extents
        while view:
            if self._i >= len(extents):
                self.overflow += len(view)
                return
            off, length = extents[self._i]
            if self._into == 0:
                self._skip_to(off)
            k = min(len(view), length - self._into)
            self._write(bytes(view[:k]))
            self.pos += k
            self._into += k
            view = view[k:]
            if self._into == length:
                self._i += 1
                self._into = 0

    def finish(self) -> None:
        """The trailing hole, once all the data is in."""
        self._skip_to(self.layout.size)


def is_zero(data: bytes) -> bool:
    """Whether ``data`` holds nothing but zero bytes (a comparison with zeros: memcmp's speed)."""
    step = len(_ZEROS)
    if len(data) <= step:
        return data == _ZEROS[:len(data)]
    return all(data[at:at + step] == _ZEROS[:len(data[at:at + step])] for at in range(0, len(data), step))


# -- comparing a file on disk with what was recorded --------------------------------------------
def holds(fd: int, meta: Mapping[str, Any]) -> bool:
    """Whether the file open as ``fd`` holds the content a file's edge metadata ``meta`` records:
    its SHA-256, or for a sparse file its data at its extents and zeros elsewhere (:func:`matches`).
    Nothing recorded to compare with is False."""
    want = meta.get("sha256")
    if not isinstance(want, str):
        return False
    try:
        layout = layout_of(meta)
    except ValueError:
        return False
    return sha256_fd(fd) == want if layout is None else matches(fd, layout, want)


def sha256_fd(fd: int) -> str:
    """The SHA-256 (hex) of the file open as ``fd``, read by offset."""
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)


def matches(fd: int, layout: Layout, sha256_hex: str) -> bool:
    """Whether the file open as ``fd`` holds exactly the content of a sparse file recorded as
    ``layout`` and the SHA-256 of its data: its size, its bytes at the extents, and zeros
    everywhere else (its own holes are skipped, not read)."""
    if os.fstat(fd).st_size != layout.size:
        return False
    h = hashlib.sha256()
    end = 0
    for off, n in layout.extents:
        if not _zeros_between(fd, end, off):
            return False
        for at in range(off, off + n, 1 << 20):
            chunk = os.pread(fd, min(1 << 20, off + n - at), at)
            if not chunk:
                return False
            h.update(chunk)
        end = off + n
    return _zeros_between(fd, end, layout.size) and h.hexdigest() == sha256_hex


def _zeros_between(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of ``fd`` are all zeros (its holes are skipped where it can say)."""
    pos = start
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                return True
            if err.errno not in _UNSUPPORTED:
                raise
        if pos >= end:
            return True
        try:
            stop = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError:
            stop = end
        while pos < stop:
            chunk = os.pread(fd, min(1 << 20, stop - pos), pos)
            if not chunk:
                return True  # (the size was checked: the file shrank meanwhile; caught by the hash)
            if not is_zero(chunk):
                return False
            pos += len(chunk)
    return True
