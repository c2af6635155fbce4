"""Phase one: walk the source tree through the filter and stream entries, children before parents.

The walk holds one open directory per level of depth and reaches every
entry relative to its directory's fd, so paths of any length work, no
symlink is ever followed, directories are read with O_NOATIME where
allowed, and FIFOs and devices are never opened.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from ..store.entry import Entry, join, kind_of
from ..errors import UsageError
from .filters import Filter
from ..log import NOISE
from ..system.meta import Capturer
from ..system.paths import open_noatime, proc_path

log = logging.getLogger(__name__)

#: Called with (relative path, message) for each entry that is skipped or incomplete.
WarnFn = Callable[[bytes, str], None]
NoteFn = Callable[[str, str], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Frame:
    rel: bytes
    fd: int
    entry: Entry
    children: Iterator[tuple[bytes, os.stat_result]]


def _list_dir(fd: int) -> list[tuple[bytes, os.stat_result]]:
    """A directory's children with their lstat, sorted by name bytes."""
    out = []
    with os.scandir(fd) as it:
        for de in it:
            try:
                out.append((os.fsencode(de.name), de.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # vanished between readdir and lstat
    out.sort(key=lambda t: t[0])
    return out


def _raise_fd_limit() -> None:
    """Deep trees hold one fd per level: allow as many as the hard limit permits."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def scan(source: str | bytes, flt: Filter, warn: WarnFn,
         note_once: NoteFn = lambda key, msg: None) -> Iterator[Entry]:
    """Yield an :class:`Entry` for every included entry below ``source``, then the root.

    Every child is yielded strictly before its directory (post-order), in
    byte order of names, so the output is the same whatever the locale.
    Memory holds one directory listing per level, never the tree.  Entries
    that cannot be read are passed to ``warn`` and skipped; an unusable
    source raises :class:`UsageError`.
    """
    root = os.fsencode(os.path.abspath(os.fsdecode(source)))
    capture = Capturer(note_once)
    _raise_fd_limit()
    try:
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"Cannot back up {os.fsdecode(root)}: not a directory")
        fd = open_noatime(root, _DIR_FLAGS)
        children = _list_dir(fd)
    except OSError as e:
        raise UsageError(f"Cannot back up {os.fsdecode(root)}: {e.strerror}")
    extras, problems = capture.extras(root, st)
    for p in problems:
        warn(b"", p)
    stack = [_Frame(b"", fd, Entry.from_stat(b"", st, extras=tuple(extras)), iter(children))]
    try:
        while stack:
            frame = stack[-1]
            nxt = next(frame.children, None)
            if nxt is None:
                stack.pop()
                os.close(frame.fd)
                yield frame.entry
                continue
            name, cst = nxt
            rel = join(frame.rel, name)
            kind = kind_of(cst.st_mode)
            is_dir = stat.S_ISDIR(cst.st_mode)
            if not flt.included(rel, is_dir):
                log.log(NOISE, "excluded by filter: %r", rel)
                continue
            if kind is None:
                warn(rel, "unknown file type; skipped")
                continue
            lib_path = proc_path(frame.fd, name)
            extras, problems = capture.extras(lib_path, cst)
            for p in problems:
                warn(rel, p)
            if is_dir:
                try:
                    sub_fd = open_noatime(name, _DIR_FLAGS, dir_fd=frame.fd)
                    try:
                        sub = _list_dir(sub_fd)
                    except OSError:
                        os.close(sub_fd)
                        raise
                except OSError as e:
                    warn(rel, f"cannot read directory: {e.strerror}; skipped")
                    continue
                stack.append(_Frame(rel, sub_fd, Entry.from_stat(rel, cst, extras=tuple(extras)), iter(sub)))
                continue
            target = None
            if stat.S_ISLNK(cst.st_mode):
                try:
                    target = os.readlink(name, dir_fd=frame.fd)
                except OSError as e:
                    warn(rel, f"cannot read symlink: {e.strerror}; skipped")
                    continue
            yield Entry.from_stat(rel, cst, target, tuple(extras))
    finally:
        for frame in stack:
            os.close(frame.fd)
