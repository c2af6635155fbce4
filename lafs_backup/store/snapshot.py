"""The snapshot format on the grid: edge metadata, child names and the snapshot root (pure).

A snapshot is one immutable directory holding one child, ``tree``: the
source root's directory, whose edge carries the root's own metadata.  Every
edge below carries the entry's metadata (see :func:`edge_metadata`).  Tahoe
normalises child names to NFC and needs them as UTF-8, so when a name's
bytes differ from its key the exact bytes ride along in ``name_b64``.

The source's directories are either Tahoe directories (one
``mkdir-immutable`` each: any Tahoe tool can browse them) or, by default,
records of the snapshot's index alone, named by the SHA-256 of their body
(:func:`dir_id`): then ``tree`` points at a small marker directory and its
edge's ``index_tree`` metadata names the root's record.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import stat
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


from ..protocols import JSON
from .entry import (KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_LINK, KIND_SOCKET,
                    Entry, escape)

FORMAT = 1
TREE = "tree"
#: The edge metadata of ``tree`` naming the root's index record, in a snapshot whose directories
#: live in its index alone.
INDEX_TREE = "index_tree"
#: How a directory that lives in the index alone is named (see :func:`dir_id`).
DIR_ID_PREFIX = "lafs-backup-dir:"
OBJECTS = "objects"
INDEX = "index"

_KIND_NAMES = {KIND_FILE: "file", KIND_DIR: "dir", KIND_LINK: "symlink", KIND_FIFO: "fifo",
               KIND_CHAR: "chardev", KIND_BLOCK: "blockdev", KIND_SOCKET: "socket"}
_NAME_KINDS = {v: k for k, v in _KIND_NAMES.items()}


#: JSON text in canonical form: no ASCII escaping, no spaces, keys sorted.
_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
#: A string as JSON text in that form (what ``_canonical`` gives for a str).
_string = json.encoder.encode_basestring


def _refuse(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
#: The encoder ``_canonical`` makes anew at every call, made once: a directory encodes each of its
#: children's edges (tens of thousands in a backup), and that setup was a fifth of each.  Same settings,
#: same bytes; no check for cycles (an edge is a tree of dicts, lists and scalars).  None: a Python
#: without the json module's C part.
_edge_encoder: Any = (_make_encoder(None, _refuse, _string, None, ":", ",", True, False, True)
                      if _make_encoder is not None else None)


def _edge_json(edge: object) -> str:
    if _edge_encoder is None:
        return _canonical(edge)
    return "".join(_edge_encoder(edge, 0))


def canonical_json(obj: object) -> bytes:
    return _canonical(obj).encode("utf-8")


def _text(raw: bytes) -> str | dict[str, str]:
    """Bytes as JSON: a string if valid UTF-8, else {"b64": ...}."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def _name_text(raw: bytes) -> str | dict[str, str]:
    """:func:`_text` of a user or group name, one string per name: a directory's edges wait for it in
    memory, tens of thousands at once, and a machine has a few owners."""
    name = _utf8_name(raw)
    return name if name is not None else _text(raw)


