"""What ``stats`` counts, from directory records alone (pure): a directory's entries and bytes, the
objects its files' contents live in, and the figures a backup and the repository add up to.

A directory is counted once, from its record (the body the index or the grid holds), into a
:class:`DirTally`: its own files, subdirectories, symlinks and other entries, the bytes of its
files, its subdirectories' caps, and the keys of the stored objects its edges point to (packs,
objects stored on their own, plain files, markers, long symlink targets).  A backup's figures are
then sums over its tree of these tallies (a directory shared by several places or backups counted
at each place, read once), and the objects it holds the union of theirs.  Nothing here reads file
content, and nothing is kept per file but 16 bytes of each content's identity and size
(:class:`DistinctContents`).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from ..caps import stored_size

#: What a stored object is: file contents (packs, objects, plain files), index chunks, or
#: directories and the like (Tahoe directories, the snapshot's root, markers, symlink targets).
CONTENT, INDEX, OTHER = 0, 1, 2


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One immutable object on the grid: its ``size`` in bytes (after compression: what was
    uploaded), ``on_grid`` the bytes of its N shares (size / k * N), and its ``kind``."""

    size: int
    on_grid: int
    kind: int


def object_key(cap: str) -> int:
    """A compact key for an object, from its cap (64 bits: a repository of billions of objects
    would be needed for two to meet)."""
    return int.from_bytes(hashlib.blake2b(cap.encode("ascii", "replace"), digest_size=8).digest(), "big")


