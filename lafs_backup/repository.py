"""The repository: the record of every backup, kept on the grid, so a new machine recovers all from one key.

A repository is a mutable Tahoe directory::

    lafs-backup-repository      a small file saying what this directory is
    writers/                    one directory per host and source, written only by that writer
        ann.3f2a9c0d51e7/       a writer: one child per backup, the snapshot's own cap, whose
            20261202T023012.481516Z.g41    link metadata is the backup's record
        ann.3f2a9c0d51e7.v2/    the same writer's next volume, once the one before holds
            ...                 ``VOLUME_RECORDS`` records (see below)
        ann.9b1c4e77a0d2/       a machine's tag changes (``lafs-backup tag``), one child each: a small
            20261203T101500.000000Z.t5e0f91aa  LIT cap, whose link metadata is the change

Tahoe's mutable directories are last-writer-wins, and two gateways writing
one directory at once can lose an update (``UncoordinatedWriteError``), so
each writer has a directory that only it writes, and the one shared write
(a writer's first link into ``writers/``) is verified by reading it back
and repeated until it holds.  Listing the repository costs one request for
``writers/`` and one per writer.

A backup's record is written once, and never rewritten: a change of its tags
is a record of its own (:class:`TagChange`), naming the backup by its place
(``writer/record``), in a directory that only the machine that made the
change writes (``tag`` runs on one machine take a lock).  The tags a backup
has are its record's, changed by every change that names it, in time order
(:func:`retagged`).  An older version reads such entries as no record at all.

A Tahoe mutable directory is one object: adding a child reads and writes it
whole, and so does reading one child.  A writer's records therefore go to
volumes of at most ``VOLUME_RECORDS`` (:func:`volume_for`, decided from the
local history, which knows where each of its records went): each a writer
directory of its own, read by every version as any writer is, so recording a
backup costs the same after a thousand as after ten.

The recovery key (:class:`RepoKey`) is a bearer secret: the repository's
write cap, and how to reach the grid (its introducer FURL and encoding).

A sealed repository (``init --sealed``, see ``sealing.py``) records the same
things, each sealed to the owner's public key: an entry's child is a small LIT
cap, and its link metadata is a box (:data:`SEALED_FORMAT`) holding the record
or tag change, with the snapshot's cap.  Its writers' directories are named by
a digest keyed by the repository's write cap.  The host's key (a
``lafs-backup-key-v2:`` key with the public half only) adds records; the
recovery key (with the private half, and the read cap of the custodian's own
directory, which keeps a copy of every record) also reads them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from . import __version__
from .errors import GatewayError, GridError, UsageError
from .protocols import JSON, GatewayLike
from .sealing import OpenKey, SealError, SealKey

log = logging.getLogger(__name__)

KEY_PREFIX = "lafs-backup-key-v1:"
#: A sealed repository's keys (an older version refuses them, rather than write records in the clear).
SEALED_KEY_PREFIX = "lafs-backup-key-v2:"
MARKER = "lafs-backup-repository"
WRITERS = "writers"
RECORD_FORMAT = 1
TAGS_FORMAT = 1
#: The link metadata of a sealed entry: ``{"lafs_backup_sealed": 1, "box": BASE64}``.
SEALED_FORMAT = 1
#: Records a writer puts in one directory before it starts the next volume (see the module docstring).
VOLUME_RECORDS = 100
#: A volume's directory: the writer's, and this and its number (the first volume is the writer's own).
_VOLUME = re.compile(r"\.v([0-9]+)$")
#: The "source" a machine's tag changes are filed under: a writer directory of their own (no real
#: source holds a NUL, so no backup's writer can have its name).
TAGS_SOURCE = b"\0tags"


@dataclass(frozen=True, repr=False)
class RepoKey:
    """What a machine needs to find a repository: its write cap and, when known, the grid.  A sealed
    repository's key also holds its public key (``seal``); its recovery key the private one
    (``open``) and the read cap of the custodian's own directory (``custodian``)."""

    writecap: str
    furl: str | None = None
    needed: int | None = None
    happy: int | None = None
    total: int | None = None
    seal: str | None = None
    open: str | None = None
    custodian: str | None = None
    #: A recovery key's: the write cap of the owner's directory, where it cancels forget requests (the
    #: custodian reads it).
    owner: str | None = None

    def __repr__(self) -> str:  # (a bearer secret: never in a traceback or a log line)
        return f"RepoKey(sealed={self.sealed}, opens={self.opens})"

    @property
    def sealed(self) -> bool:
        """Are the repository's records sealed?"""
        return self.seal is not None

    @property
    def opens(self) -> bool:
        """Does this key open sealed records (a recovery key; never the host's)?"""
        return self.open is not None

    def sealer(self) -> SealKey | None:
        return SealKey(self.seal) if self.seal else None

    def opener(self) -> OpenKey | None:
        return OpenKey(self.open) if self.open else None

    def host_key(self) -> "RepoKey":
        """This key without what opens records: what a backup host keeps."""
        return dataclasses.replace(self, open=None, custodian=None, owner=None)

    def encode(self) -> str:
        body = {"repo": self.writecap, "furl": self.furl, "needed": self.needed, "happy": self.happy,
                "total": self.total, "seal": self.seal, "open": self.open, "custodian": self.custodian,
                "owner": self.owner}
        raw = json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":"))
        prefix = SEALED_KEY_PREFIX if self.sealed else KEY_PREFIX
        return prefix + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "RepoKey":
        """Parse a key; :class:`UsageError` (never naming the key's content) when it is not one."""
        text = text.strip()
        prefix = next((p for p in (KEY_PREFIX, SEALED_KEY_PREFIX) if text.startswith(p)), None)
        if prefix is None:
            raise UsageError("not a lafs-backup recovery key (it starts with 'lafs-backup-key-v1:' or "
                             "'lafs-backup-key-v2:')")
        payload = text[len(prefix):]
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            cap = body["repo"]
            if not (isinstance(cap, str) and cap.startswith("URI:DIR2:")):
                raise ValueError
            ints = {k: body.get(k) for k in ("needed", "happy", "total")}
            if any(v is not None and not isinstance(v, int) for v in ints.values()):
                raise ValueError
            furl = body.get("furl")
            if furl is not None and not (isinstance(furl, str) and furl.startswith("pb://")):
                raise ValueError
            seal, opens, custodian = body.get("seal"), body.get("open"), body.get("custodian")
            owner = body.get("owner")
            if owner is not None and not (isinstance(owner, str) and owner.startswith(("URI:DIR2:",
                                                                                        "URI:DIR2-MDMF:"))):
                raise ValueError
            if (seal is None) != (prefix == KEY_PREFIX) or (opens is not None and seal is None):
                raise ValueError
            if seal is not None:
                SealKey.parse(seal)
            if opens is not None and not OpenKey.parse(opens).public.same(SealKey.parse(seal)):
                raise ValueError
            if custodian is not None and not (isinstance(custodian, str) and custodian.startswith(
                    ("URI:DIR2-RO:", "URI:DIR2-MDMF-RO:"))):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError("the recovery key is damaged (copy it again, whole, from the machine that made it)")
        return cls(cap, furl, ints["needed"], ints["happy"], ints["total"], seal, opens, custodian, owner)


