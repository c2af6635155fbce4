"""File access beneath a root through ``openat`` chains: any path length, never through a symlink."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator, TextIO

O_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LONG = 3800  # beyond this, don't hand the kernel a whole path (PATH_MAX is 4096)


class LocalFile:
    """A local file open for reading by offset (so uploads and hashes never share a position)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """A short path naming ``name`` in the directory open as ``dir_fd`` (for libraries that take paths)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def open_noatime(path: bytes, flags: int, dir_fd: int | None = None, mode: int = 0o777) -> int:
    """``os.open`` with O_NOATIME where allowed (it needs ownership or CAP_FOWNER)."""
    if O_NOATIME:
        try:
            return os.open(path, flags | O_NOATIME, mode, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(path, flags, mode, dir_fd=dir_fd)


def open_dir_chain(root_fd: int, parts: list[bytes], create: bool = False, made: list[int] | None = None) -> int:
    """Open ``root/parts...`` as a directory, one component at a time, never following a symlink.

    With ``create``, missing directories are made (0700; their real mode is
    applied later), and anything else in the way is removed first; ``made``
    is told the depth (1: ``parts[0]``) of each directory made.
    Returns a new fd the caller closes.
    """
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts, 1):
            try:
                nfd = open_noatime(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if not create or e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    raise
                if e.errno != errno.ENOENT:
                    os.unlink(part, dir_fd=fd)  # a file or symlink where a directory belongs
                os.mkdir(part, 0o700, dir_fd=fd)
                if made is not None:
                    made.append(depth)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def parent_dir(root: bytes, rel: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (fd of the directory holding ``rel``, its last component), for any path length."""
    head, _, name = rel.rpartition(b"/")
    if len(root) + len(rel) < _LONG:
        fd = open_noatime(root + b"/" + head if head else root, _DIR_FLAGS)
    else:
        rfd = os.open(root, _DIR_FLAGS)
        try:
            fd = open_dir_chain(rfd, head.split(b"/") if head else [])
        finally:
            os.close(rfd)
    try:
        yield fd, name
    finally:
        os.close(fd)


def open_beneath(root: bytes, rel: bytes, flags: int) -> int:
    """Open ``root/rel`` (never through a symlink in its last component), any length."""
    if len(root) + len(rel) < _LONG:
        return open_noatime(root + b"/" + rel, flags | os.O_NOFOLLOW)
    with parent_dir(root, rel) as (fd, name):
        return open_noatime(name, flags | os.O_NOFOLLOW, dir_fd=fd)


def lstat_beneath(root: bytes, rel: bytes) -> os.stat_result:
    if not rel:
        return os.lstat(root)
    if len(root) + len(rel) < _LONG:
        return os.lstat(root + b"/" + rel)
    with parent_dir(root, rel) as (fd, name):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


@contextmanager
def replacing(path: str, buffering: int = -1) -> Iterator[TextIO]:
    """A new text file (mode 0600) that replaces ``path`` when the block ends without error.

    It is written as ``path.tmp.PID``, synced, renamed over ``path``, and the
    directory synced: a kill or a power cut leaves the old file or the new
    one, never a mix.  On an error the temp file is removed and ``path`` is
    untouched.  Temp files of killed runs (their PID gone) are removed first.
    """
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=buffering) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_temps(path: str) -> None:
    """Remove ``path.tmp.PID`` files left by killed runs (PID no longer running)."""
    directory, base = os.path.split(os.path.abspath(path))
    prefix = base + ".tmp."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        if not (name.startswith(prefix) and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or the pid was reused): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
