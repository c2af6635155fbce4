"""Lease manifests and the custodian's inbox, as values: what a manifest holds, whether the next one is
whole or a delta on the one before, how a chain of them resolves, and how inbox entries are named (pure).

A manifest is an immutable file the host writes after each backup: the verify caps of every object the
backup references (LIT objects have no shares, so none of theirs).  It is a delta on the writer's
previous manifest (the verify caps added and removed, and that manifest's cap), except every
``FULL_EVERY``-th one, or the first, which lists them all.  The custodian resolves a chain from its
newest full manifest on.  Only verify caps are accepted in one: a cap that reads refuses the whole
manifest (:class:`ManifestError`), so the custodian never keeps it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..errors import LafsBackupError
from .targets import NotAVerifyCap, ReadCapRefused, target_of

#: The format of a manifest and of the link metadata (the envelope) of manifests and forget requests.
FORMAT = 1
#: A whole manifest at least every this many backups of a writer: a chain never grows longer.
FULL_EVERY = 16
#: The inbox's folder of forget requests (each writer's manifests are in a folder of its own).
FORGET = "forget"
#: The largest manifest the custodian reads (a backup referencing a million objects is ~150 MB whole).
MAX_SIZE = 256 * 1024 * 1024
#: A record name as ``repository.record_name`` makes it (a rewrite's: and ``.r`` and a digest).
_RECORD = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z\.g[0-9]+(\.r[0-9a-f]{8})?")
_FOLDER = re.compile(r"[0-9a-f]{16}")


class ManifestError(LafsBackupError):
    """The manifest {what} cannot be used: {problem}"""


@dataclass(frozen=True)
class Manifest:
    """One backup's manifest: ``added`` and ``removed`` verify caps on the manifest ``previous`` (a read
    cap of that immutable file; None: this one is whole, and ``added`` is every object), and how many
    objects the backup references in all (``objects``: the resolved chain must give as many)."""

    added: frozenset[str]
    removed: frozenset[str] = frozenset()
    previous: str | None = None
    objects: int = 0
    #: Manifests since the last whole one (0: this one is whole).
    depth: int = 0

    @property
    def whole(self) -> bool:
        return self.previous is None

    def encode(self) -> bytes:
        """The file's bytes: canonical JSON, caps sorted."""
        body: dict[str, Any] = {"lafs_backup_manifest": FORMAT, "objects": self.objects, "depth": self.depth,
                                "previous": self.previous, "added": sorted(self.added),
                                "removed": sorted(self.removed)}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii")

    @classmethod
    def decode(cls, data: bytes, what: str = "file") -> "Manifest":
        """The manifest in ``data``.  Raises :class:`ManifestError` when it is not one, or when any cap in
        it reads (or writes) the object: a manifest holds verify caps only (``previous`` excepted, the
        read cap of a manifest).  The message never repeats a cap."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("lafs_backup_manifest") != FORMAT:
                raise ValueError
            added, removed = body["added"], body["removed"]
            previous, objects, depth = body.get("previous"), body["objects"], body.get("depth", 0)
            if not (isinstance(added, list) and isinstance(removed, list) and isinstance(objects, int)
                    and isinstance(depth, int) and (previous is None or isinstance(previous, str))):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ManifestError(what=what, problem="it is not a lafs-backup manifest") from None
        for cap in (*added, *removed):
            if not isinstance(cap, str):
                raise ManifestError(what=what, problem="it lists a value that is not a cap")
            try:
                target_of(cap)
            except ReadCapRefused as e:
                raise ManifestError(what=what, problem=f"it holds {e.details['what']}, which reads an object: "
                                                       "a manifest lists verify caps only") from None
            except NotAVerifyCap:
                raise ManifestError(what=what, problem="it lists a value that is not a verify cap") from None
        if previous is not None and not previous.startswith("URI:CHK:"):
            raise ManifestError(what=what, problem="its previous manifest is not an immutable file")
        return cls(frozenset(added), frozenset(removed), previous, objects, depth)


@dataclass(frozen=True)
class Last:
    """What the host remembers of a writer's last manifest, to write the next one as a delta."""

    cap: str
    caps: frozenset[str]
    depth: int


def plan(caps: Iterable[str], last: Last | None, full_every: int = FULL_EVERY) -> Manifest:
    """The manifest of a backup referencing ``caps`` (verify caps): a delta on ``last`` when there is
    one and the chain stays shorter than ``full_every``, else whole."""
    now = frozenset(caps)
    if last is None or last.depth + 1 >= full_every:
        return Manifest(now, objects=len(now))
    return Manifest(now - last.caps, last.caps - now, last.cap, len(now), last.depth + 1)