@dataclass(frozen=True)
class Listing:
    """What the repository holds: every record and tag change this key reads, and the places
    (writer, name) of the sealed entries it cannot open (a host's key opens none)."""

    records: list["Record"]
    changes: list["TagChange"]
    unopened: list[tuple[str, str]]


@dataclass(frozen=True)
class Record:
    """One backup as the repository records it."""

    cap: str
    host: str
    source: bytes
    ts: float
    generation: int
    tags: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    #: Where it is: the writer's directory and the entry's name in it.
    writer: str = ""
    name: str = ""
    #: A copy (``lafs-backup copy``): the snapshot cap it was copied from, on the grid it was made on.
    original: str | None = None
    #: In a sealed repository: its entry's box, as :meth:`Repository.add` wrote it (the custodian keeps a copy).
    box: str | None = None
    #: In a sealed repository: found only among the custodian's copies (its entry is gone from the repository).
    kept_by_custodian: bool = False

    def metadata(self) -> dict[str, Any]:
        """The link metadata that is the record on the grid."""
        try:
            source: str | dict[str, str] = self.source.decode("utf-8")
        except UnicodeDecodeError:
            source = {"b64": base64.b64encode(self.source).decode()}
        out = {"lafs_backup_record": RECORD_FORMAT, "host": self.host, "source": source, "time": self.ts,
               "generation": self.generation, "tags": list(self.tags), "summary": self.summary,
               "version": self.version}
        if self.original is not None:
            out["original"] = self.original
        return out

    @classmethod
    def from_metadata(cls, cap: str, meta: object, writer: str, name: str) -> "Record | None":
        """The record an entry's link metadata holds (None: not a record this version can read)."""
        if not isinstance(meta, dict) or meta.get("lafs_backup_record") != RECORD_FORMAT:
            return None
        try:
            src = meta["source"]
            source = src.encode("utf-8") if isinstance(src, str) else base64.b64decode(src["b64"])
            original = meta.get("original")
            return cls(cap, str(meta["host"]), source, float(meta["time"]), int(meta["generation"]),
                       tuple(str(t) for t in meta.get("tags") or ()), dict(meta.get("summary") or {}),
                       str(meta.get("version", "")), writer, name, original if isinstance(original, str) else None)
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class TagChange:
    """A change of one backup's tags (``lafs-backup tag``): ``set`` replaces them (None: it does
    not), then ``remove`` takes some away and ``add`` adds some (at the end, each once)."""

    #: The backup's place in the repository: ``writer/record`` (its ``history.Backup.id``).
    target: str
    ts: float
    host: str
    set: tuple[str, ...] | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    #: Where it is: its writer's directory and its entry's name there.
    writer: str = ""
    name: str = ""

    def applied(self, tags: Sequence[str]) -> tuple[str, ...]:
        """``tags`` as this change leaves them (in their order, new ones last)."""
        out: list[str] = []
        for t in (self.set if self.set is not None else tags):
            if t not in out and t not in self.remove:
                out.append(t)
        return tuple(out + [t for t in dict.fromkeys(self.add) if t not in out])

    def metadata(self) -> dict[str, Any]:
        """The link metadata that is the change on the grid."""
        return {"lafs_backup_tags": TAGS_FORMAT, "target": self.target, "time": self.ts, "host": self.host,
                "set": list(self.set) if self.set is not None else None, "add": list(self.add),
                "remove": list(self.remove), "version": __version__}

    @classmethod
    def from_metadata(cls, meta: object, writer: str, name: str) -> "TagChange | None":
        """The change an entry's link metadata holds (None: not a change this version can read)."""
        if not isinstance(meta, dict) or meta.get("lafs_backup_tags") != TAGS_FORMAT:
            return None
        try:
            tags = {k: tuple(str(t) for t in meta.get(k) or ()) for k in ("set", "add", "remove")}
            return cls(str(meta["target"]), float(meta["time"]), str(meta.get("host", "")),
                       tags["set"] if meta.get("set") is not None else None, tags["add"], tags["remove"],
                       writer, name)
        except (KeyError, TypeError, ValueError):
            return None


