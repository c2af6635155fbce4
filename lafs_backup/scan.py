"""Phase one: walk the source tree through the filter and stream entries, children before parents."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from .entry import Entry, join
from .errors import UsageError
from .filters import Filter
from .log import NOISE

log = logging.getLogger(__name__)

#: Called with (relative path, message) for each entry that is skipped.
WarnFn = Callable[[bytes, str], None]


@dataclass
class _Frame:
    rel: bytes
    entry: Entry
    children: Iterator[tuple[bytes, os.stat_result]]


def _list_dir(abspath: bytes) -> list[tuple[bytes, os.stat_result]]:
    """A directory's children with their lstat, sorted by name bytes."""
    out = []
    with os.scandir(abspath) as it:
        for de in it:
            try:
                out.append((de.name, de.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # vanished between readdir and lstat
    out.sort(key=lambda t: t[0])
    return out


def _make_entry(abspath: bytes, rel: bytes, st: os.stat_result) -> Entry:
    target = os.readlink(abspath) if stat.S_ISLNK(st.st_mode) else None
    return Entry.from_stat(rel, st, target)


def scan(source: str | bytes, flt: Filter, warn: WarnFn) -> Iterator[Entry]:
    """Yield an :class:`Entry` for every included entry below ``source``, then the root.

    Every child is yielded strictly before its directory (post-order), in
    byte order of names, so the output is the same whatever the locale.
    Memory holds one directory listing per level of depth, never the tree.
    Entries that cannot be read are passed to ``warn`` and skipped; an
    unusable source raises :class:`UsageError`.
    """
    root = os.fsencode(os.path.abspath(os.fsdecode(source)))
    try:
        st = os.lstat(root)
    except OSError as e:
        raise UsageError(f"Cannot back up {os.fsdecode(root)}: {e.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"Cannot back up {os.fsdecode(root)}: not a directory")
    try:
        children = _list_dir(root)
    except OSError as e:
        raise UsageError(f"Cannot read {os.fsdecode(root)}: {e.strerror}")
    stack = [_Frame(b"", Entry.from_stat(b"", st), iter(children))]
    while stack:
        frame = stack[-1]
        nxt = next(frame.children, None)
        if nxt is None:
            stack.pop()
            yield frame.entry
            continue
        name, cst = nxt
        rel = join(frame.rel, name)
        abspath = root + b"/" + rel
        is_dir = stat.S_ISDIR(cst.st_mode)
        if not flt.included(rel, is_dir):
            log.log(NOISE, "excluded by filter: %r", rel)
            continue
        if is_dir:
            try:
                sub = _list_dir(abspath)
            except OSError as e:
                warn(rel, f"cannot read directory: {e.strerror}")
                continue
            stack.append(_Frame(rel, Entry.from_stat(rel, cst), iter(sub)))
            continue
        if not (stat.S_ISREG(cst.st_mode) or stat.S_ISLNK(cst.st_mode)):
            warn(rel, "special file skipped (not supported yet)")
            continue
        try:
            yield _make_entry(abspath, rel, cst)
        except OSError as e:
            warn(rel, f"cannot read: {e.strerror}")
