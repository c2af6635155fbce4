"""Content encodings: which files to compress (pure rules), lz4 or xz frames, early detection of
incompressible data, and the one decoder that turns stored bytes back into a file's content."""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import lz4.frame

from ..errors import ConfigError

LZ4 = "lz4"
XZ = "xz"
METHODS = (LZ4, XZ)
#: Random bytes that make a second upload of an object differ from the first (another storage
#: index), for when the grid still holds a cancelled first upload's shares as "incoming".  The
#: store puts them after an object's bytes, behind SALT_MARK: readers never read that far (a
#: compressed frame ends before it, a raw file at its recorded size, a pack member at its length).
SALT_LEN = 16
SALT_MARK = b"\0lafs-backup-salt:"
#: Objects stored by earlier versions behind a SALT_LEN salt *before* their bytes ("salted",
#: "salted+lz4"): still read.
SALTED = "salted"


def _unsalted(method: str | None) -> tuple[bool, str | None]:
    if method == SALTED:
        return True, None
    if method is not None and method.startswith(SALTED + "+"):
        return True, method[len(SALTED) + 1:]
    return False, method

_PROBE = 64 << 10  # bytes compressed first to judge a file
_WORTH = 0.9  # keep the compressed form only below this ratio


@dataclass(frozen=True)
class Rule:
    compress: bool
    min_size: int | None
    pattern: "re.Pattern[bytes]"


@dataclass(frozen=True)
class EncodingRules:
    """Decides per file whether to compress, like the original tool's xz filter.

    Rules are tried in order against the '/'-rooted relative path:
    ``'+re'`` compresses a matching file of at least ``min_size`` bytes,
    ``'-re'`` never compresses it, ``[N, 're']`` compresses it from N bytes.
    A path that matches no rule is compressed from ``min_size``.
    """

    method: str | None
    min_size: int
    rules: tuple[Rule, ...] = ()

    def choose(self, relpath: bytes, size: int) -> str | None:
        if self.method is None:
            return None
        subject = b"/" + relpath
        for r in self.rules:
            if r.pattern.search(subject):
                if not r.compress:
                    return None
                return self.method if size >= (r.min_size if r.min_size is not None else self.min_size) else None
        return self.method if size >= self.min_size else None


def compile_rules(method: str | None, min_size: int, raw: Iterable[Any]) -> EncodingRules:
    """Build :class:`EncodingRules`; raise :class:`ConfigError` naming a bad rule."""
    key = "destination.encoding.path_filter"
    if method not in (None, "none", *METHODS):
        raise ConfigError(source="configuration", key="destination.encoding.method",
                          problem=f"must be lz4, xz or none, not {method!r}")
    rules = []
    for item in raw:
        size: int | None = None
        text = item
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], str):
            size, text = item[0], "+" + item[1]
        if not isinstance(text, str) or not text or text[0] not in "+-":
            raise ConfigError(source="configuration", key=key,
                              problem=f"each rule is '+regex', '-regex' or [size, 'regex'], not {item!r}")
        try:
            pattern = re.compile(text[1:].encode("utf-8", "surrogateescape"))
        except re.error as e:
            raise ConfigError(source="configuration", key=key, problem=f"invalid regex in {item!r}: {e}")
        rules.append(Rule(text[0] == "+", size, pattern))
    return EncodingRules(None if method in (None, "none") else method, min_size, tuple(rules))


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
            self._d: Any = None
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
        return self._d.decompress(chunk)  # type: ignore[no-any-return]


def decode(method: str | None, data: bytes, size: int | None = None) -> bytes:
    """The content of an object stored whole in ``data``."""
    return Decoder(method, size).feed(data)
