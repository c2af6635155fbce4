"""What the stages are handed, as they use it: the reactor, the gateway client, the reporter and its
counters, typed on the ground floor so that every layer can name them without importing upward.

The real ones are ``grid/gateway.py``'s ``Gateway`` and ``report.py``'s ``Reporter`` and ``Stats``;
the unit tests hand in ``tests/fakes.py``'s.  Each protocol lists what callers use, no more.
"""

from __future__ import annotations

from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Collection, Mapping, Protocol, Sequence, TypeVar,
                    TypeVarTuple)

if TYPE_CHECKING:  # (for the type checker alone: the modules that import this one stay free of Twisted)
    import random

    from twisted.internet.interfaces import IReactorCore, IReactorFDSet, IReactorTCP, IReactorThreads, IReactorTime

    from .retry import RetryPolicy

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A value the web API answered as JSON (a directory listing, a check's results, the welcome
#: page): whatever the gateway sent, so its readers look into it with care.
JSON = Any


if TYPE_CHECKING:
    class Reactor(IReactorCore, IReactorTime, IReactorThreads, IReactorFDSet, IReactorTCP):
        """The reactor the CLI runs a command on, as the runtime hands it down: a make-believe
        interface for the type checker alone (as ``twisted.internet._IReactorCommon`` is for the
        global reactor), which no reactor declares; import it under ``TYPE_CHECKING``.  Code that
        needs one part of it takes that interface (``IReactorTime``...); a test's memory reactor,
        without threads, is told apart by ``IReactorThreads.providedBy``."""


class InThread(Protocol):
    """Runs blocking work off the reactor thread: ``await in_thread(fn, *args)`` is ``fn(*args)``
    (``engine.runtime.Runtime.in_thread``)."""

    def __call__(self, fn: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]: ...


class BodyFile(Protocol):
    """A request body the gateway reads, opened anew for each attempt and closed after it."""

    def read(self, n: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


class AttemptLike(Protocol):
    """One request attempt in flight, as the manhole's ``debug_timeouts`` lists and expires it."""

    @property
    def what(self) -> str: ...

    @property
    def started(self) -> float: ...

    def expire(self) -> None: ...


class GatewayLike(Protocol):
    """The web API client of one grid (``grid.gateway.Gateway``): requests, with their retries and
    timeouts, and the counters and state the commands and the manhole read."""

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def counts(self) -> Mapping[str, int]:
        """Requests sent, by kind ("put", "mkdir", "get"...), attempts included."""
        ...

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies handed to the gateway so far (failed attempts taken back)."""
        ...

    @property
    def inflight(self) -> Collection[AttemptLike]: ...

    def halt(self, why: BaseException) -> None: ...

    def resume(self) -> None: ...

    async def preflight(self) -> None: ...

    async def connected_servers(self) -> list[str]: ...

    async def put_file(self, opener: Callable[[], BodyFile], label: str | None = None) -> str: ...

    async def put_bytes(self, data: bytes, label: str | None = None, keep: bool = False) -> str: ...

    async def mkdir_immutable(self, body: bytes, priority: float = 0.0) -> str: ...

    async def mkdir_mutable(self) -> str: ...

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> JSON: ...

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> int: ...

    async def get_range(self, cap: str, offset: int, length: int) -> bytes: ...

    async def get_small(self, cap: str) -> bytes: ...

    async def check(self, cap: str, add_lease: bool = True, repair: bool = False, verify: bool = False) -> JSON: ...

    async def stream_deep_check(self, cap: str, sink: Callable[[bytes], None], add_lease: bool = True,
                                repair: bool = False, verify: bool = False) -> None: ...

    async def stream_manifest(self, cap: str, sink: Callable[[bytes], None]) -> None: ...

    async def link(self, dircap: str, name: str, cap: str) -> bool: ...

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, JSON]],
                           replace: bool = True) -> bool: ...

    async def unlink(self, dircap: str, name: str) -> bool: ...


class RunStats(Protocol):
    """The counters of one run that the store and phase two add to (``report.Stats``)."""

    entries_scanned: int
    entries_done: int
    files: int
    files_new: int
    files_changed: int
    files_unchanged: int
    files_uploaded: int
    files_deduplicated: int
    files_lit: int
    dirs: int
    dirs_new: int
    dirs_unchanged: int
    dirs_indexed: int
    symlinks: int
    specials: int
    bytes_done: int
    bytes_to_store: int
    bytes_read: int
    bytes_uploaded: int
    bytes_deduplicated: int
    bytes_compression_saved: int
    packs: int
    index_chunks: int
    index_chunks_new: int
    subtrees_kept: int
    entries_kept: int
    derived: int
    bytes_derived: int


class ReporterLike(Protocol):
    """What phase two tells the user (``report.Reporter``): per-entry warnings and problems, one-off
    notes, and the run's counters."""

    @property
    def stats(self) -> RunStats: ...

    def warn(self, path: bytes | str, message: str) -> None: ...

    def problem(self, path: bytes | str, message: str) -> None: ...

    def note_once(self, key: str, message: str) -> None: ...