def retagged(records: Iterable[Record], changes: Iterable[TagChange]) -> list[Record]:
    """``records`` with the tags every change that names one gives it, applied in time order
    (changes made at the same time: in the order of their places)."""
    by_target: dict[str, list[TagChange]] = {}
    for c in sorted(changes, key=lambda c: (c.ts, c.writer, c.name)):
        by_target.setdefault(c.target, []).append(c)
    out = []
    for r in records:
        tags = r.tags
        for c in by_target.get(f"{r.writer}/{r.name}", ()):
            tags = c.applied(tags)
        out.append(r if tags == r.tags else dataclasses.replace(r, tags=tags))
    return out


def writer_name(host: str, source: bytes, key: RepoKey | None = None) -> str:
    """The directory of one writer: its host, and a digest of its source (names stay short and safe).
    In a sealed repository (``key``), a digest of both keyed by the repository's write cap: the name
    tells neither."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64] or "host"
    plain = f"{safe}.{hashlib.sha256(source).hexdigest()[:12]}"
    if key is None or not key.sealed:
        return plain
    secret = hashlib.sha256(b"lafs-backup sealed writer\0" + key.writecap.encode("ascii")).digest()
    return "s" + hmac.new(secret, plain.encode("utf-8") + b"\0" + source, hashlib.sha256).hexdigest()[:20]


def seal_box(key: RepoKey, cap: str, meta: dict[str, Any], writer: str, name: str) -> str:
    """The box (base64) holding ``cap``, ``meta`` and the place ``writer/name`` of a sealed repository's
    entry.  Boxes are random: a record is sealed once, and that box is what every attempt writes."""
    sealer = key.sealer()
    assert sealer is not None
    body = json.dumps({"cap": cap, "meta": meta, "place": [writer, name]}, separators=(",", ":")).encode()
    return base64.b64encode(sealer.seal(body)).decode("ascii")


def sealed_child(box: str) -> tuple[str, dict[str, Any]]:
    """The child and link metadata of a sealed entry: a LIT marker, and the box."""
    from .caps import lit_cap

    return lit_cap(b"sealed"), {"lafs_backup_sealed": SEALED_FORMAT, "box": box}


def seal_entry(key: RepoKey, cap: str, meta: dict[str, Any], writer: str, name: str) -> tuple[str, dict[str, Any]]:
    """The child and link metadata of a sealed repository's entry for ``cap`` and ``meta`` at
    ``writer/name`` (see the module docstring)."""
    return sealed_child(seal_box(key, cap, meta, writer, name))


def is_sealed(meta: object) -> bool:
    """Is this link metadata a sealed entry's?"""
    return isinstance(meta, dict) and meta.get("lafs_backup_sealed") == SEALED_FORMAT


