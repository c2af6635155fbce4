"""Paths as the user sees them: one printable line per path, and its exact inverse for PATH arguments.

:func:`shown` is what ``ls``, ``find`` and ``diff`` print; :func:`parsed` turns such a line (or a
PATH the user typed) back into the path's bytes, so that what one command prints can be pasted
into another.  Bytes that are not UTF-8 and control (non-printable) characters are written as
``\\xHH`` (one per byte), a backslash as ``\\\\``; everything else as it is.
"""

from __future__ import annotations

import re

from .errors import UsageError

_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def shown(raw: bytes) -> str:
    """``raw`` (a name or a path) as one printable line; :func:`parsed` returns ``raw`` from it.

    Byte for byte: ``shown(a + b) == shown(a) + shown(b)`` whenever ``a`` ends on a character
    boundary (a ``/`` for instance), so a path's line is its names' lines joined by ``/``."""
    text = raw.decode("utf-8", "surrogateescape")
    if "\\" not in text and text.isprintable():
        return text
    out = []
    for c in text:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append("\\x%02x" % (o - 0xDC00))
        elif not c.isprintable():
            out.extend("\\x%02x" % b for b in c.encode("utf-8"))
        else:
            out.append(c)
    return "".join(out)


def shown_text(text: str) -> str:
    """:func:`shown` of a path already decoded with ``os.fsdecode`` (surrogateescape)."""
    return shown(text.encode("utf-8", "surrogateescape"))


def parsed(text: str) -> bytes:
    """The bytes of a path written as :func:`shown` writes it (a PATH argument).

    Raises :class:`UsageError` for a backslash that starts neither ``\\\\`` nor ``\\xHH``."""
    if "\\" not in text:
        return text.encode("utf-8", "surrogateescape")
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        if "\\" in text[pos:m.start()]:
            break
        out += text[pos:m.start()].encode("utf-8", "surrogateescape")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    rest = text[pos:]
    if "\\" in rest:
        raise UsageError(f"{text!r}: a backslash in a path starts \\\\ (a backslash) or \\xHH (a byte), as "
                         "'ls' prints them")
    out += rest.encode("utf-8", "surrogateescape")
    return bytes(out)


def is_url(text: str) -> bool:
    """Does a source argument name an fsspec location (``s3://bucket/prefix``, ``memory://x``) rather
    than a local path?"""
    head, sep, _ = text.partition("://")
    return bool(sep) and head.replace("+", "_").isidentifier() and head != "file"
