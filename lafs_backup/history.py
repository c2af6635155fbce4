"""The record of finished backups, and which of them a reference names (pure).

A reference is a snapshot cap, a generation number or ``latest``.
``latest`` is the newest backup of one source: the one the user named
(``--source``, or ``source.path``), else the only one there is.  Backups
are grouped by host and source, as restic groups snapshots by host and
paths: retention and ``latest`` look at one group at a time.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .errors import SnapshotError, UsageError


#: What a host keeps in place of the snapshot cap of a sealed repository's backup beyond its window:
#: this, and the backup's short id (its snapshot cap is the recovery key's to read).
SEALED = "sealed:"


def short_id(cap: str, ts: float) -> str:
    """The short id of the backup whose snapshot is ``cap``, made at ``ts``."""
    import hashlib

    return hashlib.sha256(f"{cap}\0{ts!r}".encode()).hexdigest()[:8]


def sealed_cap(b: "Backup") -> str:
    """What the host keeps of ``b``'s snapshot cap once ``b`` is beyond its window."""
    return SEALED + b.short_id


@dataclass(frozen=True)
class Backup:
    """A finished backup: as the repository records it, and as this machine's cache knows it."""

    #: Its identity: ``writer/record`` once the repository records it, ``local:ROW`` before.
    id: str
    generation: int
    cap: str
    source: bytes
    name: str
    ts: float
    ts_check: float | None = None
    link_dir: str | None = None
    link_name: str | None = None
    result_file: str | None = None
    host: str | None = None
    #: When a check last renewed the lease of every object of this backup (None: never).
    ts_lease: float | None = None
    tags: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    #: The row in this machine's cache (None: another machine made it).
    row: int | None = None
    #: Where the repository records it (None: not yet).
    writer: str | None = None
    record: str | None = None
    #: A copy made by ``copy``: the snapshot cap of the backup it copies (on the grid it was made on).
    original: str | None = None
    #: The other grids (gateway URLs) this machine copied it to.
    copies: tuple[str, ...] = ()
    #: A sealed repository's backup made here: its record's place and box, sealed once (JSON; None: none
    #: yet), and whether the custodian's inbox has its manifest and box (or there is no inbox).
    box: str | None = None
    sent: bool = False

    @property
    def source_text(self) -> str:
        return self.source.decode("utf-8", "backslashreplace")

    @property
    def rewritten_from(self) -> str | None:
        """A rewrite (``lafs-backup rewrite``): the short id of the backup it was made from."""
        note = self.summary.get("rewritten_from")
        return note if isinstance(note, str) else None

    @property
    def short_id(self) -> str:
        """A short name for it, the same on every machine (from its snapshot cap and time)."""
        if self.sealed:
            return self.cap[len(SEALED):]
        return short_id(self.cap, self.ts)

    @property
    def sealed(self) -> bool:
        """Is its snapshot cap beyond this host's reach (a sealed repository's backup beyond the host's
        window: only the recovery key reads it)?"""
        return self.cap.startswith(SEALED)


@dataclass(frozen=True)
class Run:
    """How the last run of a command ended, as the local history records it (``status``, the metrics)."""

    command: str
    #: When it ended.
    ts: float
    seconds: float | None
    #: Its exit code (see ``errors.ExitCode``): 0 done, 1 done with entries skipped, others failed.
    code: int
    #: What it found, by name: check's ``unhealthy`` and ``repaired`` objects, verify's ``problems``...
    details: dict[str, Any] = field(default_factory=dict)
    #: When a run of this command last ended well (None: never, as far as this machine knows).
    ts_ok: float | None = None

    @property
    def ok(self) -> bool:
        """Did it do its work (0; or 1, some entries skipped with a warning)?"""
        return self.code in (0, 1)


