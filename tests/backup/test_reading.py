"""Reading source files over fakes: a small file read whole, read again when it moved, warnings instead of errors."""

from __future__ import annotations

import errno
import stat
from types import SimpleNamespace

import pytest_twisted

from lafs_backup.backup.reading import SourceReader, read_all, why
from lafs_backup.store.entry import Entry


def st(size, mtime, mode=stat.S_IFREG | 0o644):
    return SimpleNamespace(st_mode=mode, st_size=size, st_mtime_ns=mtime)


class File:
    """An open source file whose fstat answers ``stats`` in turn (the last one from then on)."""

    def __init__(self, data, *stats, chunk=None):
        self.data, self.stats, self.chunk, self.closed = data, list(stats), chunk, False

    def fstat(self):
        return self.stats.pop(0) if len(self.stats) > 1 else self.stats[0]

    def pread(self, n, offset):
        return self.data[offset:offset + min(n, self.chunk or n)]

    def close(self):
        self.closed = True


def reader(opened, blocking_source=False):
    warnings = []
    files = {}

    def open_(rel):
        if isinstance(opened, OSError):
            raise opened
        files[rel] = opened
        return opened

    async def blocking(fn, *args):
        warnings.append("off the reactor")
        return fn(*args)

    rep = SimpleNamespace(warn=lambda path, msg: warnings.append(msg), stats=SimpleNamespace(bytes_read=0))
    source = SimpleNamespace(open=open_, blocking=blocking_source)
    return SourceReader(source, rep, blocking), warnings, rep.stats


E = Entry("f", b"a/file", 0o644, 0, 0, 4, 0, 0, 0, 0, 1)


@pytest_twisted.ensureDeferred
async def test_a_still_file_is_read_whole_once():
    f = File(b"data", st(4, 1))
    r, warnings, stats = reader(f)
    assert await r.read_small(E) == (st(4, 1), b"data")
    assert warnings == [] and stats.bytes_read == 4 and f.closed


@pytest_twisted.ensureDeferred
async def test_a_file_that_moved_is_read_again():
    f = File(b"data", st(4, 1), st(4, 2), st(4, 2))
    r, warnings, stats = reader(f)
    assert await r.read_small(E) == (st(4, 2), b"data")
    assert warnings == [] and stats.bytes_read == 8


@pytest_twisted.ensureDeferred
async def test_a_file_that_moved_twice_is_stored_as_last_read_with_a_warning():
    f = File(b"dat", st(4, 1), st(4, 1), st(4, 1), st(4, 1))  # shorter than its size says, both times
    r, warnings, stats = reader(f)
    assert await r.read_small(E) == (st(4, 1), b"dat")
    assert warnings == ["changed while it was being read (twice); stored as last read"] and f.closed


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_read_is_a_warning():
    r, warnings, _ = reader(OSError(errno.ENOENT, "No such file or directory"))
    assert await r.read_small(E) is None and warnings == ["skipped: it vanished since the scan"]
    f = File(b"", st(0, 1, stat.S_IFDIR | 0o755))
    r, warnings, _ = reader(f)
    assert await r.read_small(E) is None and f.closed
    assert warnings == ["skipped: it is no longer a regular file"]


@pytest_twisted.ensureDeferred
async def test_a_blocking_source_is_opened_off_the_reactor():
    f = File(b"data", st(4, 1))
    r, calls, _ = reader(f, blocking_source=True)
    assert await r.open(E) is f and calls == ["off the reactor"]
    r, calls, _ = reader(f)
    assert await r.open(E) is f and calls == []


def test_read_all_reads_up_to_size_in_pieces():
    assert read_all(File(b"abcdefg", st(7, 1), chunk=2), 8) == b"abcdefg"
    assert read_all(File(b"abcdefg", st(7, 1), chunk=3), 5) == b"abcde"


def test_why():
    assert why(OSError(errno.ENOTDIR, "Not a directory")) == "it vanished since the scan"
    assert why(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
