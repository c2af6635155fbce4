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
from typing import Any, Sequence

from ..errors import GatewayError, RestoreError
from ..report import Reporter
from ..store.entry import KIND_DIR, KIND_FILE
from .browse import Browser, Item
from .reader import Reader

log = logging.getLogger(__name__)


def open_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec file system and the root path a URL names; :class:`RestoreError` (never naming a
    credential) when its protocol is not installed or the options are refused."""
    try:
        import fsspec.core
    except ImportError:
        raise RestoreError(problem=f"{url.partition('://')[0]}:// targets need fsspec: pip install "
                                   "'lafs-backup[s3]' (or [azure])") from None
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as e:
        raise RestoreError(problem=f"cannot use {url}: {type(e).__name__}: {e}") from None
    return fs, root.rstrip("/")


class RemoteRestorer:
    """Restores a snapshot (or some of its subtrees) below an fsspec URL."""

    def __init__(self, reader: Reader, reporter: Reporter, url: str, storage_options: dict[str, Any] | None = None,
                 spool_dir: str | None = None) -> None:
        self.reader = reader
        self.rep = reporter
        self.stats = reporter.stats
        self.url = url
        self.fs, self.root = open_fs(url, storage_options)
        self.browser = Browser(reader)
        self._spool_dir = spool_dir

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

    def _key(self, rel: bytes) -> str:
        return self.root + "/" + os.fsdecode(rel) if rel else self.root

    def _mkdir(self, rel: bytes) -> None:
        self.stats.dirs += 1
        try:
            self.fs.makedirs(self._key(rel), exist_ok=True)
        except (OSError, NotImplementedError):
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
            spool.seek(0)
            try:
                with self.fs.open(self._key(rel), "wb") as out:
                    while chunk := spool.read(1 << 20):
                        out.write(chunk)
                stored = self.fs.info(self._key(rel)).get("size")
            except (OSError, ValueError) as e:
                self.rep.warn(rel, f"cannot write to {self.url}: {getattr(e, 'strerror', None) or e}")
                return
            if stored != got.size:  # a store that took a short body must not pass for a restore
                self.rep.problem(rel, f"the store holds {stored} bytes of it, {got.size} were written")
                return
            self.stats.bytes_written += got.size
