"""Sources: where a backup's entries and their bytes come from (today: a local directory tree).

Phase one asks a source to walk itself into entries; phase two asks it
again for each entry's current state and for its bytes.  A source is
blocking code: phase one runs it in a thread, phase two reads small files
whole and large ones in a thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from ..names import is_url
from ..store.entry import Entry
from ..system.paths import LocalFile, lstat_beneath, open_beneath

if TYPE_CHECKING:  # (the walk is imported when it runs)
    from ..filters import Filter
    from .scan import WalkHooks
    from .select import Selection

WarnFn = Callable[[bytes, str], None]
NoteFn = Callable[[str, str], None]


def recorded_as(source: str | None) -> bytes | None:
    """The label a source argument's backups are recorded under (None: any source): an absolute
    path, or a URL without credentials or query."""
    if not source:
        return None
    if is_url(source):
        from ..system.fsspec_fs import label_of

        return label_of(source)
    return os.fsencode(os.path.abspath(os.path.expanduser(source)))


class SourceFile(Protocol):
    """An open source file, read by offset (so uploads and hashes never share a position)."""

    def pread(self, n: int, offset: int) -> bytes: ...

    def fstat(self) -> os.stat_result: ...

    def close(self) -> None: ...


class Source(Protocol):
    """What phase one walks and phase two reads.  ``label`` is what backups of it are recorded as."""

    label: bytes

    def walk(self, flt: Filter | Selection, warn: WarnFn, note_once: NoteFn,
             hooks: WalkHooks | None = None) -> Iterator[Entry]:
        """Every included entry, each child before its directory, the root (``b""``) last.
        ``hooks``: an incremental walk's (``scan.WalkHooks``), where the source supports one."""
        ...

    def lstat(self, rel: bytes) -> os.stat_result:
        """The entry's state now (never following a symlink); raises OSError."""
        ...

    def open(self, rel: bytes) -> SourceFile:
        """Open a regular file for reading (never through a symlink); raises OSError."""
        ...


class LocalSource:
    """A directory on a local file system, reached beneath its root by openat chains."""

    def __init__(self, root: bytes, label: bytes | None = None) -> None:
        self.root = os.fsencode(os.path.abspath(os.fsdecode(root)))
        #: What its backups are recorded as: the root, or the path it was given as (a symlink to it).
        self.label = label if label is not None else self.root

    def walk(self, flt: Filter | Selection, warn: WarnFn, note_once: NoteFn,
             hooks: WalkHooks | None = None) -> Iterator[Entry]:
        from .scan import scan

        return scan(self.root, flt, warn, note_once, hooks)

    def lstat(self, rel: bytes) -> os.stat_result:
        return lstat_beneath(self.root, rel)

    def open(self, rel: bytes) -> LocalFile:
        return LocalFile(open_beneath(self.root, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