@functools.lru_cache(maxsize=1024)
def _utf8_name(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _untext(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return base64.b64decode(value["b64"])
    raise ValueError("bad text field")


def edge_metadata(e: Entry, size: int | None = None, mtime_ns: int | None = None,
                  ctime_ns: int | None = None, sha256: str | None = None) -> dict[str, Any]:
    """The metadata stored on an entry's edge.

    ``size``/``mtime_ns``/``ctime_ns`` override the queue's values with what
    phase two actually read.
    """
    meta: dict[str, Any] = {
        "lafs_backup": FORMAT,
        "type": _KIND_NAMES[e.kind],
        "mode": e.mode,
        "mtime_ns": e.mtime_ns if mtime_ns is None else mtime_ns,
        "ctime_ns": e.ctime_ns if ctime_ns is None else ctime_ns,
    }
    if e.extra("owner") != b"none":  # a source with no ownership (an object store): none is invented
        meta["uid"], meta["gid"] = e.uid, e.gid
    if e.kind == KIND_FILE:
        meta["size"] = e.size if size is None else size
        if sha256 is not None:
            meta["sha256"] = sha256
    if e.kind == KIND_LINK and e.target is not None:
        meta["target"] = _text(e.target)
    xattrs: dict[str, Any] = {}
    for key, value in e.extras:
        if key in ("user", "group"):
            meta[key] = _name_text(value)
        elif key in ("acl", "dacl"):
            meta["acl" if key == "acl" else "default_acl"] = {
                "numeric": value.decode("ascii", "replace"),
                "names": (e.extra(key + "_names") or value).decode("utf-8", "replace")}
        elif key == "caps":
            meta["caps"] = value.decode("ascii", "replace")
        elif key == "rdev":
            meta["rdev"] = int(value)
        elif key == "hardlink":
            meta["hardlink"] = value.decode("ascii", "replace")
        elif key in ("etag", "version", "md5"):  # what a remote source says identifies the object
            meta[key] = value.decode("utf-8", "replace")
        elif key.startswith("x:"):
            name = key[2:].encode("utf-8", "surrogateescape")
            label = name.decode("utf-8") if _is_utf8(name) else "b64:" + base64.b64encode(name).decode()
            xattrs[label] = base64.b64encode(value).decode("ascii")
    if xattrs:
        meta["xattrs"] = xattrs
    return meta


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def xattrs_of(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The extended attributes recorded in edge metadata, as raw bytes."""
    out: dict[bytes, bytes] = {}
    raw = meta.get("xattrs")
    if not isinstance(raw, dict):
        return out
    for label, value in raw.items():
        name = base64.b64decode(label[4:]) if label.startswith("b64:") else label.encode("utf-8")
        out[name] = base64.b64decode(value)
    return out


@dataclass(frozen=True)
class Hit:
    """Where content lives: a cap, or a slice (offset, length) of the pack ``cap``."""

    cap: str
    sha256: bytes | None
    enc: str | None = None
    offset: int | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class Child:
    """A finished entry, ready to be an edge of its parent directory."""

    name: bytes
    cap: str
    metadata: Mapping[str, Any]

    @property
    def is_dir(self) -> bool:
        return self.metadata.get("type") == "dir"


@dataclass(frozen=True, slots=True)
class Edge:
    """A finished entry as its directory holds it until the directory is made: its name, kind and cap,
    and its edge already written as canonical JSON (``["filenode",{"metadata":...,"ro_uri":...}]``).
    A third of a :class:`Child`'s memory: one directory of man pages holds 17,600 of them at once."""

    name: bytes
    kind: str
    cap: str
    json: str


def compact(child: Child) -> Edge:
    """``child`` as its directory holds it (:func:`dir_body` writes the same bytes for both)."""
    meta = child.metadata if type(child.metadata) is dict else dict(child.metadata)
    kind = _kind_of(meta)
    edge = ["dirnode" if kind == KIND_DIR else "filenode", {"ro_uri": child.cap, "metadata": meta}]
    return Edge(child.name, kind, child.cap, _edge_json(edge))


def _kind_of(meta: Mapping[str, Any]) -> str:
    """The kind an edge's metadata names (a file's when it names none it knows)."""
    kind = meta.get("type")
    return _NAME_KINDS.get(kind, KIND_FILE) if isinstance(kind, str) else KIND_FILE


def display_name(name: bytes) -> str:
    """The NFC text key Tahoe will store for ``name`` (undecodable bytes as \\xNN)."""
    return unicodedata.normalize("NFC", name.decode("utf-8", "backslashreplace"))


def dir_body(children: Iterable[Child | Edge]) -> bytes:
    """The canonical ``mkdir-immutable`` JSON body for ``children``.

    Deterministic: the same children give the same bytes, hence the same
    cache key and, through convergence, the same dircap.  Keys that would
    collide after NFC normalisation get a ``~N`` suffix; any key that is not
    exactly the name's bytes carries ``name_b64``.

    The bytes are :func:`canonical_json` of ``{key: [kind, {ro_uri, metadata}]}``,
    written one child at a time: a directory of tens of thousands of entries
    then holds no second copy of every child's metadata, nor the encoder's
    pieces of the whole, at once.
    """
    used: set[str] = set()
    items: list[tuple[str, bytes]] = []
    for child in sorted(children, key=lambda c: c.name):
        key = base = display_name(child.name)
        n = 0
        while key in used or key == "":
            n += 1
            key = f"{base}~{n}"
        used.add(key)
        exact = key.encode("utf-8") == child.name
        if isinstance(child, Edge) and exact:
            text = child.json
        else:
            if isinstance(child, Edge):  # (a key that is not the name: rare, so parsed again)
                kind, node = json.loads(child.json)
                meta = node["metadata"]
            else:
                kind, meta = "dirnode" if child.is_dir else "filenode", child.metadata
            if not exact:
                meta = {**meta, "name_b64": base64.b64encode(child.name).decode("ascii")}
            elif type(meta) is not dict:
                meta = dict(meta)
            text = _edge_json([kind, {"ro_uri": child.cap, "metadata": meta}])
        items.append((key, f"{_string(key)}:{text}".encode("utf-8")))
    items.sort(key=lambda item: item[0])  # (the order of sort_keys)
    return b"{" + b",".join(item for _, item in items) + b"}"


def dir_id(body: bytes) -> str:
    """The name of a directory that lives in the index alone: the SHA-256 of its exact body (names,
    caps and metadata), so the same children give the same name, and a record read back is proven
    by hashing it.  Not a Tahoe cap: nothing on the grid has it."""
    return DIR_ID_PREFIX + hashlib.sha256(b"dir\0" + body).hexdigest()


def is_dir_id(cap: str) -> bool:
    """Is ``cap`` the name of a directory that lives in the index alone (see :func:`dir_id`)?"""
    return cap.startswith(DIR_ID_PREFIX)


def root_body(tree: Child, objects: str | None = None, index: str | None = None,
              marker: str | None = None) -> bytes:
    """The snapshot root: ``tree``, the source root with its metadata, ``objects`` and ``index`` if any.
    ``marker``: the tree lives in the index alone (``tree.cap`` is its root's :func:`dir_id`), and
    ``tree`` points at this marker directory instead."""
    meta = dict(tree.metadata)
    cap = tree.cap
    if marker is not None:
        meta[INDEX_TREE], cap = tree.cap, marker
    body: dict[str, Any] = {TREE: ["dirnode", {"ro_uri": cap, "metadata": meta}]}
    if objects is not None:
        body[OBJECTS] = ["dirnode", {"ro_uri": objects}]
    if index is not None:
        body[INDEX] = ["dirnode", {"ro_uri": index}]
    return canonical_json(body)


def index_body(chunks: Iterable[str]) -> bytes:
    """The directory linking a snapshot's index chunks (``chunk-N``, in order), so deep-check and
    its leases reach them as they reach everything else."""
    return canonical_json({f"chunk-{i:06d}": ["filenode", {"ro_uri": cap}] for i, cap in enumerate(chunks)})


def index_caps(listing: JSON) -> list[str]:
    """The chunks linked from an ``index`` directory listing, in order."""
    return _linked(listing, "chunk-")


def _linked(listing: JSON, prefix: str) -> list[str]:
    """The caps a directory listing links under names starting with ``prefix``, by name."""
    try:
        children = listing[1]["children"]
    except (IndexError, KeyError, TypeError):
        return []
    return [info.get("ro_uri") for name, (_, info) in sorted(children.items())
            if name.startswith(prefix) and isinstance(info.get("ro_uri"), str)]


def salted_body(body: bytes, salt: str) -> bytes:
    """``body`` with ``salt`` in its first child's edge metadata: the same directory to every
    reader (no reader looks at that key), but other bytes, hence another storage index.  An
    empty body is returned as it is (Tahoe stores it as a LIT cap, which is never refused)."""
    children = json.loads(body)
    if not children:
        return body
    first = min(children)
    info = children[first][1]
    info["metadata"] = {**info.get("metadata", {}), "salt": salt}
    return canonical_json(children)


def objects_body(packs: Iterable[str], objects: Iterable[str] = ()) -> bytes:
    """The directory linking every pack (``pack-N``) and encoded object (``object-N``) a snapshot
    uses (edges refer to them only from their metadata), so one deep-check with add-lease
    reaches them all, and a full restore can fetch every pack at once."""
    body = {f"pack-{i:06d}": ["filenode", {"ro_uri": cap}] for i, cap in enumerate(sorted(packs))}
    body.update({f"object-{i:06d}": ["filenode", {"ro_uri": cap}] for i, cap in enumerate(sorted(objects))})
    return canonical_json(body)


def pack_caps(listing: JSON) -> list[str]:
    """The packs linked from an ``objects`` directory listing."""
    return _linked(listing, "pack-")


#: Where the edge of a packed or encoded file points: a tiny directory whose
#: one entry says what happened, so `tahoe cp` makes a directory there, never
#: a file with wrong contents.  The real location is the edge's "pack" or
#: "object" metadata.
PACKED_MARKER_BODY = canonical_json({
    "this-file-is-in-a-pack--restore-it-with-lafs-backup": ["filenode", {"ro_uri": "URI:LIT:"}]})

#: Where ``tree`` points in a snapshot whose directories live in its index alone: `tahoe ls` of it
#: says so, and its edge's ``index_tree`` metadata names the root's record.
INDEX_TREE_MARKER_BODY = canonical_json({
    "this-tree-is-in-the-snapshot-index--browse-or-restore-it-with-lafs-backup": [
        "filenode", {"ro_uri": "URI:LIT:"}]})


def body_key(body: bytes) -> bytes:
    """Cache key of a directory: its exact body, names and metadata included."""
    return hashlib.sha256(b"dir\0" + body).digest()


def file_key(path: bytes, size: int, mtime_ns: int, ctime_ns: int, ino: int | None, plain: bool = False) -> bytes:
    """Cache key of a file's state: trusted to mean unchanged content.

    ``plain`` keys (no packing, no encoding) are separate, so switching
    packing off never reuses a packed or compressed copy.  ``ino`` None: the
    key of a state known from a snapshot, which records no inode (a cache
    rebuilt from the repository).
    """
    tag = b"plainfile" if plain else b"file"
    last = b"-" if ino is None else b"%d" % ino
    return hashlib.sha256(b"%s\0%s\0%d:%d:%d:%s" % (tag, path, size, mtime_ns, ctime_ns, last)).digest()


def extents_key(state: bytes) -> bytes:
    """Cache key of the layout (``system.sparse``) of the sparse file whose state key is ``state``:
    the file state's row names its data's object, this row where that data lies."""
    return hashlib.sha256(b"extents\0" + state).digest()


def content_key(sha: bytes, plain: bool = False) -> bytes:
    """Cache key of stored content, by its plaintext SHA-256 (``plain``: stored as is, alone)."""
    return (b"plain\0" if plain else b"content\0") + sha


def index_key(raw: bytes) -> bytes:
    """Cache key of an index chunk, by its uncompressed bytes."""
    return hashlib.sha256(b"index\0" + raw).digest()


def blob_key(data: bytes) -> bytes:
    """Cache key of a small blob uploaded by content (a long symlink target)."""
    return hashlib.sha256(b"blob\0" + data).digest()


# -- reading a snapshot back ---------------------------------------------------

@dataclass(frozen=True)
class Node:
    """One edge read back from the grid."""

    name: bytes
    kind: str  # "f", "d" or "l"
    cap: str
    metadata: Mapping[str, Any]

    @property
    def mode(self) -> int | None:
        m = self.metadata.get("mode")
        return m if isinstance(m, int) else None

    @property
    def enc(self) -> str | None:
        e = self.metadata.get("enc")
        return e if isinstance(e, str) else None

    @property
    def object(self) -> str | None:
        """The cap of an encoded (e.g. compressed) file stored on its own."""
        o = self.metadata.get("object")
        return o if isinstance(o, str) else None

    @property
    def pack(self) -> tuple[str, int, int] | None:
        p = self.metadata.get("pack")
        if isinstance(p, dict) and isinstance(p.get("cap"), str):
            return p["cap"], int(p["offset"]), int(p["length"])
        return None

    @property
    def target(self) -> bytes | None:
        t = self.metadata.get("target")
        return _untext(t) if t is not None else None


class BadSnapshot(ValueError):
    pass


def _safe_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def parse_children(listing: JSON) -> list[Node]:
    """Edges of a ``?t=json`` directory listing, with exact names.

    Raises :class:`BadSnapshot` for a name that could escape the restore
    target (empty, '.', '..', containing '/' or NUL) or appears twice.
    """
    try:
        kind, info = listing
        children = info["children"]
    except (ValueError, TypeError, KeyError):
        raise BadSnapshot("not a directory listing")
    if kind != "dirnode":
        raise BadSnapshot("not a directory")
    nodes = []
    seen: set[bytes] = set()
    for key, (ntype, ninfo) in children.items():
        meta = ninfo.get("metadata") or {}
        if "name_b64" in meta:
            name = base64.b64decode(meta["name_b64"])
        else:
            name = key.encode("utf-8")
        if not _safe_name(name):
            raise BadSnapshot(f"unsafe name {name!r}")
        if name in seen:
            raise BadSnapshot(f"name {name!r} appears twice")
        seen.add(name)
        cap = ninfo.get("ro_uri") or ninfo.get("rw_uri")
        if not isinstance(cap, str):
            raise BadSnapshot(f"entry {name!r} has no cap")
        t = meta.get("type")
        if t in _NAME_KINDS:
            k = _NAME_KINDS[t]
        elif ntype == "dirnode":
            k = KIND_DIR  # a plain Tahoe directory (not made by lafs-backup)
        else:
            k = KIND_FILE
        nodes.append(Node(name, k, cap, meta))
    nodes.sort(key=lambda n: n.name)
    return nodes


def names_of(entries: Iterable[tuple[bytes, str, str]]) -> bytes:
    """A directory's *names*, as its index record keeps them: from (name, kind, cap) of each
    entry, one line each in byte order of names: the kind, the name escaped as in the queue
    (printable, one line), and for a subdirectory a tab and its cap."""
    return "\n".join(kind + escape(name) + ("\t" + cap if kind == KIND_DIR else "")
                     for name, kind, cap in sorted(entries, key=lambda t: t[0])).encode("utf-8")


def child_names(children: Iterable[Child | Edge]) -> bytes:
    """:func:`names_of` of the children a directory is made of (the same as of its body)."""
    return names_of((c.name, c.kind if isinstance(c, Edge) else _kind_of(c.metadata), c.cap) for c in children)


def body_names(body: bytes) -> bytes:
    """:func:`names_of` of a directory body.  Raises :class:`BadSnapshot` (or ValueError)."""
    return names_of((n.name, n.kind, n.cap) for n in parse_children(["dirnode", {"children": json.loads(body)}]))


def parse_root(listing: JSON) -> Node:
    """The ``tree`` edge of a snapshot root listing."""
    try:
        info = listing[1]["children"][TREE][1]
    except (IndexError, KeyError, TypeError):
        raise BadSnapshot("not a lafs-backup snapshot (no 'tree' entry)")
    meta = info.get("metadata") or {}
    in_index = meta.get(INDEX_TREE)
    if isinstance(in_index, str):
        if not is_dir_id(in_index):
            raise BadSnapshot("the snapshot names its tree's index record wrongly")
        return Node(b"", KIND_DIR, in_index, {k: v for k, v in meta.items() if k != INDEX_TREE})
    return Node(b"", KIND_DIR, info.get("ro_uri") or info.get("rw_uri"), meta)


def mode_bits(mode: int | None, default: int) -> int:
    return stat.S_IMODE(mode) if mode is not None else default
