"""The store: the only way an object reaches a grid (files, packs, directories, symlink objects, index
chunks, and a copy's objects on a second grid).

Its :class:`Writer` puts objects on one grid, and is the one way an upload
refused as unhappy is stored again (a random salt); it returns a cap only
once the gateway confirmed it.  The :class:`Store` writes a backup through
one: it owns packing and compression, shares one upload between identical
contents met in the same run, and records a cap in the entry cache only
after the gateway confirmed it, committing such rows in the reactor turn
that confirmed them, so a kill loses only the uploads in flight.  A copy to
a second grid writes through a :class:`Writer` of that grid.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Iterator, TypeVar, TypeVarTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater

from ..caps import LIT_MAX, lit_cap
from ..errors import GatewayError, LafsBackupError, LocalError
from ..log import NOISE
from ..protocols import GatewayLike, InThread, RunStats
from ..encoding import LZ4, XZ, EncodingRules
from .encode import SALT_LEN, SALT_MARK, Compressor, compress, member_form
from .entry import Entry
from . import index as snapshot_index
from .packer import Packer, PackRef
from . import plan
from .protocols import ObjectCacheLike, ReadAt
from ..system.paths import LocalFile
from .snapshot import (INDEX_TREE_MARKER_BODY, PACKED_MARKER_BODY, Child, Hit, blob_key, body_key, content_key,
                       dir_id, edge_metadata, index_body, index_key, objects_body, root_body, salted_body)

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class StoreSettings:
    """How objects are stored (from the configuration)."""

    pack_max_file_size: int = 1 << 20
    pack_target_size: int = 4 << 20
    #: Members a pack may hold before it is sealed (bounds the results held for it).
    pack_max_files: int = 2000
    encoding: EncodingRules = EncodingRules(None, 0)
    tmpdir: str | None = None
    #: stat, checksum, verify or force (force stores every object again).
    mode: str = "stat"
    #: Where the source's directories live: "index" (records of the snapshot index alone, named by
    #: ``snapshot.dir_id``) or "tahoe" (an immutable Tahoe directory each).
    tree: str = "tahoe"

    @property
    def tree_in_index(self) -> bool:
        return self.tree == "index"

    @property
    def plain(self) -> bool:
        """Packing off: every file a plain filenode of exactly its bytes (no pack, no encoding, no salt)."""
        return self.pack_max_file_size == 0


class SourceChanged(Exception):
    """A source file changed under a read that must see it whole (the upload of its raw bytes)."""


class Store:
    """Stores the objects of one backup in ``generation`` (see the module docstring).

    ``stats`` is the run's counters; ``clock`` schedules commits and retry
    waits (None: commit at once) and wakes the packer's uploads (None: on the
    gateway's clock); ``in_thread`` runs blocking work (hashing,
    compression) off the reactor; ``on_fatal`` is told when committing fails.
    """

    def __init__(self, gateway: GatewayLike, cache: ObjectCacheLike, generation: int, settings: StoreSettings,
                 stats: RunStats, clock: IReactorTime | None = None, in_thread: InThread | None = None,
                 on_fatal: Callable[[BaseException], None] = lambda e: None) -> None:
        self.gw = gateway
        self.cache = cache
        self.gen = generation
        self.settings = settings
        self.stats = stats
        self._clock = clock
        self._in_thread = in_thread
        #: Told when committing fails (the uploader halts the run).
        self.on_fatal = on_fatal
        #: Every object of the backup reaches the grid through it.
        self.writer = Writer(gateway)
        self.packer = Packer(self._put_pack, settings.pack_target_size, settings.pack_max_files,
                             clock if clock is not None else gateway.clock)
        self._uploading: dict[bytes, _Shared[Hit]] = {}
        #: The cap every packed file's edge points to in a tree of Tahoe directories: a tiny directory
        #: saying how to restore it, so plain Tahoe tools show a directory there, never wrong contents.
        self._marker = _MadeOnce(lambda: self._cached_dir(PACKED_MARKER_BODY),
                                 lambda: self._tahoe_directory(PACKED_MARKER_BODY))
        self._commit_call: IDelayedCall | None = None
        #: Every pack and encoded object the snapshot refers to, old ones included: linked from its root.
        self.packs_used: set[str] = set()
        self.encoded_used: set[str] = set()

    # -- commits ----------------------------------------------------------------------------
    def confirmed(self) -> None:
        """Rows for an upload the gateway confirmed: commit them in this reactor turn.

        A commit costs ~30 us, an upload tens of milliseconds, so one commit per
        turn (which gathers every member of a pack) loses nothing to a kill but
        the uploads in flight, and the rerun sends nothing twice.
        """
        if self._clock is None:
            self._commit()
        elif self._commit_call is None:
            self._commit_call = self._clock.callLater(0, self._commit)

    def _commit(self) -> None:
        self._commit_call = None
        try:
            self.cache.commit()
        except BaseException as e:  # CacheError: the file was damaged under us
            self.on_fatal(e)

    def close(self) -> None:
        """Stop committing (the caller commits or closes the cache itself)."""
        if self._commit_call is not None:
            self._commit_call.cancel()
            self._commit_call = None

    # -- content shared within the run and across runs --------------------------------------
    async def content(self, sha: bytes, size: int, known: Hit | None,
                      store: Callable[[], Awaitable[Hit]], on_wait: Callable[[], None] | None = None) -> Hit:
        """Where content ``sha`` is stored: ``known`` (its cache row, as the planner saw it), an
        identical store already under way in this run, or ``store()``, a new one.  The Hit's
        sha256 is what the stored bytes hold (another content if the file changed meanwhile)."""
        ckey = content_key(sha, self.settings.plain)
        if known is not None:
            self.stats.files_deduplicated += 1
            self.stats.bytes_deduplicated += size
            return known
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
            # A waiter may already have registered its own store under this key (the content it
            # wanted turned out different): that one is not ours to remove.
            if self._uploading.get(ckey) is shared:
                del self._uploading[ckey]
        if hit.sha256 == sha:
            self.cache.store_hit(ckey, hit, self.gen)
            self.confirmed()
        self.stats.files_uploaded += 1
        return hit

    def known_contents(self, shas: list[bytes]) -> dict[bytes, Hit]:
        """The cache row of each content of ``shas`` that has one, by SHA-256 (none in force mode:
        everything is stored again)."""
        if self.settings.mode == "force" or not shas:
            return {}
        keys = {content_key(sha, self.settings.plain): sha for sha in shas}
        return {keys[k]: hit for k, hit in self.cache.lookup_many(list(keys), self.gen).items()}

    # -- files ------------------------------------------------------------------------------
    async def member(self, data: bytes, sha: bytes, path: bytes, appended: Callable[[], None]) -> Hit:
        """Store a small file's bytes in a pack (compressed if the rules say so and it pays)."""
        enc, stored = member_form(self.settings.encoding, path, data)
        return await self.packed(stored, enc, len(data), sha, path, appended)

    async def packed(self, stored: bytes, enc: str | None, size: int, sha: bytes, path: bytes,
                     appended: Callable[[], None] = lambda: None) -> Hit:
        """Store a small file of ``size`` bytes, already encoded as ``stored`` (``member_form``), in
        a pack; ``appended()`` is called once it is in the open pack, before the upload."""
        d = self.packer.add(stored)
        appended()
        ref: PackRef = await d
        self.stats.bytes_uploaded += len(stored)
        self.stats.bytes_compression_saved += size - len(stored)
        log.log(NOISE, "packed: %r (%d bytes, stored %d)", path, size, len(stored))
        return Hit(ref.cap, sha, enc, ref.offset, ref.length)

    async def _put_pack(self, buf: bytes) -> str:
        return await self.writer.put_bytes(buf, "a pack")  # (members are addressed by offset)

    async def file(self, src: ReadAt, size: int, sha: bytes, path: bytes) -> Hit:
        """Store a large file read from ``src`` (a :class:`~..backup.source.SourceFile`) as its own
        object: compressed into a temporary file when that pays, else its raw bytes.

        Raises :class:`SourceChanged` when the file shrinks under the raw upload.
        """
        plain = self.settings.plain
        enc = None if plain else self.settings.encoding.choose(path, size)
        if enc is not None and compress(enc, src.pread(64 << 10, 0)) is None:
            enc = None
        if enc is not None:
            tmp, length, got = await self.blocking(_compress_to_temp, enc, src, size, self.settings.tmpdir, path)
            try:
                if length < size * 0.9:
                    cap = await self._put_object(LocalFile(tmp), length, path)
                    self.stats.bytes_uploaded += length
                    self.stats.bytes_compression_saved += size - length
                    log.log(NOISE, "uploaded: %r (%d bytes, stored %d, %s)", path, size, length, enc)
                    return Hit(cap, got, enc)
            finally:
                os.close(tmp)
        slices: list[_FileSlice] = []
        cap = await self._put_object(src, size, path, slices)
        last = slices[-1]
        if last.hashed_to != size:
            raise LafsBackupError(f"an upload read {last.hashed_to} of {size} bytes")
        self.stats.bytes_uploaded += size
        log.log(NOISE, "uploaded: %r (%d bytes)", path, size)
        return Hit(cap, last.sha256.digest(), None)

    async def _put_object(self, src: ReadAt, size: int, path: bytes, slices: list[_FileSlice] | None = None) -> str:
        """Upload ``size`` bytes of ``src`` (a plain filenode is exactly its bytes: never salted)."""
        label = _label(path)
        return await self.writer.put_file(src, size, label, f"the upload of {label}", not self.settings.plain, slices)

    async def blocking(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` off the reactor thread (inline when the store was given no thread runner)."""
        if self._in_thread is None:
            return fn(*args)
        return await self._in_thread(fn, *args)

    async def hash(self, src: ReadAt, size: int) -> bytes:
        """SHA-256 of the first ``size`` bytes of ``src``, off the reactor thread."""
        return await self.blocking(_sha256, src, size)

    async def private_copy(self, src: ReadAt, size: int, path: bytes) -> LocalFile:
        """A copy of a changing file in an unnamed temporary file: bytes that stay put."""
        fd = await self.blocking(_copy_to_temp, src, size, self.settings.tmpdir, path)
        return LocalFile(fd)

    # -- symlinks and directories ------------------------------------------------------------
    async def symlink(self, target: bytes) -> str:
        """The cap a symlink's edge points to: its target, as a LIT cap or an object (only the
        target in the metadata is ever read back)."""
        if len(target) <= LIT_MAX:
            return lit_cap(target)
        if self.settings.tree_in_index:
            return lit_cap(b"")  # (no Tahoe directory links it: the metadata is all there is)
        key = blob_key(target)
        hit = self.cache.lookup(key, self.gen) if self.settings.mode != "force" else None
        if hit is not None:
            return hit.cap
        cap = await self.writer.put_bytes(target, "a symlink target")  # (only read back from the metadata)
        self.cache.store(key, cap, self.gen)
        self.confirmed()
        return cap

    def plan_directory(self, body: bytes) -> "plan.Decision":
        """The planner's decision for a source directory of this exact body (names, caps, metadata)."""
        if self.settings.tree_in_index:
            return plan.in_index(dir_id(body))
        known = self.cache.lookup(body_key(body), self.gen) if self.settings.mode != "force" else None
        return plan.for_directory(known, self.settings.mode)

    async def directory(self, body: bytes, priority: float = 0.0, path: bytes | None = None) -> str:
        """The cap of a source directory with this exact body: made unless already stored, or its
        name in the index (``tree_in_index``: the index records it, nothing goes to the grid)."""
        if self.settings.tree_in_index:
            self.stats.dirs_indexed += 1
            return dir_id(body)
        return await self._tahoe_directory(body, priority, path)

    async def _tahoe_directory(self, body: bytes, priority: float = 0.0, path: bytes | None = None) -> str:
        """The cap of an immutable Tahoe directory with this exact body, made unless already stored."""
        known = self.cache.lookup(body_key(body), self.gen) if self.settings.mode != "force" else None
        d = plan.for_directory(known, self.settings.mode)
        if path is not None:
            log.debug("%s: %r", d, path)
        if d.hit is not None:
            self.stats.dirs_unchanged += 1
            return d.hit.cap
        cap = await self.writer.mkdir(body, priority)
        self.cache.store(body_key(body), cap, self.gen)
        self.confirmed()
        self.stats.dirs_new += 1
        return cap

    # -- the edges of stored files -------------------------------------------------------------
    def child_now(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child | None:
        """The edge for a stored file (of ``size`` bytes, st_size by default); None if it needs
        the marker directory and that is not known yet (see :meth:`child`)."""
        meta = edge_metadata(e, st.st_size if size is None else size, st.st_mtime_ns, st.st_ctime_ns,
                             hit.sha256.hex() if hit.sha256 else None)
        if hit.enc:
            meta["enc"] = hit.enc
        if hit.offset is not None:
            meta["pack"] = {"cap": hit.cap, "offset": hit.offset, "length": hit.length}
        elif hit.enc:
            meta["object"] = hit.cap
        else:
            if self.settings.tree_in_index and not hit.cap.startswith("URI:LIT:"):
                self.encoded_used.add(hit.cap)  # (linked from the objects directory, for its leases)
            return Child(e.name, hit.cap, meta)  # a plain filenode: exactly the file's bytes
        if self.settings.tree_in_index:  # (no Tahoe directory links it: no marker needed)
            (self.packs_used if hit.offset is not None else self.encoded_used).add(hit.cap)
            return Child(e.name, lit_cap(b""), meta)
        marker = self._marker.now()
        if marker is None:
            return None
        (self.packs_used if hit.offset is not None else self.encoded_used).add(hit.cap)
        return Child(e.name, marker, meta)

    async def child(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child:
        found = self.child_now(e, st, hit, size)
        if found is None:
            await self._marker.get()
            found = self.child_now(e, st, hit, size)
        assert found is not None
        return found

    async def pointer(self) -> str:
        """Where a derived file's edge points: an empty LIT cap (tree in the index), else the marker."""
        return lit_cap(b"") if self.settings.tree_in_index else await self._marker.get()

    def _cached_dir(self, body: bytes) -> str | None:
        hit = self.cache.lookup(body_key(body), self.gen)
        return hit.cap if hit is not None else None

    # -- the snapshot's own objects -----------------------------------------------------------------
    async def objects_dir(self) -> str | None:
        """The directory linking every pack and encoded object the snapshot uses (None: none)."""
        if not (self.packs_used or self.encoded_used):
            return None
        return await self._tahoe_directory(objects_body(self.packs_used, self.encoded_used))

    async def index_chunk(self, raw: bytes) -> str:
        """The cap of an index chunk (``raw``: its uncompressed bytes), stored unless known."""
        key = index_key(raw)
        self.stats.index_chunks += 1
        hit = self.cache.lookup(key, self.gen) if self.settings.mode != "force" else None
        if hit is not None:
            return hit.cap
        cap, stored = await self.writer.index_chunk(raw)
        self.cache.store(key, cap, self.gen)
        self.confirmed()
        self.stats.bytes_uploaded += stored
        self.stats.index_chunks_new += 1
        return cap

    async def root(self, tree: Child, objects: str | None, index: list[str] | None = None) -> str:
        """Seal the last pack and make the snapshot's root (with an index directory linking the
        chunks ``index``, if given); returns the snapshot cap."""
        await self.packer.flush()
        self.stats.packs = self.packer.packs_uploaded
        marker = None
        if self.settings.tree_in_index:
            if not index:
                raise LafsBackupError("the snapshot index, which holds its directories, could not be made")
            marker = await self._tahoe_directory(INDEX_TREE_MARKER_BODY)
        index_dir = await self._tahoe_directory(index_body(index)) if index else None
        return await self._tahoe_directory(root_body(tree, objects, index_dir, marker))


class Writer:
    """Puts objects on one grid, through its gateway client ``gw``: for the store, and for a copy to a
    second grid.  Each method returns the object's cap once the gateway confirmed it (the caller
    records it then, never before), storing it again under a salt as :func:`despite_unhappiness`
    says when the grid refuses it as unhappy; it raises :class:`GatewayError` when it cannot.
    """

    def __init__(self, gw: GatewayLike) -> None:
        self.gw = gw

    async def put_bytes(self, data: bytes, what: str, keep: bool = False) -> str:
        """``data`` as an immutable file.  Its bytes are read back by offset or length (a pack's
        members, a compressed frame, an index chunk) or not at all, so a salt after them changes
        nothing for a reader.  ``what`` names it in the log; ``keep``: the gateway keeps a local
        copy (an index chunk, read again by the next backup and by every read command)."""
        return await despite_unhappiness(
            self.gw, lambda salt: self.gw.put_bytes(data + SALT_MARK + salt if salt else data, keep=keep), what)

    async def put_file(self, src: ReadAt, size: int, label: str, what: str, can_salt: bool = True,
                       slices: list[_FileSlice] | None = None) -> str:
        """The first ``size`` bytes of ``src`` (a file read by offset: ``pread``) as an immutable
        file, each attempt through a fresh view of it (listed in ``slices``: the last one hashed what
        was sent).  ``can_salt`` False: an object that must hold exactly these bytes (a plain
        filenode).  Raises :class:`SourceChanged` when ``src`` shrinks under the upload."""
        seen = slices if slices is not None else []

        def opener(salt: bytes | None) -> _FileSlice:
            view = _FileSlice(src, size, SALT_MARK + salt if salt else b"")
            seen.append(view)
            return view

        return await despite_unhappiness(
            self.gw, lambda salt: self.gw.put_file(lambda: opener(salt), label=label), what, can_salt)

    async def mkdir(self, body: bytes, priority: float = 0.0) -> str:
        """An immutable directory of this exact ``body`` (a salt goes in a key no reader reads, see
        ``snapshot.salted_body``); ``priority``: lower goes first when requests queue for a slot."""
        return await despite_unhappiness(
            self.gw, lambda salt: self.gw.mkdir_immutable(salted_body(body, salt.hex()) if salt else body, priority),
            "a directory")

    async def index_chunk(self, raw: bytes) -> tuple[str, int]:
        """An index chunk (``raw``: its uncompressed bytes), stored compressed: its cap, and the
        length stored."""
        stored = snapshot_index.compress(raw)
        return await self.put_bytes(stored, "an index chunk", keep=True), len(stored)


async def despite_unhappiness(gw: GatewayLike, put: Callable[[bytes | None], Awaitable[str]], what: str,
                              can_salt: bool = True) -> str:
    """``put(salt)`` stores an object through the gateway ``gw`` (``salt`` None: exactly as it is) and
    returns its cap: the one way an object refused as unhappy is stored again (every
    :class:`Writer` method goes through it).

    When the grid refuses it as unhappy although servers are up, they
    usually still hold an interrupted upload's shares of the same bytes as
    "incoming" (Tahoe keeps them up to 30 minutes): the same object under
    a random salt has another storage index, so it is stored again at once
    with one.  Further refusals (servers really missing) wait the retry
    policy's delays, each try under a new salt, until its attempts are
    spent.  ``can_salt`` False (an object that must hold exact bytes)
    only waits and retries.
    """
    attempt = 0
    while True:
        attempt += 1
        salt = os.urandom(SALT_LEN) if can_salt and attempt > 1 else None
        try:
            return await put(salt)
        except GatewayError as e:
            if not e.unhappy or attempt >= gw.retry.attempts:
                raise
        if attempt == 1 and can_salt:
            log.info("%s was refused as unhappy; storing it again under a salt", what)
            continue
        delay = gw.retry.delay(attempt - (1 if can_salt else 0)) * gw.rng.uniform(0.7, 1.3)
        log.info("%s was refused as unhappy; trying again in %.1fs", what, delay)
        await deferLater(gw.clock, delay, lambda: None)


class _MadeOnce:
    """An object made at most once however many ask for it at the same time: ``known()`` if it
    gives a cap (the entry cache's row), else ``make()`` (a failure lets the next asker try again)."""

    def __init__(self, known: Callable[[], str | None], make: Callable[[], Awaitable[str]]) -> None:
        self._known = known
        self._make = make
        self._state: _Shared[str] | str | None = None

    def now(self) -> str | None:
        if isinstance(self._state, str):
            return self._state
        if self._state is None:
            cap = self._known()
            if cap is not None:
                self._state = cap
            return cap
        return None

    async def get(self) -> str:
        if isinstance(self._state, str):
            return self._state
        if self._state is None:
            shared: _Shared[str] = _Shared()
            self._state = shared
            try:
                cap = await self._make()
            except BaseException as err:
                self._state = None
                shared.fail(err)
                raise
            self._state = cap
            shared.fire(cap)
            return cap
        return str(await self._state.wait())


class _Shared(Generic[T]):
    """The outcome of one upload, awaited by any number of identical-content waiters."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[T]] = []

    def wait(self) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result: T) -> None:
        for d in self._waiters:
            d.callback(result)

    def fail(self, err: BaseException) -> None:
        for d in self._waiters:
            d.errback(err)


class _FileSlice(io.RawIOBase):
    """A read-only view of a source file with its own position, hashing what it reads.

    Each upload attempt gets a fresh slice, so a cancelled attempt can never
    move the position of the next one.  ``suffix`` bytes (a salt) come after
    the file's bytes and are not hashed.  Closing it leaves the file open.
    """

    def __init__(self, src: ReadAt, size: int, suffix: bytes = b"") -> None:
        self._src = src
        self._size = size
        self._suffix = suffix
        self._total = size + len(suffix)
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
        base = {0: 0, 1: self._pos, 2: self._total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._total - self._pos)
        n = min(n, max(0, self._total - self._pos))
        if n == 0:
            return b""
        if self._pos >= self._size:
            at = self._pos - self._size
            data = self._suffix[at:at + n]
            self._pos += len(data)
            return data
        want = min(n, self._size - self._pos)
        data = _read_exactly(self._src, want, self._pos)
        if len(data) < want:  # the file shrank under the upload: its body would come up short
            raise SourceChanged(f"the file shrank to {self._pos + len(data)} bytes while it was uploaded")
        if self._pos == self.hashed_to:
            self.sha256.update(data)
            self.hashed_to += len(data)
        self._pos += len(data)
        return data


def _read_exactly(src: ReadAt, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes from ``offset`` (fewer only at the end of the file)."""
    parts = []
    got = 0
    while got < n:
        chunk = src.pread(n - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _chunks(src: ReadAt, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``src`` (fewer if it shrank), in 1 MiB reads."""
    pos = 0
    while pos < size:
        chunk = src.pread(min(1 << 20, size - pos), pos)
        if not chunk:
            return
        yield chunk
        pos += len(chunk)


def _sha256(src: ReadAt, size: int) -> bytes:
    h = hashlib.sha256()
    for chunk in _chunks(src, size):
        h.update(chunk)
    return h.digest()


def temp_file(tmpdir: str | None) -> int:
    """A new unnamed temporary file (mode 0600) in ``tmpdir`` or TMPDIR: its fd."""
    return os.open(tmpdir or tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)


def write_all(fd: int, data: bytes, at: int) -> int:
    """Write all of ``data`` at ``at`` (a nearly full disk may take part of a write); the length."""
    view = memoryview(data)
    start = at
    while view:  # a nearly full disk may take part of a write
        n = os.pwrite(fd, view, at)
        at += n
        view = view[n:]
    return at - start


def full_error(tmpdir: str | None, err: OSError, path: bytes, doing: str) -> LocalError:
    """A full TMPDIR is not one file's fault: every later large file would fail the same way."""
    return LocalError(path=tmpdir or tempfile.gettempdir(), problem=(
        f"{err.strerror} ({doing} {_label(path)}). Free space there, or point TMPDIR at a larger disk"))


def _into_temp(tmpdir: str | None, path: bytes, doing: str, chunks: Iterator[bytes]) -> tuple[int, int]:
    """Write ``chunks`` into a new unnamed temporary file: (its fd, its length).  A full disk is
    an error naming TMPDIR; on any error the file is gone."""
    tmp = temp_file(tmpdir)
    try:
        out = 0
        for chunk in chunks:
            out += write_all(tmp, chunk, out)
        return tmp, out
    except BaseException as err:
        os.close(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise full_error(tmpdir, err, path, doing) from None
        raise


def _copy_to_temp(src: ReadAt, size: int, tmpdir: str | None, path: bytes) -> int:
    """Copy the first ``size`` bytes of ``src`` (fewer if it shrank) into an unnamed temporary file."""
    return _into_temp(tmpdir, path, "copying", _chunks(src, size))[0]


def _compress_to_temp(enc: str, src: ReadAt, size: int, tmpdir: str | None, path: bytes) -> tuple[int, int, bytes]:
    """Compress a file into an unnamed temporary file: (its fd, its length, SHA-256 of what was read)."""
    if enc == LZ4:
        import lz4.frame

        frame = lz4.frame.LZ4FrameCompressor()
        head = frame.begin()
        comp: Compressor = frame
    elif enc == XZ:
        import lzma

        comp = lzma.LZMACompressor(preset=6)
        head = b""
    else:
        raise ValueError(enc)
    h = hashlib.sha256()

    def compressed() -> Iterator[bytes]:
        yield head
        for chunk in _chunks(src, size):
            h.update(chunk)
            yield comp.compress(chunk)
        yield comp.flush()

    tmp, out = _into_temp(tmpdir, path, "compressing", compressed())
    return tmp, out, h.digest()


def _label(path: bytes) -> str:
    """A path as the manhole shows it next to an upload attempt."""
    return "/" + path.decode("utf-8", "backslashreplace") if path else "/"
