"""Recording a finished backup: the result file line and the link in a mutable Tahoe directory."""

from __future__ import annotations

import fcntl
import os
import time
from datetime import datetime, timezone

from .gateway import Gateway


def utc_stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def link_name(source: bytes, ts: float) -> str:
    """The name a backup is linked under: ``<source basename>.<UTC time>``, unique per backup."""
    base = os.path.basename(source.rstrip(b"/")).decode("utf-8", "backslashreplace") or "root"
    return f"{base}.{utc_stamp(ts)}"


def append_result(path: str, ts: float, source: bytes, cap: str) -> None:
    """Append ``<UTC time> <source> <cap>`` to ``path`` (created 0600) under an exclusive lock."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        src = source.decode("utf-8", "backslashreplace").replace(" ", "\\x20")
        os.write(fd, f"{utc_stamp(ts)} {src} {cap}\n".encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_result_line(path: str, cap: str) -> bool:
    """Remove the line(s) whose last field is ``cap``; True if one was removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as f:
            lines = f.readlines()
            keep = [ln for ln in lines if ln.rstrip("\n").rsplit(" ", 1)[-1] != cap]
            if len(keep) == len(lines):
                return False
            f.seek(0)
            f.writelines(keep)
            f.truncate()
        return True
    finally:
        os.close(fd)


async def link_into(gw: Gateway, dircap: str, source: bytes, ts: float, cap: str) -> str:
    """Link ``cap`` into ``dircap`` under a fresh name; never replace another backup's link."""
    base = link_name(source, ts)
    name = base
    n = 0
    while not await gw.link(dircap, name, cap):
        n += 1
        name = f"{base}.{n}"
    return name
