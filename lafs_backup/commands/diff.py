"""``diff``: what changed between two snapshots, or between a snapshot and its source as it is now."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from ..backup.source import is_url
from ..errors import UsageError
from ..report import plural
from ..history import Backup, iso
from ..read.diff import Change, LiveDiff, SnapshotDiff, SourceDiff
from ..read.reader import Reader
from ..resources import Opener
from .which import latest_of, resolve_backup
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup diff latest --live'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``diff``."""
    options.snapshot(p, "the backup to compare", dest="a")
    options.snapshot(p, "the backup to compare it with (not with --live)", dest="b", nargs="?",
                     metavar="OTHER")
    p.add_argument("--live", action="store_true", help="compare with the source directory as it is now")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    if ns.live == (ns.b is not None):
        raise UsageError("give either two snapshots (diff A B) or one and --live")
    rep = o.rt.reporter
    found: list[Change] = []
    cap_a, rec = await resolve_backup(o, ns.a, ns.source, ns.host, ns.tag)
    cap_b, rec_b = await resolve_backup(o, ns.b, ns.source, ns.host, ns.tag) if ns.b is not None else ("", None)
    # Each record names both sides by their one id (see history.Backup.short_id); --live's other side is "live".
    sides = {"from": _id(rec), "to": _id(rec_b) if ns.b is not None else "live"}

    def emit(c: Change) -> None:
        found.append(c)
        rep.emit(c.line(), {**c.as_dict(), **sides})

    rep.info(f"comparing {_side(rec)} with "
             + (_side(rec_b) if ns.b is not None else "its source as it is now"))
    reader = Reader(await o.gateway())
    try:
        if ns.b is not None:
            await reader.load_differences(cap_a, cap_b)
            await SnapshotDiff(reader, emit).run(cap_a, cap_b)
        else:
            src = rec.source if rec is not None else latest_of(o, ns.source)
            if src and is_url(os.fsdecode(src)):
                await _remote_live(o, reader, os.fsdecode(src), emit, cap_a)
            elif not src or not os.path.isdir(src):
                raise UsageError("--live needs the snapshot's source directory: it is not recorded for this "
                                 "snapshot and source.path is not set")
            else:
                await LiveDiff(reader, src, emit, o.config.filter).run(cap_a)
    finally:
        reader.close()
    rep.info(f"{plural(len(found), 'difference')} between {sides['from'] or 'the cap'} and {sides['to'] or 'the cap'}")
    return 1 if found else 0


def _id(b: Backup | None) -> str | None:
    """A side's id (None: a cap not recorded here)."""
    return b.short_id if b is not None else None


def _side(b: Backup | None) -> str:
    return f"{b.short_id} (generation {b.generation}, {iso(b.ts)})" if b is not None else "a cap not recorded here"


async def _remote_live(o: Opener, reader: Reader, url: str, emit: Callable[[Change], None], cap: str) -> None:
    """``--live`` for an fsspec source: its walk now (through the filter rules, in a thread), and the
    objects whose size is unchanged but whose time moved, read and hashed."""
    import hashlib

    from ..backup.fsspec_source import FsspecSource

    source = FsspecSource(url, o.config.source.storage_options)
    warn = o.rt.threadsafe(o.rt.reporter.warn)
    live = await o.rt.in_thread(lambda: {e.path: e for e in source.walk(o.config.filter, warn, lambda k, m: None)})

    def sha256(rel: bytes) -> str | None:
        try:
            f = source.open(rel)
        except OSError:  # replaced or gone since the listing: its content differs from the snapshot's
            return None
        try:
            h, pos = hashlib.sha256(), 0
            while chunk := f.pread(1 << 20, pos):
                h.update(chunk)
                pos += len(chunk)
            return h.hexdigest()
        except OSError:
            return None
        finally:
            f.close()

    await SourceDiff(reader, live, lambda rel: o.rt.in_thread(sha256, rel), emit).run(cap)
