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
from ..filters import Filter
from .select import DirState, Selection
from ..log import NOISE
from ..system.meta import Capturer
from ..system.paths import open_noatime, proc_path

log = logging.getLogger(__name__)

#: Called with (relative path, message) for each entry that is skipped or incomplete.
WarnFn = Callable[[bytes, str], None]
NoteFn = Callable[[str, str], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class WalkHooks:
    """What an incremental walk (``watch``) asks of the walk.

    ``on_dir(rel, fd)`` is told of every directory entered, before it is
    listed (so a watch on it misses nothing the listing did not see).
    ``reuse(rel)`` gives the cap a directory had in the previous snapshot
    when its subtree is unchanged: the directory is then yielded with a
    ``reuse`` extra and not entered.  Regular files changed at or after
    ``hot_since_ns`` (still being written) are yielded with a ``hold`` extra.
    """

    on_dir: Callable[[bytes, int], None] | None = None
    reuse: Callable[[bytes], "str | None"] | None = None
    hot_since_ns: int | None = None


@dataclass
class _Frame:
    rel: bytes
    fd: int
    entry: Entry
    children: Iterator[tuple[bytes, os.stat_result]]
    state: DirState


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


def _head(fd: int) -> Callable[[bytes, int], "bytes | None"]:
    """Read the first bytes of a regular file in the directory ``fd`` (never through a symlink)."""
    def head(name: bytes, n: int) -> bytes | None:
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                return None
            chunks, left = [], n
            while left > 0:
                b = os.read(f, min(left, 1 << 16))
                if not b:
                    break
                chunks.append(b)
                left -= len(b)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(f)
    return head


def _enter(parent: _Frame, name: bytes, entry: Entry, st: os.stat_result, sel: Selection,
           warn: WarnFn, on_dir: Callable[[bytes, int], None] | None) -> _Frame | None:
    """Open and list a child directory (None: it cannot be read, or the selection excludes it)."""
    try:
        fd = open_noatime(name, _DIR_FLAGS, dir_fd=parent.fd)
        try:
            if on_dir is not None:
                on_dir(entry.path, fd)
            children = _list_dir(fd)
        except OSError:
            os.close(fd)
            raise
    except OSError as e:
        warn(entry.path, f"cannot read directory: {e.strerror}; skipped")
        return None
    state = sel.enter(entry.path, dict(children), parent.state, _head(fd), warn)
    if state.excluded is not None:
        os.close(fd)
        sel.count(state.excluded, st)
        log.log(NOISE, "excluded by %s: %r", state.excluded, entry.path)
        return None
    return _Frame(entry.path, fd, entry, iter(children), state)


def scan(source: str | bytes, flt: Filter | Selection, warn: WarnFn,
         note_once: NoteFn = lambda key, msg: None, hooks: WalkHooks | None = None) -> Iterator[Entry]:
    """Yield an :class:`Entry` for every included entry below ``source``, then the root.

    Every child is yielded strictly before its directory (post-order), in
    byte order of names, so the output is the same whatever the locale.
    Memory holds one directory listing per level, never the tree.  Entries
    that cannot be read are passed to ``warn`` and skipped; an unusable
    source raises :class:`UsageError`.  ``flt`` is the filter rules alone,
    or a :class:`Selection` (rules and options), which counts what it excludes.
    ``hooks``: an incremental walk (see :class:`WalkHooks`).
    """
    on_dir = hooks.on_dir if hooks is not None else None
    reuse = hooks.reuse if hooks is not None else None
    hot = hooks.hot_since_ns if hooks is not None else None
    sel = flt if isinstance(flt, Selection) else Selection(filter=flt)
    root = os.fsencode(os.path.abspath(os.fsdecode(source)))
    capture = Capturer(note_once)
    _raise_fd_limit()
    try:
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"Cannot back up {os.fsdecode(root)}: not a directory")
        fd = open_noatime(root, _DIR_FLAGS)
        if on_dir is not None:
            on_dir(b"", fd)
        children = _list_dir(fd)
    except OSError as e:
        raise UsageError(f"Cannot back up {os.fsdecode(root)}: {e.strerror}")
    root_dev = st.st_dev
    extras, problems = capture.extras(root, st)
    for p in problems:
        warn(b"", p)
    state = sel.enter(b"", dict(children), None, _head(fd), warn)
    stack = [_Frame(b"", fd, Entry.from_stat(b"", st, extras=tuple(extras)), iter(children), state)]
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
            why = sel.exclude(rel, cst, frame.state)
            if why is not None:
                sel.count(why, cst)
                log.log(NOISE, "excluded by %s: %r", why, rel)
                continue
            if kind is None:
                warn(rel, "unknown file type; skipped")
                continue
            lib_path = proc_path(frame.fd, name)
            extras, problems = capture.extras(lib_path, cst)
            for p in problems:
                warn(rel, p)
            if is_dir:
                entry = Entry.from_stat(rel, cst, extras=tuple(extras))
                if sel.one_file_system and cst.st_dev != root_dev:
                    # A mount point: recorded itself, as an empty directory, never crossed.
                    sel.count("--one-file-system", cst)
                    log.log(NOISE, "not crossing into another file system: %r", rel)
                    yield entry
                    continue
                kept = reuse(rel) if reuse is not None else None
                if kept is not None:  # unchanged since the previous snapshot: its cap stands
                    yield Entry.from_stat(rel, cst, extras=(*extras, ("reuse", kept.encode("ascii"))))
                    continue
                sub_frame = _enter(frame, name, entry, cst, sel, warn, on_dir)
                if sub_frame is not None:
                    stack.append(sub_frame)
                continue
            target = None
            if stat.S_ISLNK(cst.st_mode):
                try:
                    target = os.readlink(name, dir_fd=frame.fd)
                except OSError as e:
                    warn(rel, f"cannot read symlink: {e.strerror}; skipped")
                    continue
            if hot is not None and stat.S_ISREG(cst.st_mode) and max(cst.st_mtime_ns, cst.st_ctime_ns) >= hot:
                extras = [*extras, ("hold", b"")]  # still being written: it waits for the next round
            yield Entry.from_stat(rel, cst, target, tuple(extras))
    finally:
        for frame in stack:
            os.close(frame.fd)
    if sel.listed is not None and reuse is None:  # (an incremental walk does not see every path)
        for rel in sel.listed.missing():
            warn(rel, "listed by --files-from, but not in the source (or excluded by another rule)")
