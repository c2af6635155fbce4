"""A stream as a source: one file, read from standard input or a command's output (``backup --stdin``).

The snapshot of a stream is a root directory holding one regular file,
NAME.  Its backups are recorded as ``stdin://NAME``: no directory's path
starts that way, so they never mix with a directory's backups, and
``--source stdin://NAME`` picks them out.

A pipe can be read once, and its length is known only at its end.  Phase
two reads a large file twice (its SHA-256, then its upload, and again on a
retry) and needs its size first (``saver.py``, ``store.py``).  So the walk
(phase one, in a thread) reads the stream to its end, 1 MiB at a time, into
an unnamed temporary file in TMPDIR (``O_TMPFILE``: it has no name, and is
gone when the backup ends or is killed); phase two reads that file like any
other.  Memory stays bounded whatever the stream's length; TMPDIR needs room
for it.  A stream cannot be replayed: a run that is stopped records nothing,
and the next run starts over.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import time
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import StreamReadError, UsageError
from ..store.entry import Entry
from ..store.store import full_error, temp_file, write_all

if TYPE_CHECKING:
    from ..filters import Filter
    from .scan import WalkHooks
    from .select import Selection
    from .source import NoteFn, WarnFn

#: The file's name when ``--stdin-filename`` is not given (restic's too).
DEFAULT_NAME = "stdin"
#: What a stream's backups are recorded under, before its name.
SCHEME = b"stdin://"
#: The file and its directory are the user's alone (a stream is often a database dump).
FILE_MODE = 0o100600
DIR_MODE = 0o040700
_CHUNK = 1 << 20
_INO_MASK = (1 << 63) - 1


def checked_name(name: str) -> bytes:
    """``--stdin-filename`` as the file's name; raises :class:`UsageError` for a name that cannot be
    one file's (empty, with a '/', '.', '..' or a NUL)."""
    raw = os.fsencode(name)
    if not raw or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise UsageError(f"--stdin-filename {name!r}: the stream is stored as one file, so its name must be a "
                         "file name: not empty, not '.' or '..', and without a '/'")
    return raw


def label_for(name: bytes) -> bytes:
    """What the backups of the stream named ``name`` are recorded as (``list`` shows it as the source)."""
    return SCHEME + name


def stream_stat(mode: int, size: int, now_ns: int, ino: int, uid: int, gid: int) -> os.stat_result:
    """A stat result for the stream's file or directory (pure): one link, device 0, every time ``now_ns``."""
    secs = now_ns // 10**9
    return os.stat_result((mode, ino, 0, 1, uid, gid, size, secs, secs, secs),
                          {"st_atime": now_ns / 1e9, "st_mtime": now_ns / 1e9, "st_ctime": now_ns / 1e9,
                           "st_atime_ns": now_ns, "st_mtime_ns": now_ns, "st_ctime_ns": now_ns})


def _owner_extras(uid: int, gid: int) -> tuple[tuple[str, bytes], ...]:
    """The owner's names, as a directory walk records them (absent when the system has none)."""
    out: list[tuple[str, bytes]] = []
    try:
        out.append(("user", os.fsencode(pwd.getpwuid(uid).pw_name)))
    except KeyError:
        pass
    try:
        out.append(("group", os.fsencode(grp.getgrgid(gid).gr_name)))
    except KeyError:
        pass
    return tuple(out)


