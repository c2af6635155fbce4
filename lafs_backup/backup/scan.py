"""Phase one: walk the source tree through the filter and stream entries, children before parents.

One loop (:func:`walk`) serves every kind of source: it asks a :class:`Tree`
to open, list and close directories, and decides order, selection and the
incremental walk's hooks itself.  A local tree (:func:`scan`) holds one open
directory per level of depth and reaches every entry relative to its
directory's fd, so paths of any length work, no symlink is ever followed,
directories are read with O_NOATIME where allowed, and FIFOs and devices
are never opened.  An fsspec one (a bucket) is in ``fsspec_source.py``.
"""

from __future__ import annotations

import logging
import operator
import os
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Protocol, Sequence, TypeVar

from ..store.entry import Entry, kind_of
from ..errors import UsageError
from ..filters import Filter
from .select import DirState, HeadFn, Selection
from ..log import NOISE
from ..system.meta import Capturer
from ..system.paths import open_noatime, proc_path

log = logging.getLogger(__name__)

#: Called with (relative path, message) for each entry that is skipped or incomplete.
WarnFn = Callable[[bytes, str], None]
NoteFn = Callable[[str, str], None]
#: An entry's extras (owner names, ACLs, an object's ETag...).
Extras = tuple[tuple[str, bytes], ...]
#: A listed child: its name, its lstat, and the extras its listing gave (None: read when it is kept).
Listed = tuple[bytes, os.stat_result, "Extras | None"]

#: A directory as a tree opened it (a local fd, a remote path).
H = TypeVar("H")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_by_name = operator.itemgetter(0)


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


class Tree(Protocol[H]):
    """A source as :func:`walk` reads it.  A directory is a handle the tree opened (a local fd, a
    remote path); its listing is sorted by name bytes."""

    #: How a directory that cannot be listed is named in its warning ("cannot read directory").
    cannot: str

    def root(self, warn: WarnFn) -> tuple[H, Sequence[Listed], Entry]:
        """The root opened and listed, and its entry; raises :class:`UsageError` (no backup)."""
        ...

    def enter(self, parent: H, name: bytes, rel: bytes, warn: WarnFn) -> tuple[H, Sequence[Listed]]:
        """A child directory opened and listed; raises OSError (nothing is left open)."""
        ...

    def head(self, d: H) -> HeadFn:
        """Reads the first bytes of a regular file in ``d`` (an ignore file, a CACHEDIR.TAG)."""
        ...

    def keep(self, d: H, name: bytes, rel: bytes, st: os.stat_result, listed: Extras | None,
             warn: WarnFn) -> Extras:
        """A child the selection keeps: its extras (problems reading them go to ``warn``)."""
        ...

    def dir_entry(self, rel: bytes, st: os.stat_result, extras: Extras, children: Sequence[Listed]) -> Entry:
        """The entry of a directory entered and kept, from its listing."""
        ...

    def readlink(self, d: H, name: bytes) -> bytes:
        """A symlink's target; raises OSError."""
        ...

    def close(self, d: H) -> None: ...


@dataclass
class _Frame(Generic[H]):
    rel: bytes
    handle: H
    entry: Entry
    children: Iterator[Listed]
    state: DirState
    #: Whether the selection may leave out a child here (False: it is not asked, child by child).
    sieve: bool = True
    #: What a child's name is joined to: ``rel`` and a slash (nothing for the root).
    prefix: bytes = b""


def walk(tree: Tree[H], sel: Selection, warn: WarnFn, hooks: WalkHooks | None = None) -> Iterator[Entry]:
    """Yield an :class:`Entry` for every included entry of ``tree``, then the root.

    Every child is yielded strictly before its directory (post-order), in
    byte order of names, so the output is the same whatever the locale.
    Memory holds one directory listing per level, never the tree.  Entries
    that cannot be read are passed to ``warn`` and skipped; an unusable
    source raises :class:`UsageError`.  ``sel`` counts what it excludes.
    ``hooks``: an incremental walk's ``reuse`` and ``hot_since_ns`` (see
    :class:`WalkHooks`; the tree is told of ``on_dir`` itself).
    """
    reuse = hooks.reuse if hooks is not None else None
    hot = hooks.hot_since_ns if hooks is not None else None
    d, children, root = tree.root(warn)
    state = sel.enter(b"", {n: st for n, st, _ in children}, None, tree.head(d), warn)
    stack = [_Frame(b"", d, root, iter(children), state, sel.excludes_in(state))]
    try:
        while stack:
            frame = stack[-1]
            nxt = next(frame.children, None)
            if nxt is None:
                stack.pop()
                tree.close(frame.handle)
                yield frame.entry
                continue
            name, cst, listed = nxt
            rel = frame.prefix + name
            if frame.sieve:
                why = sel.exclude(rel, cst, frame.state)
                if why is not None:
                    sel.count(why, cst)
                    log.log(NOISE, "excluded by %s: %r", why, rel)
                    continue
            if kind_of(cst.st_mode) is None:
                warn(rel, "unknown file type; skipped")
                continue
            extras = tree.keep(frame.handle, name, rel, cst, listed, warn)
            if stat.S_ISDIR(cst.st_mode):
                if sel.one_file_system and cst.st_dev != root.dev:
                    # A mount point: recorded itself, as an empty directory, never crossed.
                    sel.count("--one-file-system", cst)
                    log.log(NOISE, "not crossing into another file system: %r", rel)
                    yield Entry.from_stat(rel, cst, extras=extras)
                    continue
                kept = reuse(rel) if reuse is not None else None
                if kept is not None:  # unchanged since the previous snapshot: its cap stands
                    yield Entry.from_stat(rel, cst, extras=(*extras, ("reuse", kept.encode("ascii"))))
                    continue
                sub = _enter(tree, frame, name, rel, cst, extras, sel, warn)
                if sub is not None:
                    stack.append(sub)
                continue
            target = None
            if stat.S_ISLNK(cst.st_mode):
                try:
                    target = tree.readlink(frame.handle, name)
                except OSError as e:
                    warn(rel, f"cannot read symlink: {e.strerror}; skipped")
                    continue
            if hot is not None and stat.S_ISREG(cst.st_mode) and max(cst.st_mtime_ns, cst.st_ctime_ns) >= hot:
                extras = (*extras, ("hold", b""))  # still being written: it waits for the next round
            yield Entry.from_stat(rel, cst, target, extras)
    finally:
        for frame in stack:
            tree.close(frame.handle)
    if sel.listed is not None and reuse is None:  # (an incremental walk does not see every path)
        for rel in sel.listed.missing():
            warn(rel, "listed by --files-from, but not in the source (or excluded by another rule)")