def open_entry(opener: OpenKey, meta: object) -> tuple[str, Any, str, str] | None:
    """(cap, link metadata, writer, name) a sealed entry holds (None: not one, or not for this key)."""
    if not is_sealed(meta):
        return None
    assert isinstance(meta, dict)
    try:
        body = json.loads(opener.open(base64.b64decode(meta["box"], validate=True)))
        cap, inner, (writer, name) = body["cap"], body["meta"], body["place"]
        if not (isinstance(cap, str) and isinstance(writer, str) and isinstance(name, str)):
            return None
        return cap, inner, writer, name
    except (SealError, KeyError, TypeError, ValueError):
        return None


def volume_for(writer: str, held: Mapping[str, int], limit: int | None = None) -> str:
    """The directory ``writer``'s next record goes to: its newest volume that ``held`` (directory ->
    how many of the writer's records it holds, as this machine knows them) shows, or the next one
    when that holds ``limit`` (default ``VOLUME_RECORDS``) already.  Volume 1 is ``writer`` itself,
    volume n > 1 ``writer.vn``."""
    limit = VOLUME_RECORDS if limit is None else limit
    newest, count = 1, 0
    for name, n in held.items():
        if name == writer:
            number = 1
        else:
            m = _VOLUME.search(name)
            if m is None or name[:m.start()] != writer:
                continue
            number = int(m.group(1))
        if number >= newest:
            newest, count = number, n
    if count >= limit:
        newest += 1
    return volume_name(writer, newest)


def volume_name(writer: str, number: int) -> str:
    """The directory of ``writer``'s volume ``number`` (1: the writer's own)."""
    return writer if number <= 1 else f"{writer}.v{number}"


def record_name(ts: float, generation: int) -> str:
    import time

    frac = f"{ts % 1:.6f}"[2:]
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f".{frac}Z.g{generation}"


def change_name(ts: float) -> str:
    """The entry of a tag change: its time, and a random part (two changes at once never share it)."""
    import secrets
    import time

    frac = f"{ts % 1:.6f}"[2:]
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f".{frac}Z.t{secrets.token_hex(4)}"


