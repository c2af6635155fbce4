"""Finding one directory of a snapshot in its index without loading the whole index.

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
264 for a directory of the benchmark's million-entry tree (bench/RESULTS.md).
Each record found is still proven by its name when it is read.

Nothing here is trusted for correctness: when the order is not as expected
(a record met first elsewhere, as two identical directories are recorded
once), :meth:`Locator.path` returns None and the caller loads the whole
index, as before.
"""

from __future__ import annotations

import logging
import os
import time

from ..errors import SnapshotError
from ..read.browse import Browser, Item
from ..read.reader import Reader
from ..store.entry import KIND_DIR
from ..store.snapshot import INDEX, BadSnapshot, Node, index_caps, is_dir_id, parse_root

log = logging.getLogger(__name__)


class Locator:
    """One snapshot's directories, found chunk by chunk through ``reader`` (its index loaded in
    part) and listed through ``browser`` (which must read through the same reader)."""

    def __init__(self, reader: Reader, browser: Browser, cap: str) -> None:
        self.reader = reader
        self.browser = browser
        self.cap = cap
        self._chunks: list[str] = []
        #: The dircaps of each chunk loaded here, by the chunk's position.
        self._members: dict[int, set[str]] = {}
        self.root: Item | None = None
        self.loaded = 0  # chunks this locator loaded

    async def open(self) -> bool:
        """Read the snapshot's root and its index's list of chunks; False when the tree does not
        live in an index alone (then the browser's own way is the right one)."""
        listing = await self.reader.gw.get_json(self.cap)
        try:
            tree = parse_root(listing)
        except BadSnapshot:
            return False
        children = (listing[1].get("children") or {}) if isinstance(listing, list) else {}
        index = children.get(INDEX)
        index_cap = index[1].get("ro_uri") if isinstance(index, list) and len(index) == 2 else None
        if not is_dir_id(tree.cap) or not isinstance(index_cap, str) or self.reader.index is None:
            return False
        self._chunks = index_caps(await self.reader.gw.get_json(index_cap))
        if not self._chunks:
            return False
        self.root = Item(b"", tree)
        return True

    async def path(self, rel: bytes) -> Item | None:
        """The entry at ``rel``; None when it was not found this way (the caller then loads the
        whole index).  Raises :class:`SnapshotError` when a directory's own listing says that
        ``rel`` is not there."""
        assert self.root is not None
        started = time.monotonic()
        item = self.root
        found_at = await self._find(item.node, 0, len(self._chunks) - 1, [], -1)
        if found_at is None:
            return None
        lo, where = found_at
        rank = 0  # the directory's place among its siblings (the root: alone)
        for part in [p for p in rel.split(b"/") if p and p != b"."]:
            if item.kind != KIND_DIR:
                raise SnapshotError(what=os.fsdecode(rel), problem=f"{os.fsdecode(item.path)} is not a directory")
            subdirs = sorted((n for n in self.reader.indexed_children(item.node) or [] if n.kind == KIND_DIR),
                             key=lambda n: n.name)
            j = next((i for i, n in enumerate(subdirs) if n.name == part), None)
            if j is not None:
                # Its subtree ends at ``where``; it is most likely about as large as one sibling's
                # share of the parent's span: looked for there first, then down to ``lo``.
                soft = max(lo, where - 2 * ((where - lo) // (rank + 1) + 1))
                found_at = await self._find(subdirs[j], soft, where, subdirs, j)
                if found_at is None and soft > lo:
                    found_at = await self._find(subdirs[j], lo, where, subdirs, j)
                if found_at is None:
                    return None
                lo, where = found_at
                rank = j
            found = await self.browser.child(item, part)  # (the parent's record is loaded)
            if found is None:
                raise SnapshotError(what=os.fsdecode(rel), problem="no such path in the snapshot")
            item = found
        log.debug("web: %r found in %d index chunks of %d in %.2f s", rel, self.loaded, len(self._chunks),
                  time.monotonic() - started)
        return item

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
