"""Diff: what changed between two snapshots, or between a snapshot and the live source (pure comparison, I/O walkers)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from ..filters import Filter
from ..names import shown
from ..store.entry import KIND_DIR, Entry, kind_of
from ..store.snapshot import Node, edge_metadata
from ..system.meta import Capturer
from ..system.sparse import EXTENTS, holds
from .reader import Reader

#: Metadata keys compared, and the word each difference is reported as.
_ASPECTS = (
    ("type", "type"), ("mode", "mode"), ("uid", "owner"), ("gid", "owner"), ("mtime_ns", "mtime"),
    ("target", "link target"), ("acl", "ACL"), ("default_acl", "ACL"), ("xattrs", "xattr"),
    ("caps", "capabilities"), ("rdev", "device"),
)


@dataclass(frozen=True)
class Change:
    """One difference: ``what`` is '+' (added), '-' (removed) or 'M' (modified, with ``aspects``)."""

    what: str
    path: str
    aspects: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        kind = {"+": "added", "-": "removed", "M": "changed"}[self.what]
        return {"type": kind, "path": self.path, "changed": list(self.aspects)}

    def line(self) -> str:
        return f"{self.what} {self.path}" + (f" ({', '.join(self.aspects)})" if self.aspects else "")


def compare_meta(a: Mapping[str, Any], b: Mapping[str, Any], content_differs: bool | None) -> tuple[str, ...]:
    """The aspects in which two entries differ (pure).

    ``content_differs`` is decided by the caller (hashes, sizes); None when
    content is not comparable (directories, special files).
    """
    out: list[str] = []
    if content_differs:
        out.append("content")
    for key, word in _ASPECTS:
        if a.get(key) != b.get(key) and word not in out:
            out.append(word)
    return tuple(out)


#: :func:`by_stat`'s answer when only the content's hash can tell.
HASH = "hash"


def by_stat(recorded: Mapping[str, Any], live: Mapping[str, Any]) -> bool | str | None:
    """Whether a live file's content differs from the recorded one, as far as its stat tells (pure):
    True (its size differs), False (size and mtime as recorded), :data:`HASH` (same size, another
    mtime: hash it), None (not two files)."""
    if recorded.get("type") != "file" or live.get("type") != "file":
        return None
    if live.get("size") != recorded.get("size"):
        return True
    return HASH if live.get("mtime_ns") != recorded.get("mtime_ns") else False


def _content_differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    if a.get("type") != "file" or b.get("type") != "file":
        return None
    if a.get("size") != b.get("size"):
        return True
    if a.get(EXTENTS) != b.get(EXTENTS):
        # The same data laid out otherwise is other content (a sparse file and its dense copy are
        # told apart only by reading them: counted as changed).
        return True
    sa, sb = a.get("sha256"), b.get("sha256")
    return sa != sb if sa and sb else None


class SnapshotDiff:
    """Walks two snapshots side by side; an identical directory cap means an identical subtree."""

    def __init__(self, reader: Reader, emit: Callable[[Change], None]) -> None:
        self.reader = reader
        self.emit = emit

    async def run(self, cap_a: str, cap_b: str) -> None:
        a, _ = await self.reader.root(cap_a)
        b, _ = await self.reader.root(cap_b)
        aspects = compare_meta(a.metadata, b.metadata, None)
        if aspects:
            self.emit(Change("M", "/", aspects))
        await self._dirs(a, b, "")

    async def _list(self, node: Node) -> dict[bytes, Node]:
        return {n.name: n for n in await self.reader.children(node)}

    async def _dirs(self, a: Node, b: Node, path: str) -> None:
        if a.cap == b.cap:
            return  # immutable and convergent: the same cap is the same subtree, metadata included
        la, lb = await self._list(a), await self._list(b)
        for name in sorted(set(la) | set(lb)):
            p = f"{path}/{shown(name)}"
            na, nb = la.get(name), lb.get(name)
            if nb is None:
                self.emit(Change("-", p))
            elif na is None:
                self.emit(Change("+", p))
            else:
                aspects = compare_meta(na.metadata, nb.metadata, _content_differs(na.metadata, nb.metadata))
                if aspects:
                    self.emit(Change("M", p, aspects))
                if na.kind == KIND_DIR and nb.kind == KIND_DIR:
                    await self._dirs(na, nb, p)


class LiveDiff:
    """Walks a snapshot and the live source side by side.

    A file's content counts as changed when its size differs, or when its
    mtime differs and its SHA-256 (read now) differs from the recorded one.
    """

    def __init__(self, reader: Reader, source: bytes, emit: Callable[[Change], None],
                 flt: Filter | None = None) -> None:
        self.reader = reader
        self.source = source
        self.emit = emit
        self._capture = Capturer(lambda k, m: None)
        #: The backup's filter rules: what they exclude is not part of the source as a backup sees it.
        self._filter = flt

    async def run(self, cap: str) -> None:
        tree, _ = await self.reader.root(cap)
        live = self._meta(b"", self.source)
        aspects = compare_meta(tree.metadata, live, None)
        if aspects:
            self.emit(Change("M", "/", aspects))
        await self._dirs(tree, b"")

    def _meta(self, rel: bytes, path: bytes) -> dict[str, Any]:
        st = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        extras, _ = self._capture.extras(path, st)
        e = Entry.from_stat(rel, st, target, tuple(extras))
        return edge_metadata(e)

    async def _dirs(self, node: Node, rel: bytes) -> None:
        snap = {n.name: n for n in await self.reader.children(node)}
        base = self.source + (b"/" + rel if rel else b"")
        try:
            names = {n for n in os.listdir(base) if self._included(rel + b"/" + n if rel else n, base + b"/" + n)}
        except OSError:
            names = set()
        for name in sorted(set(snap) | names):
            crel = rel + b"/" + name if rel else name
            p = "/" + shown(crel)
            n = snap.get(name)
            if name not in names:
                self.emit(Change("-", p))
                continue
            try:
                live = self._meta(crel, base + b"/" + name)
            except (OSError, ValueError):
                continue
            if n is None:
                self.emit(Change("+", p))
                continue
            content = by_stat(n.metadata, live)
            if isinstance(content, str):  # HASH: only the content's hash can tell
                content = not _holds(base + b"/" + name, n.metadata)
            live.pop("ctime_ns", None)
            aspects = compare_meta(n.metadata, live, content)
            if aspects:
                self.emit(Change("M", p, aspects))
            if n.kind == KIND_DIR and kind_of(os.lstat(base + b"/" + name).st_mode) == KIND_DIR:
                await self._dirs(n, crel)


    def _included(self, rel: bytes, path: bytes) -> bool:
        if self._filter is None:
            return True
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return True
        return self._filter.included(rel, is_dir)


class SourceDiff:
    """A snapshot against a source that is not a local directory (an object store), as its walk
    lists it now: ``live`` maps each relative path to its entry.  A file's content counts as
    changed when its size differs, or when its mtime differs and ``sha256(path)`` (read now)
    differs from the recorded one."""

    def __init__(self, reader: Reader, live: Mapping[bytes, Entry], sha256: Callable[[bytes], Awaitable[str | None]],
                 emit: Callable[[Change], None]) -> None:
        self.reader = reader
        self.live = live
        self.sha256 = sha256
        self.emit = emit
        self._children: dict[bytes, list[bytes]] = {}
        for rel in live:
            if rel:
                self._children.setdefault(rel.rpartition(b"/")[0], []).append(rel.rpartition(b"/")[2])

    async def run(self, cap: str) -> None:
        tree, _ = await self.reader.root(cap)
        await self._dir(tree, b"")

    async def _dir(self, node: Node, rel: bytes) -> None:
        snap = {n.name: n for n in await self.reader.children(node)}
        for name in sorted(set(snap) | set(self._children.get(rel, ()))):
            crel = rel + b"/" + name if rel else name
            p = "/" + shown(crel)
            n, e = snap.get(name), self.live.get(crel)
            if e is None:
                self.emit(Change("-", p))
                continue
            live = edge_metadata(e)
            if n is None:
                self.emit(Change("+", p))
                continue
            content = by_stat(n.metadata, live)
            if isinstance(content, str):  # HASH: only the content's hash can tell
                content = await self.sha256(crel) != n.metadata.get("sha256")
            aspects = compare_meta(n.metadata, live, content)
            if aspects:
                self.emit(Change("M", p, aspects))
            if n.kind == KIND_DIR and e.kind == KIND_DIR:
                await self._dir(n, crel)


def _holds(path: bytes, meta: Mapping[str, Any]) -> bool:
    """Whether the live file at ``path`` holds the content ``meta`` records (sparse or not)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return holds(fd, meta)
    finally:
        os.close(fd)

