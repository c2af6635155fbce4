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
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from .cache import EntryCache, Hit
from .encode import EncodingRules, compress, salted
from .entry import KIND_DIR, KIND_FILE, KIND_LINK, KIND_SOCKET, Entry, kind_of
from .errors import LafsBackupError, LocalError, QueueError
from .gateway import Gateway
from .pack import SALT_MARK
from .store import despite_unhappiness
from .log import NOISE
from .pack import Budget, Packer, PackRef
from .paths import lstat_beneath, open_beneath
from .report import Reporter
from .snapshot import (LIT_MAX, PACKED_MARKER_BODY, Child, blob_key, body_key, content_key, dir_body,
                       edge_metadata, file_key, lit_cap, objects_body, root_body, salted_body)

log = logging.getLogger(__name__)

class FileSlice(io.RawIOBase):
    """A read-only view of an open fd with its own position (``pread``), hashing what it reads.

    Each upload attempt gets a fresh slice, so a cancelled attempt can never
    move the position of the next one.  ``prefix`` bytes (a salt) come
    before the file's bytes and are not hashed.  Closing it leaves the fd open.
    """

    def __init__(self, fd: int, size: int, prefix: bytes = b"") -> None:
        self._fd = fd
        self._prefix = prefix
        self.salted = bool(prefix)
        self._size = len(prefix) + size
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
        skip = len(self._prefix)
        if self._pos < skip:
            data = self._prefix[self._pos:self._pos + n]
            self._pos += len(data)
            return data
        at = self._pos - skip
        data = _pread_all(self._fd, n, at)
        if len(data) < n:  # the file shrank under the upload: its body would come up short
            raise SourceChanged(f"the file shrank to {at + len(data)} bytes while it was uploaded")
        if at == self.hashed_to:
            self.sha256.update(data)
            self.hashed_to += len(data)
        self._pos += len(data)
        return data


@dataclass
class _Failed:
    """Marks a subtree that failed fatally (the error is kept on the uploader)."""


_FAILED = _Failed()
_SLOW = object()  # "not settled from the cache: start a task"



@dataclass(frozen=True)
class Settings:
    """How phase two stores files (from the configuration)."""

    window: int = 4000
    open_files: int = 12
    pack_max_file_size: int = 1 << 20
    pack_target_size: int = 4 << 20
    encoding: EncodingRules = EncodingRules(None, 0)
    tmpdir: str | None = None
    #: stat: trust the cache when size, mtime, ctime and inode match; checksum:
    #: re-hash every file, store only new content; verify: like checksum, and
    #: report content that changed under unchanged stat data; force: store
    #: every file and directory again.
    mode: str = "stat"