def stored_object(cap: str, kind: int) -> StoredObject | None:
    """The object ``cap`` names, with the sizes its cap records (None: nothing on a server, as a
    LIT cap, or a cap that records no size)."""
    found = stored_size(cap)
    if found is None:
        return None
    size, k, n = found
    return StoredObject(size, -(-size // k) * n, kind)


@dataclass(frozen=True, slots=True)
class Counts:
    """Entries and bytes of a tree (or of one directory's own entries)."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    #: The sum of the files' sizes (what a restore writes).
    bytes: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.files + other.files, self.dirs + other.dirs, self.symlinks + other.symlinks,
                      self.specials + other.specials, self.bytes + other.bytes)


@dataclass(frozen=True, slots=True)
class DirTally:
    """One directory, counted from its record: its own entries (subdirectories counted, not what
    is below them), its subdirectories' caps, and the keys of the objects its edges point to."""

    own: Counts
    subdirs: tuple[str, ...]
    objects: tuple[int, ...]


@dataclass(frozen=True)
class Tallied:
    """What counting one directory found: its tally, the objects it points to (key -> object), and
    each file's content as (identity, size): the identity is the first 64 bits of its SHA-256."""

    tally: DirTally
    objects: dict[int, StoredObject]
    contents: list[tuple[int, int]]


def tally(children: Mapping[str, Any], own_cap: str | None = None) -> Tallied:
    """Count a directory from its children as its record holds them (``json.loads`` of its body,
    or a listing's ``children``): ``name -> [type, {"ro_uri": cap, "metadata": {...}}]``.
    ``own_cap``: the directory's cap when it is a Tahoe directory (an object itself).  Raises
    ValueError for children that are not a directory's."""
    files = dirs = links = specials = size = 0
    subdirs: list[str] = []
    objects: dict[int, StoredObject] = {}
    contents: list[tuple[int, int]] = []

    def point(cap: object, kind: int) -> None:
        if isinstance(cap, str):
            obj = stored_object(cap, kind)
            if obj is not None:
                objects[object_key(cap)] = obj

    if own_cap is not None:
        point(own_cap, OTHER)
    try:
        items = children.values()
        for ntype, info in items:
            meta = info.get("metadata") or {}
            cap = info.get("ro_uri") or info.get("rw_uri")
            t = meta.get("type")
            if t == "dir" or (t is None and ntype == "dirnode"):
                dirs += 1
                if isinstance(cap, str):
                    subdirs.append(sys.intern(cap))  # (one string per directory: its parent's and its own key)
                continue
            if t == "file" or (t is None and ntype == "filenode"):
                files += 1
                n = meta.get("size")
                n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
                size += n
                pack = meta.get("pack")
                if isinstance(pack, dict):
                    point(pack.get("cap"), CONTENT)
                    point(cap, OTHER)  # (the marker a packed file's edge points to in a Tahoe tree)
                elif isinstance(meta.get("object"), str):
                    point(meta["object"], CONTENT)
                    point(cap, OTHER)
                else:
                    point(cap, CONTENT)  # a plain file: exactly its bytes (or a LIT cap: nothing stored)
                if n:
                    sha = meta.get("sha256")
                    ident = sha if isinstance(sha, str) and len(sha) >= 16 else None
                    contents.append((int(ident[:16], 16) if ident is not None and _hex(ident[:16])
                                     else object_key(f"{pack or meta.get('object') or cap}"), n))
            elif t == "symlink":
                links += 1
                point(cap, OTHER)  # (a long target's object, in a Tahoe tree)
            else:
                specials += 1
    except (TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"not a directory record ({type(e).__name__})") from None
    return Tallied(DirTally(Counts(files, dirs, links, specials, size), tuple(subdirs), tuple(objects)),
                   objects, contents)


def _hex(text: str) -> bool:
    try:
        int(text, 16)
        return True
    except ValueError:
        return False


def tree_counts(root: str, table: Mapping[str, DirTally], memo: dict[str, Counts]) -> Counts:
    """The entries and bytes below the directory ``root`` (itself not counted), every directory
    counted at each place it appears, from the tallies in ``table`` (all of them there: see
    :func:`missing`).  ``memo`` keeps each directory's result, for the next backup that shares
    it.  Iterative: a tree of any depth."""
    if root in memo:
        return memo[root]
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        cap, ready = stack.pop()
        if cap in memo:
            continue
        t = table[cap]
        if ready:
            total = t.own
            for sub in t.subdirs:
                total = total + memo[sub]
            memo[cap] = total
            continue
        stack.append((cap, True))
        stack.extend((sub, False) for sub in t.subdirs if sub not in memo)
    return memo[root]


def _below(root: str, table: Mapping[str, DirTally]) -> Iterator[tuple[str, DirTally | None]]:
    """Each directory of the tree below ``root`` (``root`` included) once, with its tally in ``table``
    (None: not there; its subdirectories are then unknown)."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        cap = stack.pop()
        if cap in seen:
            continue
        seen.add(cap)
        t = table.get(cap)
        yield cap, t
        if t is not None:
            stack.extend(t.subdirs)


def missing(root: str, table: Mapping[str, DirTally]) -> list[str]:
    """The directories of the tree below ``root`` (``root`` included) that ``table`` lacks, each once."""
    return [cap for cap, t in _below(root, table) if t is None]


def tree_objects(root: str, table: Mapping[str, DirTally]) -> set[int]:
    """The keys of every object the tree below ``root`` points to (each directory visited once);
    raises KeyError when ``table`` lacks one of its directories."""
    out: set[int] = set()
    for cap, t in _below(root, table):
        if t is None:
            raise KeyError(cap)
        out.update(t.objects)
    return out


class DistinctContents:
    """File contents by identity, counted once each however many files hold them.  Each file met
    costs 16 bytes in one of 256 arrays (not a Python object per file); :meth:`totals` counts the
    distinct ones one array at a time."""

    def __init__(self) -> None:
        self._keys = [array("Q") for _ in range(256)]
        self._sizes = [array("Q") for _ in range(256)]

    def add(self, items: Iterable[tuple[int, int]]) -> None:
        keys, sizes = self._keys, self._sizes
        for key, size in items:
            b = key & 0xFF
            keys[b].append(key)
            sizes[b].append(size)

    def totals(self) -> tuple[int, int]:
        """How many distinct contents, and their bytes (each counted once)."""
        count = size = 0
        for keys, sizes in zip(self._keys, self._sizes):
            distinct = dict(zip(keys, sizes))
            count += len(distinct)
            size += sum(distinct.values())
        return count, size


@dataclass(frozen=True)
class BackupFigures:
    """One backup's figures: its tree's entries and bytes; the stored objects it holds (its files'
    contents, its index chunks) and their bytes after compression; and of those, the ones no older
    backup holds: what it added."""

    counts: Counts
    objects: int
    stored_bytes: int
    added_objects: int
    added_bytes: int

    def json(self) -> dict[str, int]:
        c = self.counts
        return {"files": c.files, "dirs": c.dirs, "symlinks": c.symlinks, "specials": c.specials,
                "bytes": c.bytes, "objects": self.objects, "stored_bytes": self.stored_bytes,
                "added_objects": self.added_objects, "added_bytes": self.added_bytes}


@dataclass(frozen=True)
class RepositoryFigures:
    """The whole repository: what its backups hold in all (``logical_bytes``: the sum of every
    backup's bytes), the distinct contents among them, and the distinct objects stored for them."""

    backups: int
    logical_bytes: int
    distinct_contents: int
    distinct_bytes: int
    #: Stored objects: contents and index chunks (what backups add), and their bytes after compression.
    objects: int
    content_bytes: int
    index_bytes: int
    #: Directories and the like (the snapshots' own, Tahoe directories, markers): objects and bytes.
    other_objects: int
    other_bytes: int
    #: The bytes of every share on the storage servers (each object's size / k * N).
    on_grid_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.content_bytes + self.index_bytes + self.other_bytes

    @property
    def deduplication(self) -> float | None:
        """How many times over deduplication stores the logical bytes (None: nothing to divide)."""
        return ratio(self.logical_bytes, self.distinct_bytes)

    @property
    def compression(self) -> float | None:
        return ratio(self.distinct_bytes, self.content_bytes)

    @property
    def overall(self) -> float | None:
        return ratio(self.logical_bytes, self.stored_bytes)

    def json(self) -> dict[str, Any]:
        return {"backups": self.backups, "logical_bytes": self.logical_bytes,
                "distinct_contents": self.distinct_contents, "distinct_bytes": self.distinct_bytes,
                "objects": self.objects, "content_bytes": self.content_bytes, "index_bytes": self.index_bytes,
                "other_objects": self.other_objects, "other_bytes": self.other_bytes,
                "stored_bytes": self.stored_bytes, "on_grid_bytes": self.on_grid_bytes,
                "deduplication_ratio": _rounded(self.deduplication),
                "compression_ratio": _rounded(self.compression), "ratio": _rounded(self.overall)}


def ratio(a: int, b: int) -> float | None:
    return a / b if b > 0 else None


def _rounded(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


def figures(counts: Counts, held: Iterable[int], seen: set[int], objects: Mapping[int, StoredObject]) -> BackupFigures:
    """A backup's figures from its counts and the keys of the objects it ``held``, given the keys
    every older backup held (``seen``, which this adds the backup's to).  Directories and the like
    are not counted in its objects (see :class:`RepositoryFigures`)."""
    n = stored = added_n = added = 0
    for key in held:
        obj = objects[key]
        new = key not in seen
        if new:
            seen.add(key)
        if obj.kind == OTHER:
            continue
        n += 1
        stored += obj.size
        if new:
            added_n += 1
            added += obj.size
    return BackupFigures(counts, n, stored, added_n, added)


def repository(backups: int, logical: int, contents: DistinctContents,
               objects: Mapping[int, StoredObject]) -> RepositoryFigures:
    """The repository's figures: ``objects`` is every object its backups hold (key -> object)."""
    distinct, distinct_bytes = contents.totals()
    sizes = [0, 0, 0]
    counts = [0, 0, 0]
    on_grid = 0
    for obj in objects.values():
        sizes[obj.kind] += obj.size
        counts[obj.kind] += 1
        on_grid += obj.on_grid
    return RepositoryFigures(backups, logical, distinct, distinct_bytes, counts[CONTENT] + counts[INDEX],
                             sizes[CONTENT], sizes[INDEX], counts[OTHER], sizes[OTHER], on_grid)
