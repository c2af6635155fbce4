"""What a rewrite keeps of a snapshot (pure): each directory's edges, which of them the ``--exclude``
globs remove, the body of a directory without them, the objects the kept files use, and which records
each index chunk keeps.

The edges are taken exactly as the directory was made (its index record, or its listing less
Tahoe's own link times), so a directory that loses nothing keeps its cap, and one that loses an
entry is made again in the canonical form ``snapshot.dir_body`` gives: the other edges' keys,
caps and metadata unchanged.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from ..caps import lit_data
from ..store.index import Record
from ..store.snapshot import BadSnapshot, canonical_json

#: The object kinds an ``objects`` directory links, by the prefix of their names there.
PACK, OBJECT = "pack-", "object-"


@dataclass(frozen=True)
class Edge:
    """One entry of a directory, as it was made: its key in the directory, its exact name, its
    type (``dirnode`` or ``filenode``), read cap and edge metadata."""

    key: str
    name: bytes
    ntype: str
    cap: str
    metadata: Mapping[str, Any]

    @property
    def is_dir(self) -> bool:
        """A directory of the source (a packed file's edge is a ``dirnode`` too: its type says)."""
        kind = self.metadata.get("type")
        return kind == "dir" if isinstance(kind, str) else self.ntype == "dirnode"

    @property
    def size(self) -> int:
        """A file's size as recorded (0 for anything else)."""
        size = self.metadata.get("size")
        return size if isinstance(size, int) and not self.is_dir else 0

    def with_cap(self, cap: str) -> "Edge":
        return replace(self, cap=cap)

    def json(self) -> list[Any]:
        """The edge as the directory body holds it ('metadata' only when there is some)."""
        info: dict[str, Any] = {"ro_uri": self.cap}
        if self.metadata:
            info["metadata"] = dict(self.metadata)
        return [self.ntype, info]


def edges_of(listing: Any) -> list[Edge]:
    """The edges of a directory listing (``["dirnode", {"children": ...}]``), by key.  Raises
    :class:`BadSnapshot` for one that is not a listing, or an entry without a read cap."""
    try:
        children = listing[1]["children"]
        items = sorted(children.items())
    except (IndexError, KeyError, TypeError, AttributeError):
        raise BadSnapshot("a directory listing is not one")
    out = []
    for key, value in items:
        try:
            ntype, info = value
            cap = info.get("ro_uri") or info.get("rw_uri")
            meta = dict(info.get("metadata") or {})
        except (TypeError, ValueError, AttributeError):
            raise BadSnapshot("a directory entry is not one")
        if not isinstance(cap, str):
            raise BadSnapshot(f"entry {key!r} has no read cap")
        meta.pop("tahoe", None)  # (Tahoe's own link times, where a gateway adds them)
        raw = meta.get("name_b64")
        name = base64.b64decode(raw) if isinstance(raw, str) else key.encode("utf-8")
        out.append(Edge(key, name, str(ntype), cap, meta))
    return out


def body_of(edges: Iterable[Edge]) -> bytes:
    """The canonical body of a directory holding ``edges`` under their keys."""
    return canonical_json({e.key: e.json() for e in edges})


def objects_of(edge: Edge, tree_in_index: bool) -> list[str]:
    """The objects a kept entry's content lives in, as a snapshot's ``objects`` directory may link
    them: its pack, its encoded object, and (in a tree kept in the index alone, where no Tahoe
    directory links it) the file stored as itself.  LIT caps are none: they hold their content."""
    if edge.is_dir:
        return []
    out = []
    pack = edge.metadata.get("pack")
    if isinstance(pack, dict) and isinstance(pack.get("cap"), str):
        out.append(pack["cap"])
    obj = edge.metadata.get("object")
    if isinstance(obj, str):
        out.append(obj)
    if tree_in_index and not out:
        out.append(edge.cap)
    return [c for c in out if lit_data(c) is None]


def objects_kept(linked: Mapping[str, str], used: set[str]) -> tuple[list[str], list[str]] | None:
    """The packs and encoded objects an ``objects`` directory (``linked``: name -> cap) keeps
    linking when the new tree uses only ``used``; None: it keeps them all (the directory stays)."""
    if all(cap in used for cap in linked.values()):
        return None
    packs = [c for n, c in linked.items() if n.startswith(PACK) and c in used]
    objects = [c for n, c in linked.items() if n.startswith(OBJECT) and c in used]
    return packs, objects


def chunk_kept(records: Sequence[Record], live: set[str],
               remade: Mapping[str, Sequence[tuple[str, bytes, bytes]]]) -> list[tuple[str, bytes, bytes | None]] | None:
    """The records one index chunk keeps in the new snapshot's index (None: all of them, as they
    are: the chunk is reused).  A record of a directory the new tree no longer holds (one that lost
    entries, a removed one, an older version a ``watch`` round carried) is left out; one that lost
    entries gives its place to its new records (``remade``)."""
    out: list[tuple[str, bytes, bytes | None]] = []
    same = True
    for cap, body, names in records:
        new = remade.get(cap, ())
        if new:
            same = False
            out.extend(new)
        if cap in live:
            out.append((cap, body, names))
        else:
            same = False
    return None if same else out
