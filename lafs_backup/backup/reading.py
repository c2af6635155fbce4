"""Reading source files for the saver: opened never through a symlink, still regular, small ones read whole.

What cannot be read is a warning and None, never an exception: a file that
vanished or cannot be opened is a recorded result of the backup (partial
success), not a failure of the run.
"""

from __future__ import annotations

import errno
import os
import stat

from ..protocols import InThread, ReporterLike
from ..store.entry import Entry
from ..store.protocols import ReadAt
from ..system.paths import LocalFile
from ..system.sparse import Layout, data_extents
from .source import Source, SourceFile


class SourceReader:
    """Opens and reads the files of ``source``, warning ``reporter`` of what it cannot.

    ``blocking(fn, *args)`` runs ``fn`` off the reactor thread (the store's):
    a source whose opening blocks on the network (an object store's) is
    opened through it.  Bytes read whole are counted in
    ``reporter.stats.bytes_read``.
    """

    def __init__(self, source: Source, reporter: ReporterLike, blocking: InThread) -> None:
        self.source = source
        self.rep = reporter
        self.stats = reporter.stats
        self._blocking = blocking

    async def open(self, e: Entry) -> SourceFile | None:
        """Open a source file for reading (never through a symlink); None after a warning."""
        try:
            if getattr(self.source, "blocking", False):
                return await self._blocking(self.source.open, e.path)
            return self.source.open(e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {why(err)}")
            return None

    def regular(self, e: Entry, st: os.stat_result) -> bool:
        """Whether an opened file is still a regular file (False after a warning)."""
        if stat.S_ISREG(st.st_mode):
            return True
        self.rep.warn(e.path, "skipped: it is no longer a regular file")
        return False

    def layout(self, f: SourceFile, size: int) -> Layout | None:
        """Where the data of a local file lies when it has holes worth recording (``system.sparse``);
        None: it is read whole, as a dense file (no hole, a source that is not a local file, or a
        file system that cannot say)."""
        return data_extents(f.fd, size) if isinstance(f, LocalFile) else None

    async def read_small(self, e: Entry) -> tuple[os.stat_result, bytes] | None:
        """Read a small file whole: (its fstat, its bytes), or None after a warning.

        A file whose size or mtime moved while it was read is read once more;
        if it moved again, what was read last is returned, with a warning.
        """
        f = await self.open(e)
        if f is None:
            return None
        try:
            for attempt in (1, 2):
                st = f.fstat()
                if not self.regular(e, st):
                    return None
                data = read_all(f, st.st_size + 1)
                after = f.fstat()
                self.stats.bytes_read += len(data)
                if len(data) == st.st_size and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                    return st, data
                if attempt == 2:
                    self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
                    return after, data
            raise AssertionError("unreachable")
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {why(err)}")
            return None
        finally:
            f.close()


def read_all(f: ReadAt, size: int) -> bytes:
    """Up to ``size`` bytes of an open source file from its start (fewer at its end)."""
    parts = []
    pos = 0
    while pos < size:
        chunk = f.pread(size - pos, pos)
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def why(err: OSError) -> str:
    """Why an entry cannot be saved, as its warning says it."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a parent was replaced by a file
        return "it vanished since the scan"
    if err.errno == errno.ELOOP:  # (opened never through a symlink: it was replaced by one)
        return "it is no longer a regular file"
    return err.strerror or str(err)