def merge(local: Sequence[Backup], records: Sequence[Any], checks: dict[str, tuple[float | None, float | None]],
          copies: dict[str, list[str]] | None = None, unopened: Iterable[tuple[str, str]] = ()) -> list[Backup]:
    """The backups the repository ``records`` (every machine's), each joined with this machine's own
    cache row when it made it, and this machine's backups the repository does not record yet.  A
    sealed repository's records this key cannot open (``unopened``: their places) are this machine's
    own cache rows when it made them (a host lists its own backups), and left out otherwise."""
    own = {(b.writer, b.record): b for b in local if b.record}
    sealed_own = [own.pop(place) for place in unopened if place in own]
    out = []
    for r in records:
        mine = own.pop((r.writer, r.name), None)
        ts_check, ts_lease = checks.get(r.cap, (None, None))
        name = os.path.basename(r.source.rstrip(b"/")).decode("utf-8", "replace")
        out.append(Backup(f"{r.writer}/{r.name}", r.generation, r.cap, r.source, mine.name if mine else name,
                          r.ts, ts_check, mine.link_dir if mine else None, mine.link_name if mine else None,
                          mine.result_file if mine else None, r.host, ts_lease, r.tags, r.summary,
                          mine.row if mine else None, r.writer, r.name, getattr(r, "original", None),
                          tuple((copies or {}).get(r.cap, ()))))
    # Not recorded there yet (the repository could not be written): this machine's own record stands.
    out += [b for b in local if not b.record]
    out += [dataclasses.replace(b, id=f"{b.writer}/{b.record}", copies=tuple((copies or {}).get(b.cap, ())))
            for b in sealed_own]
    return sorted(out, key=lambda x: (x.ts, x.id))


def check_tag(text: str) -> str:
    """A tag as the options that record one take it (``backup --tag``, ``tag --add``...): returned
    as it is; :class:`UsageError` when it is empty, starts or ends with a blank, holds a control
    character, or a ',' (listings join tags with it, and restic users write 'a,b' for two tags)."""
    import unicodedata

    if not text:
        raise UsageError("a tag cannot be empty")
    if text != text.strip():
        raise UsageError(f"a tag cannot start or end with a blank: {text!r}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise UsageError(f"a tag cannot hold a control character: {text!r}")
    if "," in text:
        raise UsageError(f"a tag cannot hold ',': {text!r} (give each tag its own option)")
    return text


#: What retention and ``latest`` may group backups by.
GROUPINGS = ("host", "source")


def parse_grouping(text: str) -> tuple[str, ...]:
    """``host,source`` (the default), ``source``, ``host`` or ``none``; UsageError otherwise."""
    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip().lower() for p in text.split(","))
    bad = [p for p in parts if p not in GROUPINGS]
    if bad or len(set(parts)) != len(parts):
        raise UsageError(f"--group-by takes host, source, 'host,source' or none, not {text!r}")
    return parts


def group_key(b: Backup, by: Sequence[str], pattern: str | None = None) -> tuple[str, ...]:
    """``pattern``: a glob source; the backups of every path it matches are one source."""
    src = pattern if pattern is not None and fnmatch.fnmatchcase(os.path.normpath(b.source_text), pattern) \
        else b.source_text
    return tuple((b.host or "") if k == "host" else src for k in by)


def groups(backups: Iterable[Backup], by: Sequence[str],
           pattern: str | None = None) -> dict[tuple[str, ...], list[Backup]]:
    """Backups by group, each group oldest first."""
    out: dict[tuple[str, ...], list[Backup]] = {}
    for b in sorted(backups, key=lambda x: (x.ts, x.id)):
        out.setdefault(group_key(b, by, pattern), []).append(b)
    return out


