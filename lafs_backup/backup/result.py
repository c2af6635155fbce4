"""Recording a finished backup: the result file line and the link in a mutable Tahoe directory."""

from __future__ import annotations

import errno
import fcntl
import os
from datetime import datetime, timezone
from typing import Protocol

from ..system.paths import replacing


class Linker(Protocol):
    """What linking needs of the gateway client."""

    async def link(self, dircap: str, name: str, cap: str) -> bool: ...


def utc_stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def link_name(source: bytes, ts: float) -> str:
    """The name a backup is linked under: ``<source basename>.<UTC time>``, unique per backup."""
    base = os.path.basename(source.rstrip(b"/")).decode("utf-8", "backslashreplace") or "root"
    return f"{base}.{utc_stamp(ts)}"


def _open_locked(path: str, flags: int) -> int:
    """Open ``path`` and lock it; the fd is of the file now at ``path``, even if it was replaced
    (by :func:`remove_result_line`) while we waited for the lock."""
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def append_result(path: str, ts: float, source: bytes, cap: str) -> None:
    """Append ``<UTC time> <source> <cap>`` to ``path`` (created 0600) under an exclusive lock.

    A write that fails (a full disk) leaves the file as it was: no half line.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = _open_locked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        src = source.decode("utf-8", "backslashreplace").replace(" ", "\\x20")
        line = f"{utc_stamp(ts)} {src} {cap}\n".encode("utf-8")
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def remove_result_line(path: str, cap: str) -> bool:
    """Remove the line(s) whose last field is ``cap``; True if one was removed.

    The file is replaced whole (:func:`paths.replacing`), so a kill or a full
    disk leaves either the old file or the new one.
    """
    try:
        fd = _open_locked(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            lines = f.readlines()
        keep = [ln for ln in lines if ln.rstrip("\n").rsplit(" ", 1)[-1] != cap]
        if len(keep) == len(lines):
            return False
        with replacing(path) as out:
            out.writelines(keep)
        return True
    finally:
        os.close(fd)


async def link_into(gw: Linker, dircap: str, source: bytes, ts: float, cap: str) -> str:
    """Link ``cap`` into ``dircap`` under a fresh name; never replace another backup's link."""
    base = link_name(source, ts)
    name = base
    n = 0
    while not await gw.link(dircap, name, cap):
        n += 1
        name = f"{base}.{n}"
    return name
