"""Subtrees kept whole: what the last backup of a source made of each directory, so that the next
one keeps an unchanged subtree whole instead of deciding each of its entries again.

After a backup, the *trees file* (one per source and grid, mode 0600: it holds
caps) lists every directory whose subtree was stored without a problem: its
path, the digest phase one computed of everything below it (see
``queue.write_queue``), and its cap.  It also names the snapshot, its
generation, its index chunks and the packs and encoded objects it links.

The next walk asks it of every directory: a directory whose digest is
unchanged is written to the queue as one line with its old cap, and nothing
below it.  Phase two then costs nothing for that subtree:

* its cap and the caps below it are those of the previous snapshot, which is
  still a kept backup (checked before the walk, and again under the lock);
* the new snapshot's ``objects`` directory links every pack and object of
  the previous one (some may no longer be used: they are released when the
  chain ends, below);
* its index records are the previous index's, read back from the grid (none
  are read when the whole tree is unchanged: the index is the same);
* its rows in the entry cache are not marked as used again: the new
  generation names the previous one as its base, and cleanup keeps the rows
  a kept backup's chain of bases may use.

A backup that keeps nothing whole starts a new chain; so does every
:data:`CHAIN_MAX`-th backup, which decides every entry again, so that
objects no longer used are released and the chain of bases stays short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from ..system.paths import replacing
from .queue import escape, unescape

log = logging.getLogger(__name__)

VERSION = 1
#: Backups in a row that keep subtrees of the one before; the next decides every entry again.
CHAIN_MAX = 8


def trees_path(cache_path: str, source: bytes) -> str:
    """Where the trees file of ``source`` lies, beside the entry cache of its grid."""
    return f"{cache_path}.trees.{hashlib.sha256(source).hexdigest()[:16]}"


def fingerprint(plain: bool, tree: str, derive: str = "") -> str:
    """What, besides the entries themselves, a directory's cap depends on (``tree``: where the
    directories live, ``destination.tree``; ``derive``: a digest of the derive rules and the programs
    allowed, which decide which files are recipes)."""
    return f"edges=1 plain={int(plain)} tree={tree}" + (f" derive={derive}" if derive else "")


@dataclass
class Trees:
    """The directories of one snapshot, for the next walk to keep whole (see the module docstring)."""

    snapshot: str
    generation: int
    fingerprint: str
    #: Backups in a row, this one included, that kept subtrees of the one before.
    chain: int
    index: tuple[str, ...]
    packs: frozenset[str]
    objects: frozenset[str]
    #: (path, digest, cap) in the order of the queue: every directory after the ones below it.
    dirs: list[tuple[bytes, bytes, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_path = {p: (d, c) for p, d, c in self.dirs}
        self._order = {p: i for i, (p, _, _) in enumerate(self.dirs)}

    def cap(self, path: bytes, digest: bytes) -> str | None:
        """The cap ``path`` had, if its subtree is as it was then."""
        known = self._by_path.get(path)
        return known[1] if known is not None and known[0] == digest else None

    def cap_of(self, path: bytes) -> str | None:
        """The cap recorded for ``path`` (None: none is)."""
        known = self._by_path.get(path)
        return known[1] if known is not None else None

    def subtree(self, path: bytes) -> list[tuple[bytes, bytes, str]]:
        """``path`` and every directory below it, in queue order (empty: ``path`` is not known)."""
        end = self._order.get(path)
        if end is None:
            return []
        start = end
        prefix = path + b"/" if path else b""
        while start > 0 and self.dirs[start - 1][0].startswith(prefix):
            start -= 1
        return self.dirs[start:end + 1]


def load(path: str, fp: str) -> Trees | None:
    """The trees file at ``path`` (None: there is none, it is damaged, or made for other settings)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
            if head.get("version") != VERSION or head.get("fingerprint") != fp:
                return None
            dirs = []
            for line in f:
                text, digest, cap = line.rstrip("\n").split("\t")
                dirs.append((unescape(text) if text != "." else b"", bytes.fromhex(digest), cap))
        if len(dirs) != head["dirs"]:
            raise ValueError("truncated")
        return Trees(head["snapshot"], int(head["generation"]), fp, int(head["chain"]), tuple(head["index"]),
                     frozenset(head["packs"]), frozenset(head["objects"]), dirs)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("the record of the last backup's directories (%s) cannot be read (%s); every entry is "
                    "decided again", path, e)
        return None


def save(path: str, trees: Trees) -> None:
    """Write the trees file (atomically, mode 0600)."""
    head = {"version": VERSION, "fingerprint": trees.fingerprint, "snapshot": trees.snapshot,
            "generation": trees.generation, "chain": trees.chain, "index": list(trees.index),
            "packs": sorted(trees.packs), "objects": sorted(trees.objects), "dirs": len(trees.dirs)}
    with replacing(path, buffering=1 << 20) as f:
        f.write(json.dumps(head) + "\n")
        for p, digest, cap in trees.dirs:
            f.write(f"{escape(p) if p else '.'}\t{digest.hex()}\t{cap}\n")


def forget(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Recorded(Protocol):
    """A backup as the local history lists it (``history.Backup``)."""

    @property
    def cap(self) -> str: ...

    @property
    def generation(self) -> int: ...


class RecordSource(Protocol):
    """Directory records by cap: the previous snapshot's index as a reader loaded it."""

    def record(self, cap: str) -> tuple[str, bytes, bytes | None] | None: ...

    def close(self) -> None: ...


def still_kept(trees: Trees, backups: Iterable[Recorded]) -> bool:
    """Whether the snapshot the trees file describes is still a backup this cache keeps."""
    return any(b.cap == trees.snapshot and b.generation == trees.generation for b in backups)


class Records:
    """The index records of kept subtrees, taken from the previous snapshot's index (loaded
    through a reader) in the order the previous backup wrote them."""

    def __init__(self, trees: Trees, bodies: RecordSource | None) -> None:
        self.trees = trees
        self._bodies = bodies  # .record(cap) -> (cap, body, names) | None

    def of(self, path: bytes) -> Iterator[tuple[str, bytes, bytes | None] | None]:
        """The records of ``path`` and every directory below it, one at a time (None for one that
        is missing)."""
        for _, _, cap in self.trees.subtree(path):
            yield self._bodies.record(cap) if self._bodies is not None else None

    def close(self) -> None:
        if self._bodies is not None:
            self._bodies.close()


__all__ = ["CHAIN_MAX", "Records", "Trees", "fingerprint", "forget", "load", "save", "still_kept",
           "trees_path"]