class StreamSource:
    """The stream read from ``fd`` (a pipe, a file, a socket: read to its end), as one file ``name``.

    With ``owns_fd``, ``fd`` is closed once read (a pipe from a command; else it is the caller's).
    ``what`` names the stream in errors.
    ``finished`` (None: nothing to wait for) is called in the walk's thread
    once the stream has ended, before anything is queued: it waits for the
    command that wrote it and raises when that failed, so a failed command
    leaves no queue and records nothing.  ``tmpdir`` (None: TMPDIR) holds
    the unnamed copy.  The owner is this process's user; the time, the
    stream's end.
    """

    #: Opening its file costs nothing (no thread needed).
    blocking = False
    #: Nothing of the last backup is kept whole: the stream is read anew each time.
    keeps_trees = False

    def __init__(self, name: bytes, fd: int, finished: Callable[[], None] | None = None,
                 tmpdir: str | None = None, owns_fd: bool = False, what: str = "standard input") -> None:
        self.name = name
        self._what = what
        self.label = label_for(name)
        self._fd = fd
        self._owns_fd = owns_fd
        self._reading = False
        self._finished = finished
        self._tmpdir = tmpdir
        self._spool = -1
        self._file: os.stat_result | None = None
        self._root: os.stat_result | None = None
        self._extras: tuple[tuple[str, bytes], ...] = ()

    # -- the Source protocol -----------------------------------------------------------------------
    def walk(self, flt: Filter | Selection, warn: WarnFn, note_once: NoteFn,
             hooks: WalkHooks | None = None) -> Iterator[Entry]:
        """The file, then the root (``flt`` and ``hooks`` have nothing to select in one stream).  The
        stream is read to its end first (blocking: phase one runs this in a thread); a walk made again
        in the same run gives the same entries without reading anything.  Raises
        :class:`~..errors.LocalError` when TMPDIR is full, :class:`~..errors.StreamReadError` when the
        stream cannot be read, and what ``finished`` raises."""
        if self._file is None:
            self._take()
        assert self._file is not None and self._root is not None
        yield Entry.from_stat(self.name, self._file, extras=self._extras)
        yield Entry.from_stat(b"", self._root, extras=self._extras)

    def lstat(self, rel: bytes) -> os.stat_result:
        st = self._file if rel == self.name else self._root if rel == b"" else None
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "not in the stream's snapshot")
        return st

    def open(self, rel: bytes) -> "SpooledFile":
        """The stream's bytes (each opening has its own descriptor: the saver closes what it opened)."""
        if rel != self.name or self._file is None:
            raise FileNotFoundError(errno.ENOENT, "not in the stream's snapshot")
        return SpooledFile(os.dup(self._spool), self._file)

    # -- the stream --------------------------------------------------------------------------------
    @property
    def size(self) -> int | None:
        """The stream's length once it was read (None before)."""
        return self._file.st_size if self._file is not None else None

    def _take(self) -> None:
        self._reading = True
        spool = -1
        try:
            spool = temp_file(self._tmpdir)
            size = 0
            while True:
                try:
                    chunk = os.read(self._fd, _CHUNK)
                except OSError as e:  # (not a full TMPDIR: the stream itself)
                    raise StreamReadError(what=self._what, problem=e.strerror or str(e)) from None
                if not chunk:
                    break
                size += write_all(spool, chunk, size)
            self._let_go()
            if self._finished is not None:
                self._finished()
        except BaseException as err:
            if spool >= 0:
                os.close(spool)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise full_error(self._tmpdir, err, self.name, "reading the stream of") from None
            raise
        finally:
            self._let_go()
            self._reading = False
        self._spool = spool
        uid, gid, now = os.getuid(), os.getgid(), time.time_ns()
        # A new inode number each time: no stream is ever taken for an earlier one by its stat.
        ino = int.from_bytes(os.urandom(8), "big") & _INO_MASK
        self._file = stream_stat(FILE_MODE, size, now, ino, uid, gid)
        self._root = stream_stat(DIR_MODE, 0, now, ino ^ 1, uid, gid)
        self._extras = _owner_extras(uid, gid)

    def _let_go(self) -> None:
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Let go of the stream's copy, and of the descriptor read from if it is owned and no walk
        is reading it (one that is closes it when its read ends: closing it under a blocked read
        would let the number be reused under the next one)."""
        if self._spool >= 0:
            os.close(self._spool)
            self._spool = -1
        if not self._reading:
            self._let_go()


class SpooledFile:
    """The stream's copy, read by offset, with the stream's stat as ``fstat``."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self._st = st

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def fstat(self) -> os.stat_result:
        return self._st

    def close(self) -> None:
        os.close(self.fd)
