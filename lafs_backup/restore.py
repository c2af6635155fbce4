"""Restore: read a snapshot back from the grid into a target directory, never writing outside it."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from .errors import GatewayError, RestoreError, SnapshotError
from .gateway import Gateway
from .log import NOISE
from .report import Reporter
from .snapshot import BadSnapshot, Node, lit_data, mode_bits, parse_children, parse_root
from .entry import KIND_DIR, KIND_FILE, KIND_LINK

log = logging.getLogger(__name__)


@dataclass
class _DirFixup:
    path: bytes
    node: Node


@dataclass
class _State:
    fixups: list[_DirFixup] = field(default_factory=list)


class Restorer:
    """Restores one snapshot (or some of its subtrees) below ``target``."""

    def __init__(self, gateway: Gateway, reporter: Reporter, target: str, window: int = 64,
                 listings: int = 4) -> None:
        self.gw = gateway
        self.rep = reporter
        self.stats = reporter.stats
        self.target = os.fsencode(os.path.abspath(target))
        self._window = DeferredSemaphore(window)
        self._listings = DeferredSemaphore(listings)
        self._state = _State()

    async def run(self, snapshot_cap: str, paths: Sequence[bytes] = ()) -> None:
        try:
            tree = parse_root(await self.gw.get_json(snapshot_cap))
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))
        _make_target(self.target)
        if not paths:
            await self._restore_dir(tree, self.target)
        else:
            for p in paths:
                node, parents = await self._find(tree, p)
                dest = self.target
                for comp in parents:
                    dest = dest + b"/" + comp
                    _mkdir_plain(dest)
                dest = dest + b"/" + node.name
                if node.kind == KIND_DIR:
                    await self._restore_dir(node, dest)
                else:
                    await self._restore_leaf(node, dest)
        # Directories last, deepest first: their mtime is set after their children.
        for fix in reversed(self._state.fixups):
            self._apply_meta(fix.path, fix.node, is_dir=True)

    async def _find(self, tree: Node, rel: bytes) -> tuple[Node, list[bytes]]:
        comps = [c for c in rel.strip(b"/").split(b"/") if c not in (b"", b".")]
        if not comps or b".." in comps:
            raise RestoreError(problem=f"invalid path {os.fsdecode(rel)!r}")
        node = tree
        for i, comp in enumerate(comps):
            if node.kind != KIND_DIR:
                raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
            children = await self._list(node)
            match = [c for c in children if c.name == comp]
            if not match:
                raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
            node = match[0]
        return node, comps[:-1]

    async def _list(self, node: Node) -> list[Node]:
        try:
            return parse_children(await self.gw.get_json(node.cap))
        except BadSnapshot as e:
            raise SnapshotError(what="(given)", problem=str(e))

    async def _restore_dir(self, node: Node, dest: bytes) -> None:
        self.stats.dirs += 1
        try:
            _prepare_dir(dest)
        except OSError as e:
            self.rep.warn(self._rel(dest), f"cannot create directory: {e.strerror}")
            return
        self._state.fixups.append(_DirFixup(dest, node))
        waits: list[Deferred] = []
        await self._listings.acquire()
        try:
            children = await self._list(node)
            for child in children:
                path = dest + b"/" + child.name
                if child.kind == KIND_DIR:
                    waits.append(Deferred.fromCoroutine(self._restore_dir(child, path)))
                else:
                    await self._window.acquire()
                    waits.append(Deferred.fromCoroutine(self._windowed_leaf(child, path)))
        finally:
            self._listings.release()
        if waits:
            await gatherResults(waits, consumeErrors=True)

    async def _windowed_leaf(self, node: Node, dest: bytes) -> None:
        try:
            await self._restore_leaf(node, dest)
        finally:
            self._window.release()

    async def _restore_leaf(self, node: Node, dest: bytes) -> None:
        log.log(NOISE, "restoring %r", dest)
        try:
            _clear(dest)
        except OSError as e:
            self.rep.warn(self._rel(dest), f"cannot replace existing entry: {e.strerror}")
            return
        if node.kind == KIND_LINK:
            self.stats.symlinks += 1
            target = node.target
            if target is None:
                self.rep.warn(self._rel(dest), "symlink without a target; skipped")
                return
            try:
                os.symlink(target, dest)
            except OSError as e:
                self.rep.warn(self._rel(dest), f"cannot create symlink: {e.strerror}")
                return
            self._apply_meta(dest, node, is_dir=False)
            return
        self.stats.files += 1
        try:
            await self._download(node, dest)
        except GatewayError as e:
            self.rep.warn(self._rel(dest), f"cannot read from the grid: {e.reason or e}")
            return
        except OSError as e:
            self.rep.warn(self._rel(dest), f"cannot write: {e.strerror}")
            return
        self._apply_meta(dest, node, is_dir=False)

    async def _download(self, node: Node, dest: bytes) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            h = hashlib.sha256()
            written = 0
            data = lit_data(node.cap)
            if data is not None:
                os.write(fd, data)
                h.update(data)
                written = len(data)
            else:
                state = {"h": h, "n": 0}

                def restart() -> None:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    state["h"] = hashlib.sha256()
                    state["n"] = 0

                def sink(chunk: bytes) -> None:
                    view = memoryview(chunk)
                    while view:
                        k = os.write(fd, view)
                        view = view[k:]
                    state["h"].update(chunk)
                    state["n"] += len(chunk)

                await self.gw.download(node.cap, sink, restart)
                h, written = state["h"], state["n"]  # type: ignore[assignment]
            self.stats.bytes_written += written
            want = node.metadata.get("sha256")
            if isinstance(want, str) and want != h.hexdigest():  # type: ignore[union-attr]
                self.rep.warn(self._rel(dest), "content does not match the recorded SHA-256")
            size = node.metadata.get("size")
            if isinstance(size, int) and size != written:
                self.rep.warn(self._rel(dest), f"restored {written} bytes, expected {size}")
        finally:
            os.close(fd)

    def _apply_meta(self, path: bytes, node: Node, is_dir: bool) -> None:
        meta = node.metadata
        is_link = node.kind == KIND_LINK
        try:
            if not is_link:
                mode = node.mode
                os.chmod(path, mode_bits(mode, 0o755 if is_dir else 0o644))
            mtime = meta.get("mtime_ns")
            if isinstance(mtime, int):
                os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        except OSError as e:
            self.rep.warn(self._rel(path), f"cannot set mode or time: {e.strerror}")

    def _rel(self, path: bytes) -> bytes:
        return path[len(self.target) + 1:] if path.startswith(self.target + b"/") else path


def _make_target(target: bytes) -> None:
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        raise RestoreError(problem=f"cannot create target {os.fsdecode(target)}: {e.strerror}")
    if not os.path.isdir(target):
        raise RestoreError(problem=f"target {os.fsdecode(target)} is not a directory")


def _mkdir_plain(path: bytes) -> None:
    _prepare_dir(path)


def _prepare_dir(path: bytes) -> None:
    """Make ``path`` a real directory (not a symlink to one), replacing a file there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o700)
        return
    if stat.S_ISDIR(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
        return
    os.unlink(path)
    os.mkdir(path, 0o700)


def _clear(path: bytes) -> None:
    """Remove a non-directory at ``path`` so a leaf can be created there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "a directory is in the way")
    os.unlink(path)


def parse_paths(paths: Sequence[str]) -> list[bytes]:
    return [os.fsencode(p) for p in paths]


__all__ = ["Restorer", "parse_paths", "KIND_FILE"]
