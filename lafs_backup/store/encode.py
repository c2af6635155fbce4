"""Content encodings: lz4 or xz frames, early detection of incompressible data, and the one decoder that
turns stored bytes back into a file's content (which files to compress: ``encoding.py``)."""

from __future__ import annotations

import lzma
from typing import Callable, Protocol

import lz4.frame

from ..encoding import LZ4, XZ, EncodingRules

#: Random bytes that make a second upload of an object differ from the first (another storage
#: index), for when the grid still holds a cancelled first upload's shares as "incoming".  The
#: store puts them after an object's bytes, behind SALT_MARK: readers never read that far (a
#: compressed frame ends before it, a raw file at its recorded size, a pack member at its length).
SALT_LEN = 16
SALT_MARK = b"\0lafs-backup-salt:"
#: Objects stored by earlier versions behind a SALT_LEN salt *before* their bytes ("salted",
#: "salted+lz4"): still read.
SALTED = "salted"


class Compressor(Protocol):
    """A streaming compressor (lz4's frame compressor, after its ``begin()``; ``lzma``'s)."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Decompressor(Protocol):
    """A streaming decompressor (lz4's frame decompressor, ``lzma``'s): ``eof`` once its frame ended."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, /) -> bytes: ...


def _unsalted(method: str | None) -> tuple[bool, str | None]:
    if method == SALTED:
        return True, None
    if method is not None and method.startswith(SALTED + "+"):
        return True, method[len(SALTED) + 1:]
    return False, method

_PROBE = 64 << 10  # bytes compressed first to judge a file
_WORTH = 0.9  # keep the compressed form only below this ratio


def _compressor(method: str) -> Callable[[bytes], bytes]:
    if method == LZ4:
        return lambda data: lz4.frame.compress(data, store_size=False)
    if method == XZ:
        return lambda data: lzma.compress(data, preset=6)
    raise ValueError(method)


def compress(method: str, data: bytes) -> bytes | None:
    """The encoded bytes, or None when compressing does not pay (checked on a probe first)."""
    fn = _compressor(method)
    if len(data) > _PROBE and len(fn(data[:_PROBE])) > _PROBE * _WORTH:
        return None
    out = fn(data)
    return out if len(out) < len(data) * _WORTH else None


def member_form(rules: EncodingRules, path: bytes, data: bytes) -> tuple[str | None, bytes]:
    """How a small file's bytes are stored in a pack: (its encoding, the bytes), compressed if
    ``rules`` say so for ``path`` and it pays, else (None, ``data``)."""
    enc = rules.choose(path, len(data))
    stored = compress(enc, data) if enc else None
    return (enc, stored) if stored is not None else (None, data)


class Decoder:
    """Turns an object's stored bytes, fed in chunks, back into the file's content.

    ``size``: the content's recorded length; a raw object's bytes beyond it
    (a salt) are dropped, as is anything after the end of a compressed frame.
    """

    def __init__(self, method: str | None, size: int | None = None) -> None:
        salt, method = _unsalted(method)
        self._skip = SALT_LEN if salt else 0
        self._left = size if method is None else None
        if method is None:
            self._d: Decompressor | None = None
        elif method == LZ4:
            self._d = lz4.frame.LZ4FrameDecompressor()
        elif method == XZ:
            self._d = lzma.LZMADecompressor()
        else:
            raise ValueError(f"unknown encoding {method!r}")

    def feed(self, chunk: bytes) -> bytes:
        if self._skip:
            cut = min(self._skip, len(chunk))
            chunk, self._skip = chunk[cut:], self._skip - cut
        if self._d is None:
            if self._left is None:
                return chunk
            chunk = chunk[:self._left]
            self._left -= len(chunk)
            return chunk
        if self._d.eof:
            return b""  # past the end of the frame: a salt
        return self._d.decompress(chunk)


def decode(method: str | None, data: bytes, size: int | None = None) -> bytes:
    """The content of an object stored whole in ``data``."""
    return Decoder(method, size).feed(data)
