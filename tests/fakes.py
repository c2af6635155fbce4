"""In-memory fakes of the gateway and the object cache, for fast unit tests of the core classes.

They are what they stand for to the type checker too (``lafs_backup.protocols.GatewayLike`` and
``lafs_backup.store.protocols.ObjectCacheLike``: see ``test_types.py``); what no unit test needs
of the gateway raises NotImplementedError.

They behave like the real ones where the core relies on it: caps are
content-derived (the same bytes give the same cap), a directory's cap names
its exact body, listings come back in the web API's shape, downloads can be
cut short and resumed.  They are never a substitute for the real grid: the
integration tests run against that.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from lafs_backup.caps import lit_cap, lit_data
from lafs_backup.errors import GatewayError
from lafs_backup.protocols import JSON, AttemptLike, BodyFile
from lafs_backup.retry import RetryPolicy
from lafs_backup.store.snapshot import Hit


def _b32(data: bytes, n: int) -> str:
    return base64.b32encode(hashlib.sha256(data).digest() * 2).decode().lower().rstrip("=")[:n]


class FakeGateway:
    """Stores objects in a dict.  ``fail`` maps (kind, call number) to an error to raise once:
    "unhappy" (UploadUnhappinessError), a status, or a callable returning an exception.
    ``hold`` makes uploads wait for :meth:`release` (to observe concurrency)."""

    def __init__(self, clock: IReactorTime | None = None, attempts: int = 3) -> None:
        import random

        from twisted.internet.task import Clock

        self.clock: IReactorTime = clock or Clock()
        self.retry = RetryPolicy(attempts, (1.0, 2.0), None, None)
        self.rng = random.Random(0)
        self.objects: dict[str, bytes] = {}
        self.dirs: dict[str, bytes] = {}
        self.counts: Counter[str] = Counter()
        #: Bytes of request bodies "sent" (before the answer: a held upload has sent its bytes).
        self.bytes_sent = 0
        self.fail: dict[tuple[str, int], Any] = {}
        self.halted: BaseException | None = None
        self.hold = False
        self.waiting: list[Deferred[None]] = []
        self.inflight: set[AttemptLike] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.priorities: list[float] = []
        self.ranges: list[int] = []
        #: Cut the next download of an object after this many bytes (a dropped connection).
        self.cut_download_at: int | None = None

    def halt(self, why: BaseException) -> None:
        self.halted = why

    def resume(self) -> None:
        self.halted = None

    async def preflight(self) -> None:
        pass

    async def connected_servers(self) -> list[str]:
        return ["fake"]

    def _maybe_fail(self, kind: str) -> None:
        self.counts[kind] += 1
        f = self.fail.pop((kind, self.counts[kind]), None)
        if f is None:
            return
        if f == "unhappy":
            raise GatewayError("PUT", "(fake)", 500, "allmydata.interfaces.UploadUnhappinessError: fake")
        if isinstance(f, int):
            raise GatewayError("PUT", "(fake)", f, "fake failure")
        raise f()

    async def _held(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold:
                d: Deferred[None] = Deferred()
                self.waiting.append(d)
                await d
        finally:
            self.in_flight -= 1

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def _file_cap(self, data: bytes) -> str:
        if len(data) <= 55:
            return lit_cap(data)
        cap = f"URI:CHK:{_b32(data, 26)}:{_b32(data + b'x', 52)}:2:3:{len(data)}"
        self.objects[cap] = data
        return cap

    async def put_bytes(self, data: bytes, label: str | None = None, keep: bool = False) -> str:
        self._maybe_fail("put")
        self.bytes_sent += len(data)
        await self._held()
        return self._file_cap(data)

    async def put_file(self, opener: Callable[[], BodyFile], label: str | None = None) -> str:
        self._maybe_fail("put")
        f = opener()
        data = b""
        while chunk := f.read(1 << 16):
            data += chunk
        f.close()
        self.bytes_sent += len(data)
        await self._held()
        return self._file_cap(data)

    async def mkdir_immutable(self, body: bytes, priority: float = 0.0) -> str:
        self._maybe_fail("mkdir")
        self.priorities.append(priority)
        self.bytes_sent += len(body)
        await self._held()
        if body in (b"{}", b""):
            return "URI:DIR2-LIT:"
        cap = f"URI:DIR2-CHK:{_b32(body, 26)}:{_b32(body + b'x', 52)}:2:3:{len(body)}"
        self.dirs[cap] = body
        return cap

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> JSON:
        self.counts["get"] += 1
        body = json.loads(self.dirs.get(cap, b"{}"))
        children = {}
        for name, (ntype, info) in body.items():
            child = dict(info)
            child.setdefault("metadata", {})
            children[name] = [ntype, child]
        return ["dirnode", {"ro_uri": cap, "children": children}]

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> int:
        self.counts["get"] += 1
        data = self.objects[cap]
        start = 0
        if self.cut_download_at is not None:  # the first attempt drops; the retry asks for the rest
            cut, self.cut_download_at = self.cut_download_at, None
            sink(data[:cut])
            start = cut
            self.ranges.append(cut)
        sink(data[start:])
        return len(data)

    async def get_range(self, cap: str, offset: int, length: int) -> bytes:
        self.counts["range"] += 1
        return self.objects[cap][offset:offset + length]

    async def get_small(self, cap: str) -> bytes:
        parts: list[bytes] = []
        await self.download(cap, parts.append, parts.clear)
        return b"".join(parts)

    # -- what no unit test asks of it ------------------------------------------------------------
    async def mkdir_mutable(self) -> str:
        raise NotImplementedError

    async def check(self, cap: str, add_lease: bool = True, repair: bool = False, verify: bool = False) -> JSON:
        raise NotImplementedError

    async def stream_deep_check(self, cap: str, sink: Callable[[bytes], None], add_lease: bool = True,
                                repair: bool = False, verify: bool = False) -> None:
        raise NotImplementedError

    async def stream_manifest(self, cap: str, sink: Callable[[bytes], None]) -> None:
        raise NotImplementedError

    async def link(self, dircap: str, name: str, cap: str) -> bool:
        raise NotImplementedError

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, JSON]],
                           replace: bool = True) -> bool:
        raise NotImplementedError

    async def unlink(self, dircap: str, name: str) -> bool:
        raise NotImplementedError


class FakeCache:
    """The object cache's interface (``db.objects.ObjectCache``, what the store and the uploader
    use) over dicts (no sqlite)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Hit] = {}
        self.paths: set[tuple[bytes, bytes]] = set()
        self.commits = 0

    def lookup(self, key: bytes, generation: int) -> Hit | None:
        return self.rows.get(key)

    def known_keys(self, keys: list[bytes]) -> set[bytes]:
        return {k for k in keys if k in self.rows}

    def lookup_many(self, keys: list[bytes], generation: int) -> dict[bytes, Hit]:
        return {k: self.rows[k] for k in keys if k in self.rows}

    def store(self, key: bytes, cap: str, generation: int, sha256: bytes | None = None, enc: str | None = None,
              offset: int | None = None, length: int | None = None) -> None:
        self.rows[key] = Hit(cap, sha256, enc, offset, length)

    def store_hit(self, key: bytes, hit: Hit, generation: int) -> None:
        self.rows[key] = hit

    def store_state(self, key: bytes, hit: Hit, generation: int) -> None:
        self.rows[key] = hit

    def commit(self) -> None:
        self.commits += 1

    def saw_path(self, source: bytes, path: bytes) -> bool:
        return (source, path) in self.paths

    def saw_paths(self, source: bytes, paths: list[bytes]) -> set[bytes]:
        return {p for p in paths if (source, p) in self.paths}

    def record_path(self, source: bytes, path: bytes, generation: int) -> None:
        self.paths.add((source, path))


__all__ = ["FakeGateway", "FakeCache", "lit_data"]
