"""A restore's leaves: each non-directory entry made in its directory (an open descriptor), never
through a symlink, with its recorded attributes applied through a descriptor of what was made: a file
written under a temporary name, checked and renamed into place (sparse again: its recorded holes and
its aligned blocks of zeros are seeked over), a symlink, a FIFO or a device."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from ..derive.recipe import KEY as DERIVED
from ..store.entry import KIND_CHAR, KIND_FIFO, KIND_FILE, KIND_LINK
from ..errors import GatewayError
from ..system.meta import Applier, FdHandle, LinkHandle
from ..report import Reporter
from ..store.snapshot import Node, xattrs_of
from ..system.sparse import ZERO_BLOCK, is_zero
from .overwrite import SPECIAL_TYPES
from .reader import Reader


class Leaves:
    """Makes the non-directory entries of a restore; ``is_root``: devices can be made."""

    def __init__(self, reader: Reader, rep: Reporter, is_root: bool) -> None:
        self.reader = reader
        self.rep = rep
        self.stats = rep.stats
        self._is_root = is_root
        #: The derived files that could not be made again (``read/remake.py``): path, why.
        self.unmade: list[tuple[bytes, str]] = []

    async def create(self, node: Node, dfd: int, rel: bytes, applier: Applier) -> bool:
        """Create one non-directory entry with its attributes; False if it was not restored."""
        meta = node.metadata
        name = node.name
        if node.kind == KIND_FILE:
            return await self._file(node, dfd, rel, applier)
        if not clear(dfd, name, rel, self.rep):
            return False
        if node.kind == KIND_LINK:
            if node.target is None:
                self.rep.warn(rel, "symlink without a target; skipped")
                return False
            os.symlink(node.target, name, dir_fd=dfd)
            applier.apply(LinkHandle(dfd, name), meta, KIND_LINK, xattrs_of(meta))
            return True
        if node.kind == KIND_FIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            rdev = meta.get("rdev")
            if not isinstance(rdev, int):
                self.rep.warn(rel, "device without a device number; skipped")
                return False
            if not self._is_root:
                self.rep.warn(rel, "device not restored: only root can create devices")
                return False
            fmt = stat.S_IFCHR if node.kind == KIND_CHAR else stat.S_IFBLK
            os.mknod(name, fmt | 0o600, rdev, dir_fd=dfd)
        # A FIFO or a device is never opened for reading: its attributes go through an O_PATH
        # descriptor, checked to be the kind of file just made.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != SPECIAL_TYPES[node.kind]:
                self.rep.warn(rel, "it was replaced while it was restored; its attributes were not applied")
                return False
            applier.apply(FdHandle(fd, o_path=True), meta, node.kind, xattrs_of(meta))
        finally:
            os.close(fd)
        return True

    async def _file(self, node: Node, dfd: int, rel: bytes, applier: Applier) -> bool:
        """Download a file under a temporary name, check it, apply its attributes through its
        descriptor, then rename it into place: its final name never holds wrong content.  An
        empty file is made under its own name (empty is its whole content)."""
        if _is_empty(node):
            fd = _create_excl(dfd, node.name, rel, self.rep)
            if fd is None:
                return False
            try:
                applier.apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            finally:
                os.close(fd)
            return True
        tmp = _partial_name(node.name)
        fd = _create_excl(dfd, tmp, rel, self.rep)
        if fd is None:
            return False
        placed = False
        try:
            sink = _SparseSink(fd)
            try:
                got = await self.reader.content(node, sink.write, sink.restart, sink.hole)
            except GatewayError as e:
                self.rep.warn(rel, f"cannot read from the grid: {e.reason or e}")
                if DERIVED in node.metadata:
                    self.unmade.append((rel, f"an input cannot be read from the grid: {e.reason or e}"))
                return False
            sink.close()
            if got.matches is False:
                if got.problem is not None and DERIVED in node.metadata:
                    # (not damage of the backup: this machine cannot make it, or makes other bytes)
                    self.unmade.append((rel, got.problem))
                    self.rep.warn(rel, f"{got.problem}; not restored")
                else:
                    self.rep.problem(rel, f"{got.mismatch}; not restored")
                return False
            applier.apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            try:
                os.rename(tmp, node.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    self.rep.warn(rel, "a directory is in the way; not restored")
                    return False
                raise
            placed = True
            self.stats.bytes_written += sink.size  # only what was put in place
            return True
        finally:
            os.close(fd)
            if not placed:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass


def clear(dfd: int, name: bytes, rel: bytes, rep: Reporter) -> bool:
    """Remove a non-directory at ``name`` so a leaf can be created there; False if a directory is in the way."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(st.st_mode):
        rep.warn(rel, "a directory is in the way; not restored")
        return False
    os.unlink(name, dir_fd=dfd)
    return True


def _is_empty(node: Node) -> bool:
    """A file recorded as empty whose cap holds nothing (so there is nothing to read or check)."""
    return node.metadata.get("size") == 0 and node.cap == "URI:LIT:" and node.pack is None and node.object is None


def _create_excl(dfd: int, name: bytes, rel: bytes, rep: Reporter) -> int | None:
    """Create ``name`` (0600) in ``dfd``, never through a symlink: whatever is there (a leftover,
    a symlink, a file) is removed first; None when a directory is in the way."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dfd)
    except FileExistsError:
        if not clear(dfd, name, rel, rep):
            return None
        return os.open(name, flags, 0o600, dir_fd=dfd)


def _partial_name(name: bytes) -> bytes:
    """Where a file is written before it is checked and renamed into place (short enough for
    any name; the same for the same name, so a killed restore's leftover is replaced)."""
    return b".lafs-restore-" + hashlib.sha256(name).hexdigest()[:20].encode() + b".part"


class _SparseSink:
    """Writes a download to ``fd`` (a new, empty file) at its offsets, leaving holes: a sparse
    file's recorded holes (:meth:`hole`) and every block of zeros within :data:`ZERO_BLOCK`-aligned
    bounds are seeked over, so the file is sparse where its file system makes holes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # the content's length so far
        self._written = 0  # the end of what was written

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        self.size = 0
        self._written = 0

    def hole(self, n: int) -> None:
        self.size += n

    def write(self, chunk: bytes) -> None:
        at = self.size
        self.size += len(chunk)
        start: int | None = None  # where the run of data being gathered began
        i = 0
        while i < len(chunk):
            j = min(len(chunk), i + ZERO_BLOCK - (at + i) % ZERO_BLOCK)
            if is_zero(chunk[i:j]):
                if start is not None:
                    self._put(memoryview(chunk)[start:i], at + start)
                    start = None
            elif start is None:
                start = i
            i = j
        if start is not None:
            self._put(memoryview(chunk)[start:], at + start)

    def _put(self, data: bytes | memoryview, at: int) -> None:
        view = memoryview(data)
        while view:  # a nearly full disk may take part of a write
            k = os.pwrite(self.fd, view, at)
            view = view[k:]
            at += k
        self._written = max(self._written, at)

    def close(self) -> None:
        if self._written < self.size:
            os.ftruncate(self.fd, self.size)  # a trailing hole needs the size set