def matching(backups: Iterable[Backup], source: bytes | None = None, host: str | None = None,
             tags: Sequence[str] = ()) -> list[Backup]:
    """Backups of ``source`` (a path, compared after normalising) on ``host``, carrying every one
    of ``tags``, oldest first."""
    want = os.path.normpath(source) if source else None
    pattern = want is not None and glob.has_magic(want)  # a glob source: every path it matches

    def same_source(b: Backup) -> bool:
        have = os.path.normpath(b.source)
        return want is None or (fnmatch.fnmatchcase(have, want) if pattern else have == want)

    return sorted((b for b in backups
                   if same_source(b) and (host is None or b.host == host) and all(t in b.tags for t in tags)),
                  key=lambda x: (x.ts, x.id))


def unchanged(backups: Iterable[Backup], source: bytes, host: str | None, cap: str) -> Backup | None:
    """The newest backup of ``source`` made on ``host`` (whatever its tags), if its snapshot is
    ``cap``: a backup made now would be the very same snapshot (``backup --skip-if-unchanged``
    records nothing then).  None: there is none, or its snapshot is another."""
    want = os.path.normpath(source)
    last = max((b for b in backups if os.path.normpath(b.source) == want and b.host == host),
               key=lambda b: (b.ts, b.id), default=None)
    return last if last is not None and last.cap == cap else None


def resolve(backups: Sequence[Backup], ref: str, source: bytes | None = None,
            host: str | None = None, tags: Sequence[str] = ()) -> Backup:
    """The backup ``ref`` names; raises :class:`SnapshotError` when there is none, and
    :class:`UsageError` when ``latest`` could mean the newest of several sources."""
    if ref.startswith("URI:"):
        for b in backups:
            if b.cap == ref:
                return b
        raise SnapshotError(what="(cap)", problem="no such backup is recorded (see 'lafs-backup list')")
    if "/" in ref:  # the long form of an id, as the repository records it (writer/record)
        for b in backups:
            if b.id == ref:
                return b
        raise SnapshotError(what=ref, problem="no such backup is recorded (see 'lafs-backup list')")
    if ref.isdigit():
        # A generation number if a backup has it; else (4 digits or more) the start of an id.
        found = [b for b in backups if b.generation == int(ref)]
        if found:
            mine = [b for b in found if b.row is not None]  # generations number this machine's own backups
            if not mine and len({(b.host, b.source) for b in found}) > 1:
                raise UsageError(f"generation {ref} is a backup of several hosts or sources: name it by its id "
                                 "(from 'lafs-backup list')")
            return max(mine or found, key=lambda x: (x.ts, x.id))
        if len(ref) < 4:
            raise SnapshotError(what=ref, problem="no backup of that generation is recorded (see 'lafs-backup list')")
    if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
        found = [b for b in backups if b.short_id.startswith(ref)]
        if len(found) == 1:
            return found[0]
        raise SnapshotError(what=ref, problem="no such backup is recorded (see 'lafs-backup list')" if not found
                            else "several backups have an id starting so; give more of it")
    if ref != "latest":
        raise UsageError(f"a snapshot is an id (from 'list', or the start of one), 'latest', a generation number "
                         f"or a cap, not {ref!r}")
    candidates = matching(backups, source, host, tags)
    if not candidates:
        what = "latest" + (f" of {os.fsdecode(source)}" if source else "") + (f" on {host}" if host else "")
        raise SnapshotError(what=what, problem="no such backup is recorded (see 'lafs-backup list')")
    kinds = groups(candidates, ("host", "source") if host is None else ("source",))
    if len(kinds) > 1:
        names = ", ".join(sorted(" on ".join(reversed(k)) if len(k) == 2 else k[0] for k in kinds))
        raise UsageError(f"'latest' could be the newest backup of several sources ({names}): say which "
                         "with --source (and --host)")
    return candidates[-1]


#: Days a Tahoe lease lasts (``DEFAULT_RENEWAL_TIME``).
LEASE_DAYS = 31


