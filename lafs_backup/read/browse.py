"""Looking inside a snapshot without restoring it: walking, finding, and writing entries out.

Everything here reads through the :class:`~lafs_backup.read.reader.Reader`:
directories are listed lazily, a subtree's listings are fetched a few
ahead of the walk (bounded), and a directory met twice under the same cap
(an unchanged subtree in another backup) is listed once.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import stat
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..derive import recipe
from ..errors import SnapshotError
from ..slots import Slots
from ..store.entry import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_LINK, KIND_SOCKET, unescape
from ..store.snapshot import Node, names_of
from ..system.sparse import EXTENTS, layout_of
from .reader import Reader

TYPE_NAMES = {KIND_FILE: "file", KIND_DIR: "dir", KIND_LINK: "symlink", KIND_FIFO: "fifo", KIND_CHAR: "chardev",
              KIND_BLOCK: "blockdev", KIND_SOCKET: "socket"}
_MODE_TYPE = {KIND_FILE: stat.S_IFREG, KIND_DIR: stat.S_IFDIR, KIND_LINK: stat.S_IFLNK, KIND_FIFO: stat.S_IFIFO,
              KIND_CHAR: stat.S_IFCHR, KIND_BLOCK: stat.S_IFBLK, KIND_SOCKET: stat.S_IFSOCK}


@dataclass(frozen=True)
class Item:
    """One entry of a snapshot, at its path relative to the source root (``b""``: the root)."""

    path: bytes
    node: Node

    @property
    def kind(self) -> str:
        return self.node.kind

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.node.metadata

    def st_mode(self) -> int:
        perm = self.node.mode
        return _MODE_TYPE.get(self.kind, 0) | ((perm & 0o7777) if perm is not None else
                                               (0o755 if self.kind == KIND_DIR else 0o644))

    def size(self) -> int:
        if self.kind == KIND_FILE:
            s = self.meta.get("size")
            return s if isinstance(s, int) else 0
        if self.kind == KIND_LINK:
            return len(self.node.target or b"")
        return 0

    def recipe(self) -> "recipe.Recipe | None":
        """The recipe of a derived file (None: its bytes are stored, or the recipe is damaged)."""
        try:
            return recipe.of(self.meta) if self.kind == KIND_FILE else None
        except recipe.BadRecipe:
            return None

    def int_meta(self, key: str, default: int = 0) -> int:
        v = self.meta.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else default

    def json(self) -> dict[str, Any]:
        """The entry as ``ls --json`` gives it; a name that is not UTF-8 also as ``path_b64``."""
        out: dict[str, Any] = {"path": os.fsdecode(self.path) or ".", "type": TYPE_NAMES.get(self.kind, self.kind),
                               "size": self.size(), "mode": self.st_mode() & 0o7777,
                               "mtime_ns": self.int_meta("mtime_ns"), "uid": self.int_meta("uid"),
                               "gid": self.int_meta("gid")}
        try:
            self.path.decode("utf-8")
        except UnicodeDecodeError:
            out["path"] = self.path.decode("utf-8", "backslashreplace")
            out["path_b64"] = base64.b64encode(self.path).decode("ascii")
        for key in ("user", "group", "sha256", "hardlink"):
            if isinstance(self.meta.get(key), str):
                out[key] = self.meta[key]
        if self.kind == KIND_FILE and isinstance(self.meta.get(EXTENTS), list):
            try:
                layout = layout_of(self.meta)
            except ValueError:
                layout = None
            if layout is not None:  # (its sha256 is its data's)
                out["sparse"] = {"data_size": layout.data_size, "extents": len(layout.extents)}
        if self.kind == KIND_LINK and self.node.target is not None:
            out["target"] = self.node.target.decode("utf-8", "backslashreplace")
        if self.kind == KIND_FILE and isinstance(self.meta.get(recipe.KEY), dict):
            out["derived"] = self.meta[recipe.KEY]  # (its recipe, as the backup recorded it)
        if self.kind in (KIND_CHAR, KIND_BLOCK) and isinstance(self.meta.get("rdev"), int):
            out["rdev"] = self.meta["rdev"]
        return out


def join(a: bytes, b: bytes) -> bytes:
    return a + b"/" + b if a else b


class Browser:
    """Snapshots as trees of :class:`Item`, read lazily through ``reader``.

    ``ahead``: directory listings fetched ahead of the walk, at most.
    ``remember``: listings kept by cap (an LRU), so that a subtree shared
    by several backups, or visited again, is listed once.  ``clock`` (None:
    the reader's) is the reactor a freed listing slot wakes the next on.
    """

    def __init__(self, reader: Reader, ahead: int = 8, remember: int = 4096,
                 clock: IReactorTime | None = None) -> None:
        self.reader = reader
        self._sem = Slots(max(1, ahead), clock if clock is not None else reader.clock)
        self._roots: OrderedDict[str, Item] = OrderedDict()
        #: Listings by directory cap, each a name index in the listing's order.
        self._memo: OrderedDict[str, dict[bytes, Node]] = OrderedDict()
        self._remember = remember
        self.listed = 0  # directory listings fetched from the grid

    async def root(self, cap: str) -> Item:
        hit = self._roots.get(cap)
        if hit is None:
            tree, _objects = await self.reader.root(cap)
            hit = self._roots[cap] = Item(b"", tree)
            if len(self._roots) > self._remember:
                self._roots.popitem(last=False)
        return hit

    async def child(self, item: Item, name: bytes) -> Item | None:
        """The child ``name`` of the directory ``item`` (None: there is none), by a name index."""
        if item.kind != KIND_DIR:
            return None
        node = (await self._listing(item.node)).get(name)
        return Item(join(item.path, name), node) if node is not None else None

    async def children(self, item: Item) -> list[Item]:
        if item.kind != KIND_DIR:
            return []
        return [Item(join(item.path, n.name), n) for n in (await self._listing(item.node)).values()]

    async def _listing(self, node: Node) -> dict[bytes, Node]:
        hit = self._memo.get(node.cap)
        if hit is not None:
            self._memo.move_to_end(node.cap)
            return hit
        nodes = await self._sem.run(self.reader.children, node)
        self.listed += 1
        index = self._memo[node.cap] = {n.name: n for n in nodes}
        if len(self._memo) > self._remember:
            self._memo.popitem(last=False)
        return index

    async def lookup(self, cap: str, path: str | bytes) -> Item:
        """The entry at ``path`` below the snapshot's root (raises :class:`SnapshotError`)."""
        item = await self.root(cap)
        raw = os.fsencode(path) if isinstance(path, str) else path
        for part in [p for p in raw.split(b"/") if p and p != b"."]:
            if item.kind != KIND_DIR:
                raise SnapshotError(what=os.fsdecode(raw), problem=f"{os.fsdecode(item.path)} is not a directory")
            found = await self.child(item, part)
            if found is None:
                raise SnapshotError(what=os.fsdecode(raw), problem="no such path in the snapshot")
            item = found
        return item

    async def names(self, cap: str) -> list[str]:
        """A directory's names, a line each (see ``snapshot.names_of``): as a loaded index records
        them, else made from its listing."""
        raw = self.reader.indexed_names(cap)
        if raw is not None:
            try:
                lines = raw.decode("utf-8").split("\n") if raw else []
                if all(line[:1] in TYPE_NAMES for line in lines):
                    return lines
            except UnicodeDecodeError:
                pass
            # (names that are not names: the directory's own listing is read)
        nodes = (await self._listing(Node(b"", KIND_DIR, cap, {}))).values()
        raw = names_of((n.name, n.kind, n.cap) for n in nodes)
        return raw.decode("utf-8").split("\n") if raw else []

    async def walk(self, top: Item, recursive: bool = True) -> AsyncIterator[Item]:
        """``top``'s entries in pre-order, by name (``top`` itself not included); with
        ``recursive``, the next few directories' listings are fetched while one is walked."""
        async for batch in self.walk_batches(top, recursive):
            for item in batch:
                yield item

    async def walk_batches(self, top: Item, recursive: bool = True, size: int = 1000) -> AsyncIterator[list[Item]]:
        """:meth:`walk`'s entries, up to ``size`` at a time (a million entries are a thousand steps
        of the caller's loop, not a million, and one flat loop here, not one per level)."""
        levels = [_Level(self, await self.children(top), recursive)]
        batch: list[Item] = []
        try:
            while levels:
                level = levels[-1]
                item = level.next()
                if item is None:
                    levels.pop()
                    continue
                batch.append(item)
                if recursive and item.kind == KIND_DIR:
                    await level.take()
                    levels.append(_Level(self, await self.children(item), True))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            for level in levels:  # the walk was left early: what was fetched ahead is not wanted
                level.drop()


class _Level:
    """One directory of a walk: its entries, and the listings of its next subdirectories (a few,
    fetched ahead)."""

    AHEAD = 8

    def __init__(self, browser: Browser, items: list[Item], recursive: bool) -> None:
        self._items = iter(items)
        self._browser = browser
        self._dirs = iter([c for c in items if c.kind == KIND_DIR] if recursive else [])
        self._ahead: deque[Deferred] = deque()
        self._top_up()

    def next(self) -> Item | None:
        return next(self._items, None)

    def _top_up(self) -> None:
        while len(self._ahead) < self.AHEAD:
            d = next(self._dirs, None)
            if d is None:
                return
            self._ahead.append(ensureDeferred(self._browser._listing(d.node)))

    async def take(self) -> None:
        """Wait for the listing of the subdirectory the walk enters now (it is remembered)."""
        await self._ahead.popleft()
        self._top_up()

    def drop(self) -> None:
        for d in self._ahead:
            d.addErrback(lambda _f: None)
        self._ahead.clear()


# -- find -------------------------------------------------------------------------------------------
def matcher(pattern: str, regex: bool = False) -> Callable[[bytes], bool]:
    """A path test: a glob against the name (or, with a '/', against the whole relative path), or
    with ``regex`` a regular expression searched in the whole path."""
    if regex:
        try:
            rx = re.compile(pattern.encode("utf-8", "surrogateescape"))
        except re.error as e:
            from ..errors import UsageError

            raise UsageError(f"find: invalid regular expression {pattern!r}: {e}")
        return lambda path: rx.search(path) is not None
    pat = pattern.encode("utf-8", "surrogateescape").strip(b"/") if "/" in pattern else \
        pattern.encode("utf-8", "surrogateescape")
    whole = "/" in pattern
    # (compiled once, as fnmatch compiles a bytes pattern: through Latin-1)
    rx = re.compile(fnmatch.translate(pat.decode("latin-1")).encode("latin-1"))
    if whole:
        return lambda path: rx.match(path) is not None
    test = _NameTest(lambda path: rx.match(path.rsplit(b"/", 1)[-1]) is not None)
    test.name = lambda name: rx.match(name) is not None
    return test


class _NameTest:
    """A path test that looks at the last name alone (``name`` tests that name)."""

    def __init__(self, test: Callable[[bytes], bool]) -> None:
        self._test = test
        self.name: Callable[[bytes], bool] | None = None

    def __call__(self, path: bytes) -> bool:
        return self._test(path)


class Finder:
    """Matches in one or more snapshots.  A directory met again under the same cap at the same
    path (an unchanged subtree of another backup) is answered from memory, not walked again."""

    def __init__(self, browser: Browser, test: Callable[[bytes], bool], remember: int = 100000,
                 whole_items: bool = True) -> None:
        """``whole_items``: each match with its metadata (else its path and kind alone)."""
        self.browser = browser
        self.test = test
        self.whole_items = whole_items
        self._memo: OrderedDict[tuple[str, bytes], list[Item]] = OrderedDict()
        self._remember = remember

    async def matches(self, cap: str) -> list[Item]:
        root = await self.browser.root(cap)
        return await self._dir(root)

    async def _dir(self, item: Item) -> list[Item]:
        key = (item.node.cap, item.path)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        # Only what matches and the subdirectories are kept while the subdirectories are walked: a
        # snapshot read from its index lists every directory at once, and a million entries'
        # items would all be alive together.  Names are tested as the index lists them; an item
        # with its metadata is made for a match only.
        by_name = getattr(self.test, "name", None)
        kept: list[tuple[Item | None, Item | None]] = []
        for text in await self.browser.names(item.node.cap):
            kind, name = text[0], text[1:]
            cap = ""
            if kind == KIND_DIR:
                name, _, cap = name.partition("\t")
            raw = unescape(name) if "\\" in name else name.encode("utf-8")
            if by_name is not None:
                match = by_name(raw)
                if not match and not cap:
                    continue
                path = join(item.path, raw)
            else:
                path = join(item.path, raw)
                match = self.test(path)
                if not match and not cap:
                    continue
            entry = Item(path, Node(raw, kind, cap, {}))
            kept.append((entry if match else None, entry if cap else None))
        if self.whole_items and any(m is not None for m, _ in kept):
            kept = [(await self.browser.child(item, m.node.name) if m is not None else None, d) for m, d in kept]
        subs: list[list[Item]] = []
        if any(d is not None for _, d in kept):
            try:
                subs = await gatherResults([ensureDeferred(self._dir(d)) for _, d in kept if d is not None],
                                           consumeErrors=True)
            except FirstError as e:
                e.subFailure.raiseException()
        found = iter(subs)
        out: list[Item] = []
        for match, d in kept:
            if match is not None:
                out.append(match)
            if d is not None:
                out.extend(next(found))
        self._memo[key] = out
        if len(self._memo) > self._remember:
            self._memo.popitem(last=False)
        return out
