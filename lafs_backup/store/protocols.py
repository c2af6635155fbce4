"""What the store and phase two are handed, as they use it: the object cache, a file read by offset,
and the store itself (for the stages that write through it), typed here so that store/ and backup/
name them without importing db/ (which sits above them).

The real ones are ``db/objects.py``'s ``ObjectCache`` and ``store.py``'s ``Store`` and ``Writer``;
the unit tests hand in ``tests/fakes.py``'s ``FakeCache`` and fakes of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, Protocol, TypeVar, TypeVarTuple

from .snapshot import Hit

if TYPE_CHECKING:
    import os

    from ..protocols import GatewayLike
    from ..system.paths import LocalFile
    from .entry import Entry
    from .packer import Packer
    from .plan import Decision
    from .snapshot import Child
    from .store import StoreSettings

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ObjectCacheLike(Protocol):
    """The object cache as the store, the saver and a cache rebuild use it: rows by key, each
    recorded only once the gateway confirmed its cap, and the source paths stored before."""

    def lookup(self, key: bytes, generation: int) -> Hit | None: ...

    def lookup_many(self, keys: list[bytes], generation: int) -> dict[bytes, Hit]: ...

    def known_keys(self, keys: list[bytes]) -> set[bytes]: ...

    def store(self, key: bytes, cap: str, generation: int, sha256: bytes | None = None,
              enc: str | None = None, offset: int | None = None, length: int | None = None) -> None: ...

    def store_hit(self, key: bytes, hit: Hit, generation: int) -> None: ...

    def store_state(self, key: bytes, hit: Hit, generation: int) -> None: ...

    def commit(self) -> None: ...

    def saw_path(self, source: bytes, path: bytes) -> bool: ...

    def saw_paths(self, source: bytes, paths: list[bytes]) -> set[bytes]: ...

    def record_path(self, source: bytes, path: bytes, generation: int) -> None: ...


class ReadAt(Protocol):
    """A file read by offset (``backup.source.SourceFile``, ``system.paths.LocalFile``), so uploads
    and hashes never share a position."""

    def pread(self, n: int, offset: int) -> bytes: ...


class ChunkStore(Protocol):
    """What the indexer asks of the store: index chunks stored (each its cap, once the gateway
    confirmed it), and the settings (where records waiting for their turn spill)."""

    @property
    def settings(self) -> StoreSettings: ...

    async def index_chunk(self, raw: bytes) -> str: ...


class StoreLike(ChunkStore, Protocol):
    """The store as phase two writes a backup through it (``store.Store``): packs, contents shared
    within and across runs, directories, the edges of stored files, the snapshot's own objects."""

    @property
    def gw(self) -> GatewayLike: ...

    @property
    def packer(self) -> Packer: ...

    #: Told when committing fails (the uploader halts the run).
    on_fatal: Callable[[BaseException], None]

    def close(self) -> None: ...

    async def content(self, sha: bytes, size: int, known: Hit | None, store: Callable[[], Awaitable[Hit]],
                      on_wait: Callable[[], None] | None = None) -> Hit: ...

    def known_contents(self, shas: list[bytes]) -> dict[bytes, Hit]: ...

    async def member(self, data: bytes, sha: bytes, path: bytes, appended: Callable[[], None]) -> Hit: ...

    async def packed(self, stored: bytes, enc: str | None, size: int, sha: bytes, path: bytes,
                     appended: Callable[[], None] = ...) -> Hit: ...

    async def file(self, src: ReadAt, size: int, sha: bytes, path: bytes) -> Hit: ...

    async def blocking(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...

    async def hash(self, src: ReadAt, size: int) -> bytes: ...

    async def private_copy(self, src: ReadAt, size: int, path: bytes) -> LocalFile: ...

    async def symlink(self, target: bytes) -> str: ...

    def plan_directory(self, body: bytes) -> Decision: ...

    async def directory(self, body: bytes, priority: float = 0.0, path: bytes | None = None) -> str: ...

    def child_now(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child | None: ...

    async def child(self, e: Entry, st: os.stat_result, hit: Hit, size: int | None = None) -> Child: ...

    async def objects_dir(self) -> str | None: ...

    async def root(self, tree: Child, objects: str | None, index: list[str] | None = None) -> str: ...


class WriterLike(Protocol):
    """What a copy writes through (``store.Writer`` of the destination grid): each method returns
    the object's cap once the gateway confirmed it."""

    async def put_file(self, src: ReadAt, size: int, label: str, what: str, can_salt: bool = True) -> str: ...

    async def mkdir(self, body: bytes, priority: float = 0.0) -> str: ...

    async def index_chunk(self, raw: bytes) -> tuple[str, int]: ...