class Repository:
    """A repository on the grid, through ``gateway`` (see the module docstring)."""

    def __init__(self, gateway: GatewayLike, key: RepoKey, attempts: int = 8) -> None:
        self.gw = gateway
        self.key = key
        self._attempts = attempts
        self._writers_cap: str | None = None

    @classmethod
    async def create(cls, gateway: GatewayLike, furl: str | None = None, needed: int | None = None,
                     happy: int | None = None, total: int | None = None,
                     opener: OpenKey | None = None) -> "Repository":
        """Make a new, empty repository on the grid; sealed to ``opener``'s public half when given (its
        key is then the recovery key, whole: the caller keeps only :meth:`RepoKey.host_key` of it)."""
        from .caps import lit_cap

        root = await gateway.mkdir_mutable()
        writers = await gateway.mkdir_mutable()
        body = {"lafs_backup_repository": 1, **({"sealed": 1} if opener else {})}
        marker = lit_cap(json.dumps(body).encode())  # small enough to live in its cap
        await gateway.set_children(root, {MARKER: (marker, None), WRITERS: (writers, None)})
        seal = opener.public.text if opener else None
        return cls(gateway, RepoKey(root, furl, needed, happy, total, seal, opener.text if opener else None))

    async def _writers(self) -> str:
        if self._writers_cap is None:
            listing = await self._listing(self.key.writecap)
            if MARKER not in listing:
                raise GridError(problem="the recovery key's directory is not a lafs-backup repository")
            from .caps import lit_data

            marker = lit_data(listing[MARKER][2] or "")
            try:
                sealed = bool(json.loads(marker or b"{}").get("sealed"))
            except (ValueError, AttributeError):
                sealed = False
            if sealed != self.key.sealed:
                raise GridError(problem="the repository's records are sealed, and this key is not a sealed "
                                        "repository's (lafs-backup-key-v2)" if sealed else
                                        "the key is a sealed repository's, and the repository's records are not sealed")
            entry = listing.get(WRITERS)
            if entry is None or not entry[1]:
                raise GridError(problem="the repository is damaged: it has no writers directory")
            self._writers_cap = entry[1]
        return self._writers_cap

    async def _listing(self, cap: str) -> dict[str, tuple[str, str | None, str | None, JSON]]:
        """name -> (type, write cap or None, read cap, metadata) of a directory's children."""
        try:
            listing = await self.gw.get_json(cap)
            children = listing[1]["children"]
        except (IndexError, KeyError, TypeError):
            raise GridError(problem="the repository is damaged: a directory listing is not one")
        except GatewayError as e:
            if e.status in (404, 410):
                raise GridError(problem=f"the repository cannot be read from the grid ({e.reason or e.status}): "
                                        "is this the grid it was made on?")
            raise
        return {name: (ntype, info.get("rw_uri"), info.get("ro_uri"), info.get("metadata"))
                for name, (ntype, info) in children.items()}

    async def records(self) -> list[Record]:
        """Every backup recorded by every writer, oldest first, with the tags its tag changes give it."""
        found = await self.listing()
        return retagged(found.records, found.changes)

    async def contents(self) -> tuple[list[Record], list[TagChange]]:
        """Every backup recorded by every writer (oldest first, its tags as recorded), and every
        tag change."""
        found = await self.listing()
        return found.records, found.changes

    async def listing(self) -> Listing:
        """Every record and tag change this key reads (records oldest first, their tags as
        recorded), and the places of the sealed entries it cannot open.  A recovery key of a sealed
        repository also reads the custodian's copies, so a record gone from the repository is listed."""
        out: list[Record] = []
        changes: list[TagChange] = []
        unopened: list[tuple[str, str]] = []
        opener = self.key.opener()
        for writer, (_, rw, ro, _) in sorted((await self._listing(await self._writers())).items()):
            cap = rw or ro
            if cap is None:
                continue
            for name, (_, _, snap, meta) in (await self._listing(cap)).items():
                if is_sealed(meta):
                    opened = open_entry(opener, meta) if opener else None
                    if opened is None:
                        unopened.append((writer, name))
                        continue
                    snap, meta = opened[0], opened[1]
                rec = Record.from_metadata(snap or "", meta, writer, name) if snap else None
                if rec is not None:
                    out.append(rec)
                    continue
                change = TagChange.from_metadata(meta, writer, name)
                if change is not None:
                    changes.append(change)
        if opener is not None and self.key.custodian:
            out += await self._custodian_copies(opener, {(r.writer, r.name, r.cap) for r in out})
        out.sort(key=lambda r: (r.ts, r.name))
        return Listing(out, changes, unopened)

    async def _custodian_copies(self, opener: OpenKey, have: set[tuple[str, str, str]]) -> list[Record]:
        """The records among the custodian's copies (its own directory: a folder per writer, an entry per
        backup whose link metadata holds the record's box) that the repository no longer holds."""
        assert self.key.custodian is not None
        out: list[Record] = []
        for _, (ntype, _, ro, _) in sorted((await self._listing(self.key.custodian)).items()):
            if ntype != "dirnode" or ro is None:
                continue
            for _, (_, _, _, meta) in sorted((await self._listing(ro)).items()):
                box = meta.get("record_box") if isinstance(meta, dict) else None
                opened = open_entry(opener, {"lafs_backup_sealed": SEALED_FORMAT, "box": box}) if box else None
                if opened is None:
                    continue
                cap, inner, writer, name = opened
                rec = Record.from_metadata(cap, inner, writer, name)
                if rec is not None and (writer, name, cap) not in have:
                    have.add((writer, name, cap))
                    out.append(dataclasses.replace(rec, kept_by_custodian=True))
        return out

    async def _writer_dir(self, writer: str, create: bool) -> str | None:
        """The write cap of a writer's directory, made and linked (verified) when ``create``."""
        writers = await self._writers()
        for _ in range(self._attempts):
            entry = (await self._listing(writers)).get(writer)
            if entry is not None and entry[1]:
                return entry[1]
            if not create:
                return None
            made = await self.gw.mkdir_mutable()
            # The one write others may make at the same time: link, then read back to be sure it held.
            await self.gw.set_children(writers, {writer: (made, None)}, replace=False)
        raise GridError(problem="could not add this machine's directory to the repository (other writers "
                                "kept changing it); try again")

    async def add(self, rec: Record) -> Record:
        """Record a backup under its writer (``rec.writer``: the directory, one of the writer's
        volumes, see :func:`volume_for`; default: the writer's first); returns the record with its place.
        In a sealed repository ``rec.box`` is the box to write (sealed once, with this place: an attempt
        after a lost answer writes the same, and finds it there); None: sealed now."""
        writer = rec.writer or writer_name(rec.host, rec.source, self.key)
        name = rec.name or record_name(rec.ts, rec.generation)
        wcap = await self._writer_dir(writer, create=True)
        assert wcap is not None
        child, meta = ((rec.cap, rec.metadata()) if not self.key.sealed else
                       sealed_child(rec.box or seal_box(self.key, rec.cap, rec.metadata(), writer, name)))
        for _ in range(self._attempts):
            await self.gw.set_children(wcap, {name: (child, meta)}, replace=False)
            there = (await self._listing(wcap)).get(name)
            if there is not None and there[2] == child and (
                    not self.key.sealed or isinstance(there[3], dict) and there[3].get("box") == meta["box"]):
                return Record(rec.cap, rec.host, rec.source, rec.ts, rec.generation, rec.tags, rec.summary,
                              rec.version, writer, name, rec.original, meta.get("box") if self.key.sealed else None)
        raise GridError(problem="the backup could not be recorded in the repository; it is kept in the "
                                "local cache and recorded there by the next run")

    async def add_changes(self, host: str, changes: Sequence[TagChange]) -> list[TagChange]:
        """Record tag changes made on ``host``, in its own directory (made on first use), in one
        write, read back until they all hold; returns them with their places.  The caller holds
        this machine's lock on its tag changes (no other writer writes that directory)."""
        from .caps import lit_cap

        writer = writer_name(host, TAGS_SOURCE, self.key)
        wcap = await self._writer_dir(writer, create=True)
        assert wcap is not None
        placed = [dataclasses.replace(c, writer=writer, name=change_name(c.ts)) for c in changes]
        # Each links a small LIT cap (no shares, nothing to renew): the change is its link metadata.
        marker = lit_cap(json.dumps({"lafs_backup_tags": TAGS_FORMAT}).encode())
        entries = {c.name: (marker, c.metadata()) if not self.key.sealed else
                   seal_entry(self.key, marker, c.metadata(), writer, c.name) for c in placed}
        for _ in range(self._attempts):
            await self.gw.set_children(wcap, entries, replace=False)
            there = await self._listing(wcap)
            if all(c.name in there and (TagChange.from_metadata(there[c.name][3], writer, c.name) == c
                                        if not self.key.sealed else
                                        isinstance(there[c.name][3], dict)
                                        and there[c.name][3].get("box") == entries[c.name][1]["box"])
                   for c in placed):
                return placed
        raise GridError(problem="the tag changes could not be recorded in the repository; try again")

    async def forget(self, recs: Iterable[Record], host: str | None = None) -> None:
        """Remove records from their writers' directories; with ``host``, also the tag changes
        made on ``host`` (the caller's own) that name them."""
        gone = []
        for rec in recs:
            wcap = await self._writer_dir(rec.writer, create=False)
            if wcap is not None:
                await self.gw.unlink(wcap, rec.name)
            gone.append(f"{rec.writer}/{rec.name}")
        # (a sealed repository's host cannot read its own tag changes: those naming a forgotten backup stay,
        # and name nothing any more)
        wcap = (await self._writer_dir(writer_name(host, TAGS_SOURCE, self.key), create=False)
                if host and gone and not self.key.sealed else None)
        if wcap is not None:
            for name, (_, _, _, meta) in (await self._listing(wcap)).items():
                change = TagChange.from_metadata(meta, "", name)
                if change is not None and change.target in gone:
                    await self.gw.unlink(wcap, name)