class Uploader:
    """Runs phase two for one backup of ``source`` in ``generation``."""

    def __init__(self, source: bytes, gateway: Gateway, cache: EntryCache, generation: int,
                 reporter: Reporter, settings: Settings = Settings(), reactor: Any = None) -> None:
        self.source = source
        self.gw = gateway
        self.cache = cache
        self.gen = generation
        self.rep = reporter
        self.stats = reporter.stats
        self.settings = settings
        self._files = DeferredSemaphore(settings.open_files)
        self._reactor = reactor
        self._uploading: dict[bytes, _Shared] = {}
        self._files_pending = 0  # file tasks not finished
        self._files_done: Deferred | None = None
        self.packer = Packer(gateway, settings.pack_target_size, max(1, settings.window // 2))
        # Entries in flight, weighted: a directory counts its children, whose
        # results it holds.  When it runs out, tasks may be waiting for the
        # open pack: seal it.
        self._window = Budget(settings.window, self.packer.relieve)
        # Small files read but not yet stored in an uploaded pack: at most this many bytes.
        self._budget = Budget(4 * settings.pack_target_size + settings.pack_max_file_size, self.packer.relieve)
        #: Every pack and encoded object the snapshot refers to, old ones included: linked from its root.
        self.packs_used: set[str] = set()
        self.encoded_used: set[str] = set()
        self._plain = settings.pack_max_file_size == 0
        self._marker: _Shared | str | None = None
        self.fatal: BaseException | None = None
        #: Relative paths currently being read or uploaded (for progress and the manhole).
        self.in_flight: set[bytes] = set()
        self._commit_call: Any = None

    # -- driver ----------------------------------------------------------------
    async def run(self, entries: Iterable[Entry]) -> str:
        """Upload every entry; return the snapshot root cap.

        Raises the first fatal error (gateway failure, bad queue).  Per-entry
        problems are warnings on the reporter.
        """
        try:
            return await self._run(entries)
        finally:
            if self._commit_call is not None:  # the caller commits (or closes) the cache itself
                self._commit_call.cancel()
                self._commit_call = None

    async def _run(self, entries: Iterable[Entry]) -> str:
        # Each entry's result is a value when it could be settled at once
        # (unchanged, from the cache: an unchanged rerun never leaves this
        # loop), or a Deferred for the task that uploads it.
        pending: dict[bytes, list[Any]] = {}
        root: Any = None
        have_root = False
        for e in entries:
            if self.fatal is not None:
                break
            if have_root:
                raise QueueError(path="(queue)", problem="entries after the root")
            self.stats.entries_scanned += 1
            if e.kind == KIND_DIR:
                children = pending.pop(e.path, [])
                r = self._directory_now(e, children)
                if r is _SLOW:
                    r = await self._start(self._directory(e, children), 1 + len(children))
            elif e.kind == KIND_FILE:
                r = self._file_now(e)
                if r is _SLOW:
                    self._files_pending += 1
                    r = await self._start(self._counted(self._file(e)))
            elif e.kind == KIND_LINK:
                r = await self._start(self._symlink(e))
            else:
                r = await self._start(self._special(e))
            if e.path == b"":
                root, have_root = r, True
            else:
                pending.setdefault(e.parent or b"", []).append(r)
        if self.fatal is None and not have_root:
            raise QueueError(path="(queue)", problem="it has no root directory entry")
        if self.fatal is None and pending:
            raise QueueError(path="(queue)", problem="some entries come after their directory")
        self.packer.drain()
        # The objects directory can be made as soon as every file is settled,
        # while the last directories are still being created.
        objects = Deferred.fromCoroutine(self._objects_dir())
        result = (await root if isinstance(root, Deferred) else root) if have_root else _FAILED
        objects_cap = await objects
        await self.packer.flush()
        if self.fatal is not None:
            raise self.fatal
        assert isinstance(result, Child)
        self.stats.packs = self.packer.packs_uploaded
        return await self._mkdir(root_body(result, objects_cap))

    def _confirmed(self) -> None:
        """Rows for an upload the gateway confirmed were stored: commit them soon.

        A commit costs ~30 us, an upload tens of milliseconds, so rows that
        record an upload are committed once per reactor turn (which gathers
        every member of a pack) rather than in batches: a kill then loses
        only the uploads still in flight, and the rerun sends nothing twice.
        """
        if self._reactor is None:
            self._commit_confirmed()
        elif self._commit_call is None:
            self._commit_call = self._reactor.callLater(0, self._commit_confirmed)

    def _commit_confirmed(self) -> None:
        self._commit_call = None
        try:
            self.cache.commit()
        except BaseException as e:  # CacheError: the file was damaged under us
            if self.fatal is None:
                self.fatal = e
                self.gw.halt(e)

    async def _counted(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            self._files_pending -= 1
            if self._files_pending == 0 and self._files_done is not None:
                d, self._files_done = self._files_done, None
                d.callback(None)

    async def _objects_dir(self) -> str | None:
        if self._files_pending:
            self._files_done = Deferred()
            await self._files_done
        if self.fatal is not None or not (self.packs_used or self.encoded_used):
            return None
        try:
            return await self._mkdir(objects_body(self.packs_used, self.encoded_used))
        except BaseException as e:
            if self.fatal is None:
                self.fatal = e
            return None

    async def _start(self, coro: Any, weight: int = 1) -> Any:
        """Run ``coro`` as a task within the window; its Deferred, or its value if it finished at once."""
        held = await self._window.take(weight)
        d = self._spawn(coro, held)
        if d.called:  # settled without waiting: pass the value on, not the Deferred
            box: list[Any] = []
            d.addCallback(box.append)
            return box[0]
        return d

    # -- the fast path: entries settled from the cache, without a task ---------------
    def _file_now(self, e: Entry) -> Any:
        """An unchanged file's Child straight from the cache, or _SLOW."""
        if self.settings.mode != "stat":
            return _SLOW
        try:
            st = lstat_beneath(self.source, e.path)
        except OSError:
            return _SLOW
        if not stat.S_ISREG(st.st_mode):
            return _SLOW
        hit = self.cache.lookup(file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                         self._plain), self.gen)
        if hit is None:
            return _SLOW
        child = self._child_now(e, st, hit)
        if child is None:
            return _SLOW
        self.stats.files += 1
        self.stats.files_unchanged += 1
        self.stats.bytes_done += e.size
        self.stats.entries_done += 1
        return child

    def _directory_now(self, e: Entry, children: list[Any]) -> Any:
        """A directory whose children are all settled and whose body is cached, or _SLOW."""
        if self.settings.mode == "force" or any(isinstance(c, Deferred) or c is _FAILED for c in children):
            return _SLOW
        st = None
        if e.path:
            try:
                st = lstat_beneath(self.source, e.path)
            except OSError:
                return _SLOW
            if not stat.S_ISDIR(st.st_mode):
                return _SLOW
        hit = self.cache.lookup(body_key(dir_body(c for c in children if c is not None)), self.gen)
        if hit is None:
            return _SLOW
        self.stats.dirs += 1
        self.stats.dirs_unchanged += 1
        self.stats.entries_done += 1
        if st is not None:
            return Child(e.name, hit.cap, edge_metadata(e, None, st.st_mtime_ns, st.st_ctime_ns))
        return Child(e.name, hit.cap, edge_metadata(e))

    def _spawn(self, coro: Any, held: int) -> Deferred:
        async def guarded() -> Any:
            try:
                return await coro
            except BaseException as e:  # LafsBackupError: fatal; anything else: a bug, for the traceback
                if self.fatal is None:
                    self.fatal = e
                    self.gw.halt(e)  # what is still queued would fail the same way: don't send it
                return _FAILED
            finally:
                self.stats.entries_done += 1
                self._window.give(held)
        return Deferred.fromCoroutine(guarded())

    # -- entries ------------------------------------------------------------------
    def _still(self, e: Entry, is_type: Any, what: str) -> os.stat_result | None:
        """lstat an entry again in phase two; None after a warning if it vanished or ``is_type`` fails."""
        try:
            st = lstat_beneath(self.source, e.path)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        if not is_type(st.st_mode):
            self.rep.warn(e.path, f"skipped: {what}")
            return None
        return st

    async def _symlink(self, e: Entry) -> Child | None:
        self.stats.symlinks += 1
        if self._still(e, stat.S_ISLNK, "it is no longer a symlink") is None:
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
                # Only the target in the metadata is ever read back: a salt after it is harmless.
                cap = await despite_unhappiness(
                    lambda salt: self.gw.put_bytes(target + (SALT_MARK + salt if salt else b"")),
                    self.gw, "a symlink target")
                self.cache.store(key, cap, self.gen)
                self._confirmed()
        return Child(e.name, cap, edge_metadata(e))

    async def _special(self, e: Entry) -> Child | None:
        """FIFOs, devices and sockets: metadata only (an empty LIT cap), never opened."""
        self.stats.specials += 1
        if self._still(e, lambda mode: kind_of(mode) == e.kind, "its type changed since the scan") is None:
            return None
        if e.kind == KIND_SOCKET:
            self.rep.note_once("sockets", "sockets are recorded but cannot be restored")
        return Child(e.name, lit_cap(b""), edge_metadata(e))

    async def _file(self, e: Entry) -> Child | None:
        self.stats.files += 1
        try:
            return await self._file_inner(e)
        finally:
            self.stats.bytes_done += e.size

    async def _file_inner(self, e: Entry) -> Child | None:
        st = self._still(e, stat.S_ISREG, "it is no longer a regular file")
        if st is None:
            return None
        key = file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, self._plain)
        known = self.cache.lookup(key, self.gen)
        if known is not None and self.settings.mode == "stat":
            self.stats.files_unchanged += 1
            log.log(NOISE, "unchanged (cache hit): %r", e.path)
            return await self._child(e, st, known)
        changed = self.cache.saw_path(self.source, e.path)
        child = await (self._small(e, st.st_size) if st.st_size <= self.settings.pack_max_file_size
                       else self._large_slot(e))
        if child is None:
            return None
        self.cache.record_path(self.source, e.path, self.gen)
        if known is not None and known.sha256 and child.metadata.get("sha256") == known.sha256.hex():
            self.stats.files_unchanged += 1
        elif known is not None and known.sha256 and self.settings.mode == "verify":
            self.stats.files_changed += 1
            self.rep.problem(e.path, "content changed although its size, mtime, ctime and inode did not "
                                     "(silent corruption in the source?)")
        elif changed:
            self.stats.files_changed += 1
        else:
            self.stats.files_new += 1
        return child

    async def _large_slot(self, e: Entry) -> Child | None:
        await self._files.acquire()
        self.in_flight.add(e.path)
        try:
            return await self._large(e)
        finally:
            self.in_flight.discard(e.path)
            self._files.release()

    async def _small(self, e: Entry, size: int) -> Child | None:
        """A file that goes into a pack: read whole within the memory budget, then packed unless known.

        Its bytes count against the budget until its pack is uploaded, or
        until it turns out to be known content (then they are dropped).
        """
        self.packer.expect()
        expected = [True]

        def appended() -> None:
            if expected:
                expected.clear()
                self.packer.expected()

        hold = _Hold(self._budget, await self._budget.take(size))
        try:
            await self._files.acquire()
            self.in_flight.add(e.path)
            try:
                read = self._read_small(e)
            finally:
                self.in_flight.discard(e.path)
                self._files.release()  # never hold a slot while waiting for a pack
            if read is None:
                return None
            st, data = read
            sha = hashlib.sha256(data).digest()
            if len(data) <= LIT_MAX:  # the content is the cap: no request
                self.stats.files_lit += 1
                hit = Hit(lit_cap(data), sha)
                self.cache.store_hit(file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                              self._plain), hit, self.gen)
                return await self._child(e, st, hit)
            box = [data]
            del data

            def drop() -> None:
                box.clear()
                hold.release()

            hit = await self._content(sha, len(box[0]), lambda: self._pack(box.pop(), sha, e.path, appended),
                                      on_wait=lambda: (drop(), appended()))
            self.cache.store_hit(file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, self._plain),
                                 hit, self.gen)
            return await self._child(e, st, hit)
        finally:
            appended()
            hold.release()

    def _open(self, e: Entry) -> int | None:
        """Open a source file for reading (never through a symlink); None after a warning."""
        try:
            return open_beneath(self.source, e.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None

    def _regular(self, e: Entry, st: os.stat_result) -> bool:
        if stat.S_ISREG(st.st_mode):
            return True
        self.rep.warn(e.path, "skipped: it is no longer a regular file")
        return False

    def _read_small(self, e: Entry) -> tuple[os.stat_result, bytes] | None:
        """Read a small file whole; read it again once if it changed meanwhile."""
        fd = self._open(e)
        if fd is None:
            return None
        try:
            for attempt in (1, 2):
                st = os.fstat(fd)
                if not self._regular(e, st):
                    return None
                data = _pread_all(fd, st.st_size + 1)
                after = os.fstat(fd)
                self.stats.bytes_read += len(data)
                if len(data) == st.st_size and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                    return st, data
                if attempt == 2:
                    self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
                    return after, data
            raise AssertionError("unreachable")
        except OSError as err:
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        finally:
            os.close(fd)

    async def _large(self, e: Entry) -> Child | None:
        """A file above the pack limit: hashed, then uploaded as its own object unless known.

        A file that changes while it is read (its size or mtime move, or it
        shrinks under an upload) is read once more; the second time from a
        private copy, so what is stored is whole and matches its SHA-256.
        """
        fd = self._open(e)
        if fd is None:
            return None
        copy: int | None = None
        attempt = 0
        try:
            for attempt in (1, 2):
                st = os.fstat(fd)
                if not self._regular(e, st):
                    return None
                src, size = fd, st.st_size
                if attempt == 2:
                    copy = await self._in_thread(_private_copy, fd, st.st_size, self.settings.tmpdir)
                    src, size = copy, os.fstat(copy).st_size
                sha = await self._in_thread(_sha256_fd, src, size)
                self.stats.bytes_read += size
                try:
                    hit = await self._content(sha, size, lambda: self._put_file(src, size, sha, e.path))
                except SourceChanged:
                    if copy is not None:
                        raise
                    log.info("%r changed while it was uploaded; reading it again", e.path)
                    continue
                after = os.fstat(fd)
                if (hit.sha256 == sha and size == st.st_size
                        and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)):
                    self.cache.store_hit(file_key(e.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                  st.st_ino, self._plain), hit, self.gen)
                    break
                if attempt == 1:
                    log.info("%r changed while it was read; reading it again", e.path)
                    continue
                self.rep.warn(e.path, "changed while it was being read (twice); stored as last read")
            return await self._child(e, st, hit, size)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT) and attempt == 2:
                raise _tmpdir_full(self.settings.tmpdir, err, e.path, "copying") from None
            self.rep.warn(e.path, f"skipped: {_why(err)}")
            return None
        finally:
            os.close(fd)
            if copy is not None:
                os.close(copy)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        if self._reactor is None:
            return fn(*args)
        from twisted.internet.threads import deferToThreadPool

        return await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    # -- content --------------------------------------------------------------------
    async def _content(self, sha: bytes, size: int, store: Any, on_wait: Any = None) -> Hit:
        """Where content ``sha`` is stored: the cache, an identical store already under way in this
        run, or ``store()``, a new one.  The returned Hit's sha256 is what the stored bytes hold."""
        ckey = content_key(sha, self._plain)
        hit = self.cache.lookup(ckey, self.gen) if self.settings.mode != "force" else None
        if hit is not None:
            self.stats.files_deduplicated += 1
            self.stats.bytes_deduplicated += size
            return hit
        shared = self._uploading.get(ckey)
        if shared is not None:
            if on_wait is not None:
                on_wait()  # this copy of the content is not needed: another is being stored
            got: Hit = await shared.wait()
            if got.sha256 == sha:
                self.stats.files_deduplicated += 1
                self.stats.bytes_deduplicated += size
                return got
        shared = _Shared()
        self._uploading[ckey] = shared
        try:
            hit = await store()
            shared.fire(hit)
        except BaseException as err:
            shared.fail(err)
            raise
        finally:
            # A waiter may already have registered its own store under this key (the
            # content it wanted turned out different): that one is not ours to remove.
            if self._uploading.get(ckey) is shared:
                del self._uploading[ckey]
        if hit.sha256 == sha:
            self.cache.store_hit(ckey, hit, self.gen)
            self._confirmed()
        self.stats.files_uploaded += 1
        return hit

    async def _pack(self, data: bytes, sha: bytes, path: bytes, appended: Any) -> Hit:
        enc = self.settings.encoding.choose(path, len(data))
        stored = compress(enc, data) if enc else None
        if stored is None:
            enc, stored = None, data
        d = self.packer.add(stored)
        appended()
        ref: PackRef = await d
        self.stats.bytes_uploaded += len(stored)
        self.stats.bytes_compression_saved += len(data) - len(stored)
        log.log(NOISE, "packed: %r (%d bytes, stored %d)", path, len(data), len(stored))
        return Hit(ref.cap, sha, enc, ref.offset, ref.length)

    async def _put_file(self, fd: int, size: int, sha: bytes, path: bytes) -> Hit:
        enc = None if self._plain else self.settings.encoding.choose(path, size)
        if enc is not None:
            probe = os.pread(fd, 64 << 10, 0)
            if compress(enc, probe) is None:
                enc = None
        if enc is not None:
            try:
                tmp, length, got = await self._in_thread(_compress_to_temp, enc, fd, size, self.settings.tmpdir)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise _tmpdir_full(self.settings.tmpdir, err, path, "compressing") from None
            try:
                if length >= size * 0.9:
                    enc = None  # the probe was optimistic: store it raw
                else:
                    cap, enc, _ = await self._put_object(tmp, length, enc, path)
                    self.stats.bytes_uploaded += length
                    self.stats.bytes_compression_saved += size - length
                    log.log(NOISE, "uploaded: %r (%d bytes, stored %d, %s)", path, size, length, enc)
                    return Hit(cap, got, enc)
            finally:
                os.close(tmp)
        cap, enc, last = await self._put_object(fd, size, None, path)
        if last.hashed_to != size:
            raise LafsBackupError(f"an upload read {last.hashed_to} of {size} bytes")
        self.stats.bytes_uploaded += size
        log.log(NOISE, "uploaded: %r (%d bytes)", path, size)
        return Hit(cap, last.sha256.digest(), enc)

    async def _put_object(self, fd: int, size: int, enc: str | None, path: bytes) -> tuple[str, str | None, FileSlice]:
        """Upload ``size`` bytes of ``fd``; return the cap, the encoding and the last attempt's slice.

        When the grid refuses the upload as unhappy, it may be holding the
        shares of a cancelled earlier upload of the same bytes as "incoming"
        (Tahoe keeps them up to 30 minutes), so the object is uploaded again
        behind a random salt, under a new storage index.  A plain tree
        (packing off) must hold the exact bytes, so it cannot do that.
        """
        slices: list[FileSlice] = []

        def opener(prefix: bytes = b"") -> FileSlice:
            sl = FileSlice(fd, size, prefix)
            slices.append(sl)
            return sl

        label = _label(path)
        cap = await despite_unhappiness(lambda salt: self.gw.put_file(lambda: opener(salt or b""), label=label),
                                        self.gw, f"the upload of {label}", can_salt=not self._plain)
        return cap, (salted(enc) if slices[-1].salted else enc), slices[-1]

    async def _child(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child:
        child = self._child_now(e, st, hit, size)
        if child is None:  # the marker directory is not known yet
            await self._packed_marker()
            child = self._child_now(e, st, hit, size)
        assert child is not None
        return child

    def _child_now(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child | None:
        """The edge for a stored file (of ``size`` bytes, st_size by default); None if it needs the
        marker directory and that is unknown."""
        meta = edge_metadata(e, st.st_size if size is None else size, st.st_mtime_ns, st.st_ctime_ns,
                             hit.sha256.hex() if hit.sha256 else None)
        if hit.enc:
            meta["enc"] = hit.enc
        if hit.offset is not None:
            meta["pack"] = {"cap": hit.cap, "offset": hit.offset, "length": hit.length}
        elif hit.enc:
            meta["object"] = hit.cap
        else:
            return Child(e.name, hit.cap, meta)  # a plain filenode: exactly the file's bytes
        marker = self._marker_now()
        if marker is None:
            return None
        (self.packs_used if hit.offset is not None else self.encoded_used).add(hit.cap)
        return Child(e.name, marker, meta)

    def _marker_now(self) -> str | None:
        if isinstance(self._marker, str):
            return self._marker
        if self._marker is None:
            hit = self.cache.lookup(body_key(PACKED_MARKER_BODY), self.gen)
            if hit is not None:
                self._marker = hit.cap
                return hit.cap
        return None

    async def _packed_marker(self) -> str:
        """The cap every packed file's edge points to: a tiny directory saying how to restore it,
        so plain Tahoe tools show a directory there instead of wrong file contents."""
        if isinstance(self._marker, str):
            return self._marker
        if self._marker is None:
            shared = self._marker = _Shared()
            try:
                cap = await self._mkdir(PACKED_MARKER_BODY)
            except BaseException as err:
                self._marker = None
                shared.fail(err)
                raise
            self._marker = cap
            shared.fire(cap)
            return cap
        return str(await self._marker.wait())

    async def _directory(self, e: Entry, children: list[Deferred]) -> Child | _Failed | None:
        self.stats.dirs += 1
        waits = [c for c in children if isinstance(c, Deferred)]
        got = iter(await gatherResults(waits) if waits else [])
        results = [next(got) if isinstance(c, Deferred) else c for c in children]
        if any(r is _FAILED for r in results):
            return _FAILED
        if e.path:
            st = self._still(e, stat.S_ISDIR, "it is no longer a directory (replaced since the scan)")
            if st is None:
                return None
        body = dir_body(r for r in results if r is not None)
        cap = await self._mkdir(body, priority=-(e.path.count(b"/") + 1) if e.path else 0)
        if e.path:  # times as they are now, like the children's (entries may have gone since the scan)
            return Child(e.name, cap, edge_metadata(e, None, st.st_mtime_ns, st.st_ctime_ns))
        return Child(e.name, cap, edge_metadata(e))

    async def _mkdir(self, body: bytes, priority: float = 0.0) -> str:
        key = body_key(body)
        hit = self.cache.lookup(key, self.gen) if self.settings.mode != "force" else None
        if hit is not None:
            self.stats.dirs_unchanged += 1
            return hit.cap
        cap = await despite_unhappiness(
            lambda salt: self.gw.mkdir_immutable(salted_body(body, salt.hex()) if salt else body, priority),
            self.gw, "a directory")
        self.cache.store(key, cap, self.gen)
        self._confirmed()
        self.stats.dirs_new += 1
        return cap


class _Hold:
    """Bytes reserved from a :class:`Budget`, given back exactly once."""

    def __init__(self, budget: Budget, n: int) -> None:
        self._budget = budget
        self._n = n

    def release(self) -> None:
        if self._n:
            self._budget.give(self._n)
            self._n = 0


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


def _pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes from ``offset`` (fewer only at the end of the file)."""
    parts = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, size - pos, offset + pos)
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


class SourceChanged(Exception):
    """A source file changed under a read that must see it whole (an upload of its raw bytes)."""


def _private_copy(fd: int, size: int, tmpdir: str | None) -> int:
    """A copy of the first ``size`` bytes of ``fd`` (fewer if it shrank) in an unnamed temporary
    file: bytes that no longer change, to hash and upload.  Returns its fd."""
    tmp = os.open(tmpdir or tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        out = 0
        for chunk in _chunks(fd, size):
            view = memoryview(chunk)
            while view:
                n = os.pwrite(tmp, view, out)
                out += n
                view = view[n:]
        return tmp
    except BaseException:
        os.close(tmp)
        raise


def _tmpdir_full(tmpdir: str | None, err: OSError, path: bytes, doing: str) -> LocalError:
    """A full TMPDIR is not one file's fault: every later large file would fail the same way."""
    return LocalError(path=tmpdir or tempfile.gettempdir(), problem=(
        f"{err.strerror} ({doing} {_label(path)}). Free space there, or point TMPDIR at a larger disk"))


def _compress_to_temp(enc: str, fd: int, size: int, tmpdir: str | None) -> tuple[int, int, bytes]:
    """Compress a file into an unnamed temporary file: (its fd, its length, SHA-256 of what was read)."""
    from .encode import LZ4, XZ

    tmp = os.open(tmpdir or tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
    h = hashlib.sha256()
    if enc == LZ4:
        import lz4.frame

        comp: Any = lz4.frame.LZ4FrameCompressor()
        head = comp.begin()
    elif enc == XZ:
        import lzma

        comp = lzma.LZMACompressor(preset=6)
        head = b""
    else:
        raise ValueError(enc)
    out = 0

    def emit(data: bytes) -> None:
        nonlocal out
        view = memoryview(data)
        while view:  # a nearly full disk may take part of a write
            n = os.pwrite(tmp, view, out)
            out += n
            view = view[n:]

    try:
        emit(head)
        for chunk in _chunks(fd, size):
            h.update(chunk)
            emit(comp.compress(chunk))
        emit(comp.flush())
    except BaseException:
        os.close(tmp)
        raise
    return tmp, out, h.digest()


def _chunks(fd: int, size: int) -> Iterable[bytes]:
    """The first ``size`` bytes of ``fd`` (fewer if it shrank), in 1 MiB reads."""
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(1 << 20, size - pos), pos)
        if not chunk:
            return
        yield chunk
        pos += len(chunk)


def _sha256_fd(fd: int, size: int) -> bytes:
    h = hashlib.sha256()
    for chunk in _chunks(fd, size):
        h.update(chunk)
    return h.digest()


def _why(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a parent was replaced by a file
        return "it vanished since the scan"
    return err.strerror or str(err)


def _label(path: bytes) -> str:
    """A path as the manhole shows it next to an upload attempt."""
    return "/" + path.decode("utf-8", "backslashreplace") if path else "/"
