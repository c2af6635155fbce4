"""Phase two: stream the queue to the grid, reusing cached caps, and build the snapshot root.

Entries arrive children-first.  Each file or symlink becomes a task at
once; each directory becomes a task that waits for its children and then
creates an immutable dirnode.  A window bounds the tasks in flight (and so
memory), the gateway's slots bound the requests, and a file is opened only
when its upload actually starts.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from .cache import EntryCache
from .entry import KIND_DIR, KIND_FILE, KIND_LINK, KIND_SOCKET, Entry, kind_of
from .paths import lstat_beneath, open_beneath
from .errors import LafsBackupError, QueueError
from .gateway import Gateway
from .log import NOISE
from .report import Reporter
from .snapshot import (LIT_MAX, Child, blob_key, body_key, dir_body, edge_metadata, file_key,
                       lit_cap, root_body)

log = logging.getLogger(__name__)

class FileSlice(io.RawIOBase):
    """A read-only view of an open fd with its own position (``pread``), hashing what it reads.

    Each upload attempt gets a fresh slice, so a cancelled attempt can never
    move the position of the next one.  Closing it leaves the fd open.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0
        self.sha256 = hashlib.sha256()
        self.hashed_to = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        n = min(n, max(0, self._size - self._pos))
        if n == 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        if self._pos == self.hashed_to:
            self.sha256.update(data)
            self.hashed_to += len(data)
        self._pos += len(data)
        return data


@dataclass
class _Failed:
    """Marks a subtree that failed fatally (the error is kept on the uploader)."""


_FAILED = _Failed()


