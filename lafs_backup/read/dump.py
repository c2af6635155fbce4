"""``dump``'s two shapes: one file's exact bytes, or a directory as a POSIX (pax) tar stream.

A file's bytes go out as they are decoded; if the gateway sends the object
again from the start after a fault, what was already written is skipped,
so the output is never doubled.  The SHA-256 recorded at backup time is
checked at the end (a mismatch is reported: the bytes are already out).

A tar member is spooled first (in memory up to 8 MiB, then in a private
temporary file), so that its header carries the size actually read and a
member whose content fails its check is left out instead of written wrong.
Modes, owners (ids and names), times to the nanosecond, symlinks, hard
links, devices, FIFOs, extended attributes (``SCHILY.xattr.*``) and ACLs
(``SCHILY.acl.*``) go into the pax headers, as GNU tar and bsdtar read them.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from typing import IO, AsyncIterator, Callable

from ..store.entry import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_LINK, KIND_SOCKET
from ..store.snapshot import xattrs_of
from .browse import Browser, Item
from .reader import Content, Reader, Remaking

_SPOOL = 8 << 20


async def write_file(reader: Reader, item: Item, out: IO[bytes], remaker: Remaking | None = None) -> Content:
    """Write a file's content to ``out``; returns what was read (check ``matches``).  A derived file
    is made again by ``remaker`` (None: the reader's), and checked before a byte of it is written."""
    emitted = 0
    pos = 0

    def sink(chunk: bytes) -> None:
        nonlocal emitted, pos
        start, pos = pos, pos + len(chunk)
        if pos > emitted:
            out.write(chunk[max(0, emitted - start):])
            emitted = pos

    def restart() -> None:
        nonlocal pos
        pos = 0

    content = await reader.content(item.node, sink, restart, remaker=remaker)
    out.flush()
    return content


def _name(item: Item, base: bytes) -> str:
    """A member's name: relative to the source root (the root itself is "."), or, below a
    directory PATH, starting with PATH's own name."""
    if not base:
        return os.fsdecode(item.path) or "."
    top = os.path.basename(base)
    return os.fsdecode(top if item.path == base else top + b"/" + item.path[len(base) + 1:])


def tar_info(item: Item, name: str) -> tarfile.TarInfo:
    """The tar header of one entry (its size is set by the caller for a regular file)."""
    ti = tarfile.TarInfo(name)
    meta = item.meta
    ti.mode = item.st_mode() & 0o7777
    ti.uid, ti.gid = item.int_meta("uid"), item.int_meta("gid")
    if isinstance(meta.get("user"), str):
        ti.uname = meta["user"]
    if isinstance(meta.get("group"), str):
        ti.gname = meta["group"]
    ns = item.int_meta("mtime_ns")
    ti.mtime = ns // 1_000_000_000
    pax: dict[str, str] = {}
    if ns % 1_000_000_000:
        pax["mtime"] = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
    for xname, value in xattrs_of(meta).items():
        pax["SCHILY.xattr." + xname.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    for key, header in (("acl", "SCHILY.acl.access"), ("default_acl", "SCHILY.acl.default")):
        acl = meta.get(key)
        if isinstance(acl, dict) and isinstance(acl.get("names"), str):
            pax[header] = acl["names"]
    kind = item.kind
    if kind == KIND_DIR:
        ti.type = tarfile.DIRTYPE
    elif kind == KIND_LINK:
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.fsdecode(item.node.target or b"")
    elif kind == KIND_FIFO:
        ti.type = tarfile.FIFOTYPE
    elif kind in (KIND_CHAR, KIND_BLOCK):
        ti.type = tarfile.CHRTYPE if kind == KIND_CHAR else tarfile.BLKTYPE
        rdev = item.int_meta("rdev")
        ti.devmajor, ti.devminor = os.major(rdev), os.minor(rdev)
    ti.pax_headers = pax
    return ti


async def write_tar(browser: Browser, reader: Reader, top: Item, out: IO[bytes],
                    problem: Callable[[bytes, str], None], note: Callable[[str, str], None],
                    remaker: Remaking | None = None) -> int:
    """Write ``top`` and everything below it as a pax tar stream; returns the members written.  A
    derived file is made again by ``remaker`` (None: the reader's); one that cannot be is left out."""
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                       errors="surrogateescape")
    links: dict[str, str] = {}
    written = 0
    try:
        async for item in _with_top(browser, top):
            name = _name(item, top.path)
            if item.kind == KIND_SOCKET:
                note("socket", "sockets cannot be put in a tar stream; left out")
                continue
            ti = tar_info(item, name)
            if item.kind != KIND_FILE:
                tar.addfile(ti)
                written += 1
                continue
            group = item.meta.get("hardlink")
            if isinstance(group, str) and group in links:
                ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, links[group], 0
                tar.addfile(ti)
                written += 1
                continue
            with tempfile.SpooledTemporaryFile(_SPOOL) as spool:
                content = await _spool(reader, item, spool, remaker)
                if content.matches is False:
                    problem(item.path, content.mismatch + "; left out of the tar stream")
                    continue
                ti.size = content.size
                spool.seek(0)
                tar.addfile(ti, spool)
            written += 1
            if isinstance(group, str):
                links[group] = name
    finally:
        tar.close()
    out.flush()
    return written


async def _with_top(browser: Browser, top: Item) -> AsyncIterator[Item]:
    yield top
    if top.kind == KIND_DIR:
        async for item in browser.walk(top):
            yield item


async def _spool(reader: Reader, item: Item, spool: IO[bytes], remaker: Remaking | None) -> Content:
    def restart() -> None:
        spool.seek(0)
        spool.truncate()

    return await reader.content(item.node, spool.write, restart, remaker=remaker)