def lease_floors(backups: Sequence[Backup]) -> dict[str, float]:
    """For each backup (by id), the earliest time any of its objects may have had its lease
    renewed: when a check last renewed them all, or else the oldest of its own time and the
    floors of the backups before it (an object it reuses from the cache came from one of them)."""
    out: dict[str, float] = {}
    running = float("inf")
    # (a sealed backup beyond this host's window: its leases are the custodian's, and say nothing of the others')
    for b in sorted((x for x in backups if not x.sealed), key=lambda x: (x.ts, x.id)):
        floor = b.ts_lease if b.ts_lease is not None else min(b.ts, running)
        out[b.id] = floor
        running = min(running, floor)
    return out


def expiring(backups: Sequence[Backup], now: float, days: float = LEASE_DAYS,
             margin_days: float = 7) -> list[tuple[Backup, float]]:
    """Backups some of whose objects' leases may end within ``margin_days``: (backup, when)."""
    floors = lease_floors(backups)
    out = []
    for b in backups:
        if b.id not in floors:  # (sealed: the custodian's)
            continue
        ends = floors[b.id] + days * 86400
        if ends - now < margin_days * 86400:
            out.append((b, ends))
    return out


def iso(ts: float) -> str:
    """A time as the commands print it: ISO 8601 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def as_json(b: Backup, floors: dict[str, float] | None = None) -> dict[str, Any]:
    """A backup as ``list --json`` and the reports show it."""
    floor = (floors or {}).get(b.id)
    return {"id": b.short_id, "generation": b.generation, "time": iso(b.ts), "timestamp": b.ts,
            "host": b.host, "source": b.source_text, "name": b.name, "cap": None if b.sealed else b.cap,
            "sealed": b.sealed, "tags": list(b.tags),
            "last_check": iso(b.ts_check) if b.ts_check else None,
            # (a sealed backup beyond this host's window: its leases are the custodian's to renew, and to tell)
            "leases_renewed": iso(b.ts_lease) if b.ts_lease else None,
            "leases_end": iso(floor + LEASE_DAYS * 86400) if floor is not None and not b.sealed else None,
            "copies": list(b.copies), "original": b.original, "rewritten_from": b.rewritten_from}


def choose(everything: list[Backup], refs: Sequence[str], source: bytes | None, latest_of: bytes | None,
           host: str | None = None, tags: Sequence[str] = ()) -> list[Backup]:
    """Backups named by cap, id, generation number or 'latest' (of ``latest_of``); all of them (of
    ``source``, ``host`` and ``tags``, if given) when ``refs`` is empty."""
    if not refs:
        return matching(everything, source, host, tags)
    out: list[Backup] = []
    for ref in refs:
        b = resolve(everything, ref, latest_of, host, tags)
        if b not in out:
            out.append(b)
    return out


def expiring_warning(backups: list[Backup], now: float, lease_days: float | None) -> str | None:
    """What to say of kept backups some of whose leases may end within a week (None: nothing).  A sealed
    repository's backups beyond this host's window are left out: their leases are the custodian's to renew
    (or the recovery key's, with ``check``)."""
    backups = [b for b in backups if not b.sealed]
    if lease_days is None or not backups:
        return None
    soon = expiring(backups, now, lease_days)
    if not soon:
        return None
    first = min(when for _, when in soon)
    gens = ", ".join(str(b.generation) for b, _ in soon[:10]) + (" ..." if len(soon) > 10 else "")
    return (f"{len(soon)} kept backup(s) (generation {gens}) may lose objects whose leases end from "
            f"{iso(first)} on; run 'lafs-backup check' to renew them")


def copies_warning(backups: list[Backup], want: int) -> str | None:
    """What to say of backups fewer grids hold than ``destination.copies`` asks (copies of another
    grid's backups count as held); None: nothing."""
    short = [b for b in backups if b.original is None and 1 + len(b.copies) < want]
    if not short:
        return None
    gens = ", ".join(str(b.generation) for b in short[:10]) + (" ..." if len(short) > 10 else "")
    return (f"{len(short)} backup(s) (generation {gens}) are held by fewer than {want} grids "
            "(destination.copies); run 'lafs-backup copy --to-url URL'")
