"""The snapshot index: every directory of a snapshot in a few objects (pure).

Reading a snapshot through its directories costs one gateway request per
directory, and the gateway spends tens of milliseconds of CPU rendering each
listing.  So with each snapshot the backup also stores its index: every
directory's cap with the exact body it was made from, the same
``mkdir-immutable`` JSON the grid holds (names, caps and edge metadata), so a
reader parses an index record exactly as it parses a listing; and its
*names*: one line per entry, by name, with its kind and, for a subdirectory,
its cap (see ``snapshot.names_of``), so a listing of the whole tree
(``ls -R``, ``find``) reads names without parsing any body.

Records go in the order directories are finished (children before their
parent) into chunks: a msgpack array ``[FORMAT, [[dircap, body, names], ...]]``,
compressed as an LZ4 frame (format 1, read still, had no names).  A chunk ends after a record whose dircap hashes
to a cut point, each record being one with a chance proportional to its size
(a chunk averages :data:`CHUNK_AVG` bytes whatever the directories' sizes),
once the chunk holds :data:`CHUNK_MIN` bytes, and always before
:data:`CHUNK_MAX`: the boundaries follow the content, so a part of the tree
that did not change gives the same chunks as before wherever it moved in
the stream, and the store keeps them by content (a rerun stores only the
chunks around what changed).

On the grid the snapshot root links an ``index`` directory whose children
``chunk-000000``, ``chunk-000001``... are the chunks: deep-check and its
leases reach them like everything else.  The native directory tree stays
complete, so any Tahoe tool can still browse a snapshot, and a snapshot
without an index (made before it existed, or by a copy that could not
translate it) is read through its directories.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator

import lz4.frame
import msgpack

FORMAT = 2
#: The formats this version reads.
READS = (1, 2)
#: A record: (dircap, body, names); names None in a chunk of format 1.
Record = tuple[str, bytes, "bytes | None"]
#: A chunk holds this many bytes of records on average...
CHUNK_AVG = 1 << 20
#: ...is cut at a cut point only once it holds this many (small, so that boundaries resync soon
#: after a change)...
CHUNK_MIN = 64 << 10
#: ...and always before it would hold more than this.
CHUNK_MAX = 8 << 20


class BadIndex(ValueError):
    pass


class IndexWriter:
    """Collects directory records into chunks (the uncompressed bytes; the store compresses).

    ``add`` returns a chunk whenever one is complete; ``finish`` returns the
    last one.  A directory whose cap was added already (two identical
    directories) is recorded once.  Memory: one chunk, and the dircaps seen.
    """

    def __init__(self) -> None:
        self._records: list[list[object]] = []
        self._size = 0
        self._seen: set[str] = set()
        self.dirs = 0

    def add(self, cap: str, body: bytes, names: bytes) -> bytes | None:
        if cap in self._seen:
            return None
        self._seen.add(cap)
        self.dirs += 1
        out = None
        size = len(body) + len(names)
        if self._records and self._size + size > CHUNK_MAX:
            out = self._cut()
        self._records.append([cap, body, names])
        self._size += size + len(cap)
        if out is None and self._size >= CHUNK_MIN and _cut_point(cap, len(body)):
            out = self._cut()
        return out

    def finish(self) -> bytes | None:
        return self._cut() if self._records else None

    def _cut(self) -> bytes:
        raw = chunk_bytes(self._records)
        self._records = []
        self._size = 0
        return raw


def chunk_bytes(records: list[Any]) -> bytes:
    """A chunk's uncompressed bytes: its records (``[dircap, body, names]``, in order).  Records
    without names (read from a chunk of format 1) make that chunk's bytes again."""
    if records and all(len(r) == 2 or r[2] is None for r in records):
        raw: bytes = msgpack.packb([1, [[r[0], r[1]] for r in records]], use_bin_type=True)
    else:
        raw = msgpack.packb([FORMAT, [list(r) for r in records]], use_bin_type=True)
    return raw


def _cut_point(cap: str, size: int) -> bool:
    """Is the record of ``cap`` (``size`` bytes) a cut point?  With probability size / CHUNK_AVG,
    decided by the cap alone."""
    return zlib.crc32(cap.encode("ascii", "replace")) * CHUNK_AVG < size * (1 << 32)


def compress(raw: bytes) -> bytes:
    """A chunk as stored."""
    return lz4.frame.compress(raw)


def decompress(stored: bytes) -> bytes:
    """A stored chunk's uncompressed bytes.  Bytes after the LZ4 frame (a salt the store added to
    get past an unhappy refusal) are ignored.  Raises :class:`BadIndex`."""
    d = lz4.frame.LZ4FrameDecompressor()
    try:
        raw: bytes = d.decompress(stored)
    except Exception as e:  # lz4 raises a variety of errors on damaged input
        raise BadIndex(f"an index chunk cannot be read ({type(e).__name__})") from None
    if not d.eof:
        raise BadIndex("an index chunk is cut short")
    return raw


def records(stored: bytes) -> Iterator[Record]:
    """The (dircap, body, names) records of a stored chunk.  Raises :class:`BadIndex`."""
    raw = decompress(stored)
    try:
        fmt, recs = msgpack.unpackb(raw, raw=False, use_list=True)
    except Exception as e:  # lz4 and msgpack raise a variety of errors on damaged input
        raise BadIndex(f"an index chunk cannot be read ({type(e).__name__})") from None
    if fmt not in READS:
        raise BadIndex(f"an index chunk of format {fmt!r} (this version reads {', '.join(map(str, READS))})")
    width = 2 if fmt == 1 else 3
    for rec in recs:
        if not (isinstance(rec, list) and len(rec) == width and isinstance(rec[0], str)
                and all(isinstance(x, bytes) for x in rec[1:])):
            raise BadIndex("an index record is not a directory cap, body and names")
        yield rec[0], rec[1], rec[2] if width == 3 else None
