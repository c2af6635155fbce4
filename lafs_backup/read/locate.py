"""Finding one path of a snapshot through the few index chunks on its way, not the whole index.

A snapshot whose directories live in its index alone (``destination.tree:
index``) names each directory by the SHA-256 of its record, and nothing says
which chunk holds a record.  But the records go into the chunks in the order
the backup finished the directories: each after everything below it, the
subdirectories of one directory in the order of their names.  So the root is
the last record; and the subdirectories ``c0 < c1 < ... < cm`` of a directory
``P`` lie in that order, each at the end of its own subtree, all before
``P``.  A chunk that holds one of them tells on which side of it the one
looked for lies; a chunk that holds none lies inside one of their subtrees
(the chunks around it are tried next).  So a directory is found by loading a
few chunks per level of its path (interpolating where it should be among its
siblings, then closing in), not the hundreds of a million-entry index: 15 of
264 for a directory of the benchmark's million-entry tree.  And a directory's
whole subtree lies in the chunks from just after its previous sibling's
record to its own: ``ls -R PATH`` and a tar of PATH load those alone.

Nothing here is trusted for correctness: each record found is proven by its
name when it is read, and the index is marked as loaded in part, so a
directory that is not among the chunks loaded makes the reader load the
whole index (the order was not as expected: two identical directories are
recorded once, say).  When the search itself is misled, :meth:`Locator.path`
returns None and :class:`Paths` looks the path up through the whole index.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import SnapshotError
from ..store.entry import KIND_DIR
from ..store.snapshot import INDEX, BadSnapshot, Node, index_caps, is_dir_id, parse_root
from .browse import Browser, Item
from .reader import Reader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Place:
    """A directory found: its item, the first chunk its subtree can start in, the chunk that holds
    its record, and its rank among its siblings (the root: 0)."""

    item: Item
    lo: int
    at: int
    rank: int


class Locator:
    """One snapshot's paths, found chunk by chunk through ``reader`` (its index loaded in part) and
    listed through ``browser`` (which must read through the same reader).  The directories found
    are remembered (``remember`` of them), so a path below one is found from there."""

    def __init__(self, reader: Reader, browser: Browser, cap: str, remember: int = 4096) -> None:
        self.reader = reader
        self.browser = browser
        self.cap = cap
        self._chunks: list[str] = []
        #: The dircaps of each chunk loaded here, by the chunk's position.
        self._members: dict[int, set[str]] = {}
        self._places: OrderedDict[bytes, _Place] = OrderedDict()
        self._remember = remember
        self.root: Item | None = None
        self.loaded = 0  # chunks this locator loaded

    async def open(self) -> bool:
        """Read the snapshot's root and its index's list of chunks; False when the tree does not
        live in an index alone (then the browser's own way is the right one).  When True, the
        reader's index is marked as loaded in part (a directory not found loads it whole)."""
        listing = await self.reader.gw.get_json(self.cap)
        try:
            tree = parse_root(listing)
        except BadSnapshot:
            return False
        children = (listing[1].get("children") or {}) if isinstance(listing, list) else {}
        index = children.get(INDEX)
        index_cap = index[1].get("ro_uri") if isinstance(index, list) and len(index) == 2 else None
        if not is_dir_id(tree.cap) or not isinstance(index_cap, str):
            return False
        self._chunks = index_caps(await self.reader.gw.get_json(index_cap))
        if not self._chunks:
            return False
        self.reader.load_in_part(index_cap)
        self.root = Item(b"", tree)
        return True

    async def path(self, rel: bytes) -> Item | None:
        """The entry at ``rel``; None when it was not found this way (the caller then loads the
        whole index).  Raises :class:`SnapshotError` when a directory's own listing says that
        ``rel`` is not there."""
        assert self.root is not None
        started, before = time.monotonic(), self.loaded
        parts = [p for p in rel.split(b"/") if p and p != b"."]
        # From the deepest directory on the way found already (at first: the root, found here).
        depth = len(parts)
        while depth > 0 and b"/".join(parts[:depth]) not in self._places:
            depth -= 1
        place = self._places.get(b"/".join(parts[:depth]))
        if place is None:
            found_at = await self._find(self.root.node, 0, len(self._chunks) - 1, [], -1)
            if found_at is None:
                return None
            place = self._remember_place(_Place(self.root, found_at[0], found_at[1], 0))
        else:
            self._places.move_to_end(place.item.path)
        item: Item = place.item
        for part in parts[depth:]:
            if item.kind != KIND_DIR:
                raise SnapshotError(what=os.fsdecode(rel), problem=f"{os.fsdecode(item.path)} is not a directory")
            subdirs = sorted((n for n in self.reader.indexed_children(item.node) or [] if n.kind == KIND_DIR),
                             key=lambda n: n.name)
            j = next((i for i, n in enumerate(subdirs) if n.name == part), None)
            found_at = None
            if j is not None:
                # Its subtree ends at ``at``; it is most likely about as large as one sibling's
                # share of the parent's span: looked for there first, then down to ``lo``.
                lo, where = place.lo, place.at
                soft = max(lo, where - 2 * ((where - lo) // (place.rank + 1) + 1))
                found_at = await self._find(subdirs[j], soft, where, subdirs, j)
                if found_at is None and soft > lo:
                    found_at = await self._find(subdirs[j], lo, where, subdirs, j)
                if found_at is None:
                    return None
            found = await self.browser.child(item, part)  # (the parent's record is loaded)
            if found is None:
                raise SnapshotError(what=os.fsdecode(rel), problem="no such path in the snapshot")
            item = found
            if found_at is not None and j is not None:
                place = self._remember_place(_Place(item, found_at[0], found_at[1], j))
        log.debug("locate: %r found in %d more index chunks (%d of %d loaded) in %.2f s", rel, self.loaded - before,
                  self.loaded, len(self._chunks), time.monotonic() - started)
        return item

    async def load_below(self, item: Item) -> None:
        """Load the chunks that hold the subtree of the directory ``item`` (found by :meth:`path`):
        from the first its subtree can start in to the one that holds its record."""
        place = self._places.get(item.path)
        if place is None or place.item.node.cap != item.node.cap:
            return  # (a directory below it not found here is found by the reader: the whole index)
        lo = place.lo
        parent = self._places.get(item.path.rpartition(b"/")[0]) if item.path else None
        if parent is not None and place.rank > 0:
            # Its subtree starts just after the record of the sibling before it: found (a few
            # chunks, most of them loaded already), it cuts off the chunks of the siblings before.
            subdirs = sorted((n for n in self.reader.indexed_children(parent.item.node) or [] if n.kind == KIND_DIR),
                             key=lambda n: n.name)
            if place.rank < len(subdirs) and subdirs[place.rank].cap == item.node.cap:
                before = await self._find(subdirs[place.rank - 1], place.lo, place.at, subdirs, place.rank - 1)
                if before is not None:
                    lo = before[1]
        await self.reader.load_index(self._chunks[lo:place.at + 1])

    def _remember_place(self, place: _Place) -> _Place:
        self._places[place.item.path] = place
        if len(self._places) > self._remember:
            self._places.popitem(last=False)
        return place

    async def _members_of(self, k: int) -> set[str]:
        hit = self._members.get(k)
        if hit is None:
            await self.reader.load_index([self._chunks[k]])
            self.loaded += 1
            hit = self._members[k] = {cap for cap, _, _ in await self.reader.chunk_records(self._chunks[k])}
        return hit

    async def _find(self, node: Node, lo: int, hi: int, siblings: list[Node], j: int) -> tuple[int, int] | None:
        """Where ``node``'s record is, between chunks ``lo`` and ``hi``: (the first chunk its subtree
        can start in, the chunk that holds it).  ``siblings``: the subdirectories of its parent by
        name (``node`` is the ``j``-th); without them (the root) it is looked for from the last
        chunk back."""
        if not siblings:  # the root: the last record of all
            for k in range(hi, lo - 1, -1):
                if node.cap in await self._members_of(k):
                    return lo, k
                if k < hi - 2:
                    return None
            return None
        position = {n.cap: i for i, n in enumerate(siblings)}
        # The siblings known to lie at chunks lo and hi (at first: none, and the parent, whose record
        # follows the last sibling's).
        ilo, ihi = -1, len(siblings) - 1
        # The chunks loaded already narrow it down for nothing.
        for k in sorted(x for x in self._members if lo <= x <= hi):
            members = self._members[k]
            if node.cap in members:
                return lo, k
            here = [position[c] for c in members if c in position]
            if any(i < j for i in here):
                lo, ilo = k, max(i for i in here if i < j)
            elif any(i > j for i in here):
                hi, ihi = k, min(i for i in here if i > j)
                break
        tried: set[int] = set(x for x in self._members if lo <= x <= hi)
        # Each sibling's record ends its subtree: the j-th is about (j + 1) / n of the way.  A chunk
        # with no sibling in it lies inside one sibling's subtree, before or after: the chunks
        # nearest the estimate are tried next, on both sides.
        est = lo + (hi - lo) * (j - ilo) // max(1, ihi - ilo)
        while lo <= hi:
            untried = [x for x in range(lo, hi + 1) if x not in tried]
            if not untried:
                return None
            k = min(untried, key=lambda x: (abs(x - est), x))
            tried.add(k)
            members = await self._members_of(k)
            if node.cap in members:
                return lo, k  # (its subtree comes after the sibling before it, seen at lo or before)
            here = [position[c] for c in members if c in position]
            before = [i for i in here if i < j]
            after = [i for i in here if i > j]
            if before and after:
                return None  # the order is not as expected
            if before:
                lo, ilo = k, max(before)
            elif after:
                hi, ihi = k, min(after)
            if before or after:
                est = lo + (hi - lo) * (j - ilo) // max(1, ihi - ilo)
        return None


class Paths:
    """Entries of snapshots by path, read through ``browser``: through a :class:`Locator` per
    snapshot (the last ``keep`` snapshots') where its tree lives in its index alone, else (or when
    the locator was misled) through the browser's own lookup, which loads a snapshot's whole index
    if the browser's reader uses indexes."""

    def __init__(self, browser: Browser, keep: int = 16) -> None:
        self.browser = browser
        self._keep = keep
        #: By snapshot cap: its locator (None: its tree is not in an index alone, or not in the
        #: expected order: the browser's own lookup is used).
        self._locators: OrderedDict[str, Locator | None] = OrderedDict()

    async def lookup(self, cap: str, rel: bytes, below: bool = False) -> Item:
        """The entry at ``rel`` of snapshot ``cap``.  ``below``: everything below it will be read
        too (a recursive listing, a tar): the index chunks of its subtree are loaded at once.
        Raises :class:`SnapshotError`."""
        if cap not in self._locators:
            made = Locator(self.browser.reader, self.browser, cap)
            self._locators[cap] = made if await made.open() else None
            if len(self._locators) > self._keep:
                self._locators.popitem(last=False)
        else:
            self._locators.move_to_end(cap)
        loc = self._locators[cap]
        if loc is not None:
            found = await loc.path(rel)
            if found is not None:
                if below and found.kind == KIND_DIR:
                    await loc.load_below(found)
                return found
            log.info("locate: %r: not found from the index chunks on its way; the whole index is loaded", rel)
            self._locators[cap] = None
        return await self.browser.lookup(cap, rel)