def _enter(tree: Tree[H], parent: _Frame[H], name: bytes, rel: bytes, st: os.stat_result, extras: Extras,
           sel: Selection, warn: WarnFn) -> _Frame[H] | None:
    """Open and list a child directory (None: it cannot be read, or the selection excludes it)."""
    try:
        d, children = tree.enter(parent.handle, name, rel, warn)
    except OSError as e:
        warn(rel, f"{tree.cannot}: {e.strerror}; skipped")
        return None
    state = sel.enter(rel, {n: s for n, s, _ in children}, parent.state, tree.head(d), warn)
    if state.excluded is not None:
        tree.close(d)
        sel.count(state.excluded, st)
        log.log(NOISE, "excluded by %s: %r", state.excluded, rel)
        return None
    return _Frame(rel, d, tree.dir_entry(rel, st, extras, children), iter(children), state,
                  sel.excludes_in(state), rel + b"/")


# -- a local directory tree -------------------------------------------------------------------------
def _list_dir(fd: int) -> list[Listed]:
    """A directory's children with their lstat, sorted by name bytes."""
    out: list[Listed] = []
    with os.scandir(fd) as it:
        for de in it:
            try:
                # (os.fsencode, without its call: a directory's names are always str here)
                out.append((de.name.encode(_FS_ENCODING, _FS_ERRORS), de.stat(follow_symlinks=False), None))
            except FileNotFoundError:
                continue  # vanished between readdir and lstat
    out.sort(key=_by_name)
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


def _head(fd: int) -> HeadFn:
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


class _LocalTree:
    """A local directory tree for :func:`walk`: directories are fds, each opened beneath its parent's."""

    cannot = "cannot read directory"

    def __init__(self, root: bytes, note_once: NoteFn, on_dir: Callable[[bytes, int], None] | None) -> None:
        self._root = root
        self._capture = Capturer(note_once)
        self._on_dir = on_dir

    def root(self, warn: WarnFn) -> tuple[int, list[Listed], Entry]:
        root = self._root
        fd = -1
        try:
            st = os.lstat(root)
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"Cannot back up {os.fsdecode(root)}: not a directory")
            fd = open_noatime(root, _DIR_FLAGS)
            if self._on_dir is not None:
                self._on_dir(b"", fd)
            children = _list_dir(fd)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            raise UsageError(f"Cannot back up {os.fsdecode(root)}: {e.strerror}")
        extras, problems = self._capture.extras(root, st)
        for p in problems:
            warn(b"", p)
        return fd, children, Entry.from_stat(b"", st, extras=extras)

    def enter(self, parent: int, name: bytes, rel: bytes, warn: WarnFn) -> tuple[int, list[Listed]]:
        fd = open_noatime(name, _DIR_FLAGS, dir_fd=parent)
        try:
            if self._on_dir is not None:
                self._on_dir(rel, fd)
            return fd, _list_dir(fd)
        except OSError:
            os.close(fd)
            raise

    def head(self, d: int) -> HeadFn:
        return _head(d)

    def keep(self, d: int, name: bytes, rel: bytes, st: os.stat_result, listed: Extras | None,
             warn: WarnFn) -> Extras:
        extras, problems = self._capture.extras(proc_path(d, name), st)
        for p in problems:
            warn(rel, p)
        return extras

    def dir_entry(self, rel: bytes, st: os.stat_result, extras: Extras, children: Sequence[Listed]) -> Entry:
        return Entry.from_stat(rel, st, extras=extras)

    def readlink(self, d: int, name: bytes) -> bytes:
        return os.readlink(name, dir_fd=d)

    def close(self, d: int) -> None:
        os.close(d)


def scan(source: str | bytes, flt: Filter | Selection, warn: WarnFn,
         note_once: NoteFn = lambda key, msg: None, hooks: WalkHooks | None = None) -> Iterator[Entry]:
    """Every included entry below the local directory ``source``, then the root (see :func:`walk`).
    ``flt`` is the filter rules alone, or a :class:`Selection` (rules and options), which counts
    what it excludes.  ``hooks``: an incremental walk (see :class:`WalkHooks`)."""
    sel = flt if isinstance(flt, Selection) else Selection(filter=flt)
    root = os.fsencode(os.path.abspath(os.fsdecode(source)))
    _raise_fd_limit()
    return walk(_LocalTree(root, note_once, hooks.on_dir if hooks is not None else None), sel, warn, hooks)