def resolve(cap: str, read: Callable[[str], Manifest], memo: dict[str, frozenset[str]] | None = None,
            limit: int = 4 * FULL_EVERY) -> frozenset[str]:
    """Every verify cap the backup of manifest ``cap`` references: its chain applied from the newest
    whole manifest on (``read`` gives a manifest by its cap; ``memo`` keeps resolved ones between calls).
    Raises :class:`ManifestError` for a chain longer than ``limit`` (a loop) or one that does not give
    the count of objects the manifest says."""
    memo = {} if memo is None else memo
    chain: list[tuple[str, Manifest]] = []
    at: str | None = cap
    base: frozenset[str] = frozenset()
    while at is not None:
        if at in memo:
            base = memo[at]
            break
        if len(chain) > limit:
            raise ManifestError(what="chain", problem=f"it is longer than {limit} manifests")
        m = read(at)
        chain.append((at, m))
        at = m.previous
    for at, m in reversed(chain):
        base = (base - m.removed) | m.added
        if len(base) != m.objects:
            raise ManifestError(what="chain", problem=f"it resolves to {len(base)} objects where its manifest "
                                                      f"says {m.objects}")
        memo[at] = base
    return base


def folder_name(repo_writecap: str, writer: str) -> str:
    """The inbox folder of a writer (``repository.writer_name``): a digest keyed by the repository's write
    cap, so the custodian sees neither the host's name nor its source's, and cannot confirm a guess."""
    key = hashlib.sha256(b"lafs-backup custodian folder\0" + repo_writecap.encode("ascii")).digest()
    return hmac.new(key, writer.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def is_folder(name: str) -> bool:
    return bool(_FOLDER.fullmatch(name))


def is_record(name: str) -> bool:
    return bool(_RECORD.fullmatch(name))


def manifest_envelope(record: str, size: int) -> dict[str, Any]:
    """The link metadata of a manifest in the inbox: the record's name and the manifest's size, nothing
    of what the backup is (its source, host and tags stay in the repository's record)."""
    return {"lafs_backup_manifest": FORMAT, "record": record, "size": size}


def forget_envelope(folder: str, record: str) -> dict[str, Any]:
    """The link metadata of a forget request: which backup (its writer's folder and record name)."""
    return {"lafs_backup_forget": FORMAT, "folder": folder, "record": record}


def forget_name(folder: str, record: str) -> str:
    return f"{folder}.{record}"


def read_envelope(meta: object, record: str) -> int | None:
    """The size a manifest's link metadata gives (None: not a manifest's envelope for ``record``)."""
    if not isinstance(meta, Mapping) or meta.get("lafs_backup_manifest") != FORMAT or meta.get("record") != record:
        return None
    size = meta.get("size")
    return size if isinstance(size, int) and 0 < size <= MAX_SIZE else None


def read_forget(meta: object) -> tuple[str, str] | None:
    """(folder, record) a forget request's link metadata names (None: not a forget request)."""
    return _naming(meta, "lafs_backup_forget")


def _naming(meta: object, kind: str) -> tuple[str, str] | None:
    """(folder, record) the link metadata of ``kind`` (a forget request, a cancel) names (None: not one)."""
    if not isinstance(meta, Mapping) or meta.get(kind) != FORMAT:
        return None
    folder, record = meta.get("folder"), meta.get("record")
    if isinstance(folder, str) and isinstance(record, str) and is_folder(folder) and is_record(record):
        return folder, record
    return None


#: The largest sealed record the custodian keeps from a manifest's envelope (base64; a record is ~1 KiB).
MAX_BOX = 64 * 1024
_BOX = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def read_box(meta: object) -> str | None:
    """The sealed record a manifest's envelope carries (a sealed repository's; None: none, or not one)."""
    box = meta.get("record_box") if isinstance(meta, Mapping) else None
    return box if isinstance(box, str) and 0 < len(box) <= MAX_BOX and _BOX.fullmatch(box) else None


def cancel_envelope(folder: str, record: str) -> dict[str, Any]:
    """The link metadata of the owner's cancel of a forget request (in the owner's directory)."""
    return {"lafs_backup_cancel": FORMAT, "folder": folder, "record": record}


def cancel_name(folder: str, record: str) -> str:
    return f"cancel.{folder}.{record}"


def read_cancel(meta: object) -> tuple[str, str] | None:
    """(folder, record) the owner's cancel names (None: not a cancel)."""
    return _naming(meta, "lafs_backup_cancel")
