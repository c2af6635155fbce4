"""Restoring into an fsspec URL (a bucket, a container, any fsspec file system) instead of a local directory.

Each file is read through the reader (decoded, its SHA-256 checked), spooled
to a private temporary file, and only then written to its key, so a key
never holds content that failed its check.  Object stores keep bytes only:
directories become key prefixes (made where the file system has real
directories), and modes, owners and times are not applied; symlinks and
special files cannot be represented and are reported, not restored.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import IO, Any, Callable, Sequence, TypeVar, TypeVarTuple

from ..errors import GatewayError, RestoreError, UsageError
from ..protocols import InThread
from ..system.fsspec_fs import open_url
from ..report import Reporter
from ..store.entry import KIND_DIR, KIND_FILE
from .browse import Browser, Item
from .reader import Reader

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class RemoteRestorer:
    """Restores a snapshot (or some of its subtrees) below an fsspec URL."""

    def __init__(self, reader: Reader, reporter: Reporter, url: str, storage_options: dict[str, Any] | None = None,
                 spool_dir: str | None = None, in_thread: InThread | None = None) -> None:
        """``in_thread(fn, *args)`` runs the store's blocking calls off the reactor thread."""
        self.reader = reader
        self.rep = reporter
        self.stats = reporter.stats
        try:
            opened = open_url(url, storage_options, "restore into")
        except UsageError as e:
            raise RestoreError(problem=e.message) from None
        self.fs, self.root, self._scrub = opened.fs, opened.root, opened.scrub
        self.url = opened.label  # (without credentials)
        self.browser = Browser(reader, remember=64)
        self._spool_dir = spool_dir
        self._in_thread = in_thread

    async def run(self, snapshot_cap: str, paths: Sequence[bytes] = ()) -> None:
        top = await self.browser.root(snapshot_cap)
        self.rep.note_once("remote-target", f"restoring into {self.url}: file contents only (an object store "
                                            "keeps no modes, owners or times; symlinks and special files are "
                                            "reported, not restored)")
        tops = [top] if not paths else [await self.browser.lookup(snapshot_cap, p) for p in paths]
        for item in tops:
            if item.kind == KIND_DIR:
                self._mkdir(item.path)
                async for child in self.browser.walk(item):
                    await self._one(child)
            else:
                await self._one(item)

    async def _blocking(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return fn(*args) if self._in_thread is None else await self._in_thread(fn, *args)

    def _write(self, spool: IO[bytes], key: str) -> int | None:
        """Copy the checked spool to ``key`` (blocking); the size the store then reports."""
        spool.seek(0)
        with self.fs.open(key, "wb") as out:
            while chunk := spool.read(1 << 20):
                out.write(chunk)
        self.fs.invalidate_cache(key)
        return self.fs.info(key).get("size")

    def _key(self, rel: bytes) -> str:
        return self.root + "/" + os.fsdecode(rel) if rel else self.root

    def _mkdir(self, rel: bytes) -> None:
        self.stats.dirs += 1
        try:
            self.fs.makedirs(self._key(rel), exist_ok=True)  # (no request on an object store)
        except Exception:
            pass  # an object store has no directories: the keys below make the prefix

    async def _one(self, item: Item) -> None:
        rel = item.path
        if item.kind == KIND_DIR:
            self._mkdir(rel)
            return
        if item.kind != KIND_FILE:
            self.rep.warn(rel, f"a {item.json()['type']} cannot be restored into {self.url.partition('://')[0]}://; "
                               "skipped")
            return
        self.stats.files += 1
        with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
            def restart() -> None:
                spool.seek(0)
                spool.truncate()

            try:
                got = await self.reader.content(item.node, spool.write, restart)
            except GatewayError as e:
                self.rep.warn(rel, f"cannot read from the grid: {e.reason or e}")
                return
            if got.matches is False:
                self.rep.problem(rel, f"{got.mismatch}; not restored")
                return
            try:
                stored = await self._blocking(self._write, spool, self._key(rel))
            except Exception as e:  # OSError, or the store's own error: one warning, never a traceback
                self.rep.warn(rel, f"cannot write to {self.url}: {self._scrub(getattr(e, 'strerror', None) or str(e))}")
                return
            if stored != got.size:  # a store that took a short body must not pass for a restore
                self.rep.problem(rel, f"the store holds {stored} bytes of it, {got.size} were written")
                return
            self.stats.bytes_written += got.size