class Uploader:
    """Runs phase two for one backup of ``source`` in ``generation``."""

    def __init__(self, source: bytes, gateway: Gateway, cache: EntryCache, generation: int,
                 reporter: Reporter, window: int = 4000, open_files: int = 12,
                 reactor: Any = None) -> None:
        self.source = source
        self.gw = gateway
        self.cache = cache
        self.gen = generation
        self.rep = reporter
        self.stats = reporter.stats
        self._window = DeferredSemaphore(window)
        self._files = DeferredSemaphore(open_files)
        self._reactor = reactor
        self._uploading: dict[bytes, _Shared] = {}
        self.fatal: BaseException | None = None
        #: Relative paths currently being uploaded (for progress and the manhole).
        self.in_flight: set[bytes] = set()

    # -- driver ----------------------------------------------------------------
    async def run(self, entries: Iterable[Entry]) -> str:
        """Upload every entry; return the snapshot root cap.

        Raises the first fatal error (gateway failure, bad queue).  Per-entry
        problems are warnings on the reporter.
        """
        pending: dict[bytes, list[Deferred]] = {}
        root: Deferred | None = None
        for e in entries:
            await self._window.acquire()
            if self.fatal is not None:
                self._window.release()
                break
            if root is not None:
                raise QueueError(path="(queue)", problem="entries after the root")
            self.stats.entries_scanned += 1
            if e.kind == KIND_DIR:
                children = pending.pop(e.path, [])
                d = self._spawn(self._directory(e, children))
            elif e.kind == KIND_FILE:
                d = self._spawn(self._file(e))
            elif e.kind == KIND_LINK:
                d = self._spawn(self._symlink(e))
            else:
                d = self._spawn(self._special(e))
            if e.path == b"":
                root = d
            else:
                pending.setdefault(e.parent or b"", []).append(d)
        if self.fatal is None and root is None:
            raise QueueError(path="(queue)", problem="it has no root directory entry")
        if self.fatal is None and pending:
            raise QueueError(path="(queue)", problem="some entries come after their directory")
        result = await root if root is not None else _FAILED
        if self.fatal is not None:
            raise self.fatal
        assert isinstance(result, Child)
        body = root_body(result)
        return await self._mkdir(body)

    def _spawn(self, coro: Any) -> Deferred:
        async def guarded() -> Any:
            try:
                return await coro
            except LafsBackupError as e:
                if self.fatal is None:
                    self.fatal = e
                return _FAILED
            except BaseException as e:  # a bug: keep it for the CLI's traceback
                if self.fatal is None:
                    self.fatal = e
                return _FAILED
            finally:
                self._window.release()
        return Deferred.fromCoroutine(guarded())

    # -- entries ------------------------------------------------------------------
    async def _symlink(self, e: Entry) -> Child | None:
        self.stats.symlinks += 1
        try:
            st = lstat_beneath(self.source, e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        if not stat.S_ISLNK(st.st_mode):
            self.rep.warn(e.path, "skipped: it is no longer a symlink")
            return None
        target = e.target or b""
        if len(target) <= LIT_MAX:
            cap = lit_cap(target)
        else:
            key = blob_key(target)
            hit = self.cache.lookup(key, self.gen)
            if hit:
                cap = hit.cap
            else:
                cap = await self.gw.put_bytes(target)
                self.cache.store(key, cap, self.gen)
        return Child(e.name, cap, edge_metadata(e))

    async def _special(self, e: Entry) -> Child | None:
        """FIFOs, devices and sockets: metadata only (an empty LIT cap), never opened."""
        self.stats.specials += 1
        try:
            st = lstat_beneath(self.source, e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        if kind_of(st.st_mode) != e.kind:
            self.rep.warn(e.path, "skipped: its type changed since the scan")
            return None
        if e.kind == KIND_SOCKET:
            self.rep.note_once("sockets", "sockets are recorded but cannot be restored")
        return Child(e.name, lit_cap(b""), edge_metadata(e))

    async def _file(self, e: Entry) -> Child | None:
        self.stats.files += 1
        path = e.path
        try:
            st = lstat_beneath(self.source, path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.rep.warn(e.path, "skipped: it is no longer a regular file")
            return None
        key = file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if st.st_size > LIT_MAX:
            hit = self.cache.lookup(key, self.gen)
            if hit is not None:
                self.stats.files_unchanged += 1
                log.log(NOISE, "unchanged (cache hit): %r", e.path)
                meta = edge_metadata(e, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                     hit.sha256.hex() if hit.sha256 else None)
                return Child(e.name, hit.cap, meta)
        await self._files.acquire()
        self.in_flight.add(e.path)
        try:
            return await self._read_and_upload(e, path, key)
        finally:
            self.in_flight.discard(e.path)
            self._files.release()

    async def _read_and_upload(self, e: Entry, path: bytes, key: bytes) -> Child | None:
        try:
            fd = open_beneath(self.source, path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        try:
            for attempt in (1, 2):
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self.rep.warn(e.path, "skipped: it is no longer a regular file")
                    return None
                if st.st_size <= LIT_MAX:
                    data = os.pread(fd, LIT_MAX + 1, 0)
                    if len(data) <= LIT_MAX:
                        self.stats.files_lit += 1
                        self.stats.bytes_read += len(data)
                        meta = edge_metadata(e, len(data), st.st_mtime_ns, st.st_ctime_ns,
                                             hashlib.sha256(data).hexdigest())
                        return Child(e.name, lit_cap(data), meta)
                    st = os.fstat(fd)  # grew since the fstat: upload it whole
                sha = await self._hash(fd, st.st_size)
                self.stats.bytes_read += st.st_size
                cap, stored = await self._store_content(fd, st.st_size, sha, e.path)
                after = os.fstat(fd)
                stable = stored == sha and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
                if stable:
                    self.cache.store(file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
                                     cap, self.gen, stored)
                    break
                if attempt == 1:
                    log.info("%r changed while it was read; reading it again", e.path)
                    continue
                self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
            return Child(e.name, cap, edge_metadata(e, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                    stored.hex()))
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        finally:
            os.close(fd)

    async def _hash(self, fd: int, size: int) -> bytes:
        """SHA-256 of the file's bytes; big files are hashed in a thread (hashlib drops the GIL)."""
        if size < (1 << 20) or self._reactor is None:
            return _sha256_fd(fd, size)
        from twisted.internet.threads import deferToThreadPool

        result: bytes = await deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                                _sha256_fd, fd, size)
        return result

    async def _store_content(self, fd: int, size: int, sha: bytes, path: bytes) -> tuple[str, bytes]:
        """The cap of content ``sha``: from the cache, from an identical upload already under
        way in this run, or from a new upload.  Returns (cap, SHA-256 of what the cap holds)."""
        ckey = content_key(sha)
        hit = self.cache.lookup(ckey, self.gen)
        if hit is not None:
            self.stats.files_deduplicated += 1
            log.log(NOISE, "content already stored: %r", path)
            return hit.cap, sha
        shared = self._uploading.get(ckey)
        if shared is not None:
            cap, got = await shared.wait()
            if got == sha:
                self.stats.files_deduplicated += 1
                return cap, sha
        shared = _Shared()
        self._uploading[ckey] = shared
        try:
            slices: list[FileSlice] = []

            def opener() -> FileSlice:
                sl = FileSlice(fd, size)
                slices.append(sl)
                return sl

            cap = await self.gw.put_file(opener)
            last = slices[-1]
            if last.hashed_to != size:
                raise LafsBackupError(f"an upload read {last.hashed_to} of {size} bytes")
            got = last.sha256.digest()
            shared.fire((cap, got))
        except BaseException as err:
            shared.fail(err)
            raise
        finally:
            del self._uploading[ckey]
        self.cache.store(content_key(got), cap, self.gen, got)
        self.stats.files_new += 1
        self.stats.bytes_uploaded += size
        log.log(NOISE, "uploaded: %r (%d bytes)", path, size)
        return cap, got

    async def _directory(self, e: Entry, children: list[Deferred]) -> Child | _Failed | None:
        self.stats.dirs += 1
        results = await gatherResults(children) if children else []
        if any(r is _FAILED for r in results):
            return _FAILED
        if e.path:
            try:
                st = lstat_beneath(self.source, e.path)
            except OSError as err:
                self.rep.warn(e.path, f"skipped: {_why(err)}")
                return None
            if not stat.S_ISDIR(st.st_mode):
                self.rep.warn(e.path, "skipped: it is no longer a directory (replaced since the scan)")
                return None
        body = dir_body(r for r in results if r is not None)
        cap = await self._mkdir(body)
        if e.path:  # times as they are now, like the children's (entries may have gone since the scan)
            return Child(e.name, cap, edge_metadata(e, None, st.st_mtime_ns, st.st_ctime_ns))
        return Child(e.name, cap, edge_metadata(e))

    async def _mkdir(self, body: bytes) -> str:
        key = body_key(body)
        hit = self.cache.lookup(key, self.gen)
        if hit is not None:
            self.stats.dirs_unchanged += 1
            return hit.cap
        cap = await self.gw.mkdir_immutable(body)
        self.cache.store(key, cap, self.gen)
        self.stats.dirs_new += 1
        return cap


class _Shared:
    """The outcome of one upload, awaited by any number of identical-content waiters."""

    def __init__(self) -> None:
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result: Any) -> None:
        for d in self._waiters:
            d.callback(result)

    def fail(self, err: BaseException) -> None:
        for d in self._waiters:
            d.errback(err)


def content_key(sha: bytes) -> bytes:
    """Cache key of stored content, by its plaintext SHA-256."""
    return b"content\0" + sha


def _sha256_fd(fd: int, size: int) -> bytes:
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(1 << 20, size - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h.digest()


def _why(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a parent was replaced by a file
        return "it vanished since the scan"
    return err.strerror or str(err)
