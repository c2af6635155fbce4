"""A dry run of a backup (``backup --dry-run``): walk the source and plan every file against the cache; write nothing.

Phase one runs as usual, but into no queue file (an existing queue stays as
it is).  Each file is then put to the planner as phase two would: a stat
found in the cache is unchanged; any other file is read and hashed, and its
content is either stored already (deduplicated, by the cache or by an
earlier file of this run), small enough to be its own cap (inline), or
would be uploaded.  The cache is opened read-only, and no gateway is asked
anything, so a dry run works with the grid down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

from ..store import plan
from ..backup.select import Selection
from ..backup.source import Source, WarnFn
from ..config import Config
from ..db.local import LocalDB
from ..log import NOISE
from ..report import Reporter, outcome, size_text
from ..store.entry import Entry
from ..store.protocols import ObjectCacheLike
from ..caps import LIT_MAX
from ..store.snapshot import Hit, content_key
from .runtime import Runtime

_CHUNK = 1 << 20


@dataclass
class Plan:
    """What a backup would do (counters of the dry run)."""

    entries: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    files: int = 0
    files_unchanged: int = 0
    files_read: int = 0
    files_deduplicated: int = 0
    files_inline: int = 0
    files_to_upload: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_deduplicated: int = 0
    bytes_to_upload: int = 0
    to_upload: list[str] = field(default_factory=list)


async def dry_run(rt: Runtime, conf: Config, source: Source, sel: Selection, mode: str,
                  where: tuple[str, str | None] | None) -> int:
    """Walk and plan every file; report what a backup would do and return the exit code.
    ``where``: the entry cache's path and its grid (None: there is no cache yet, or its grid is not
    known without asking the gateway)."""
    rep = rt.reporter
    plain = conf.destination.pack_max_file_size == 0
    stop = threading.Event()
    warn, note = rt.threadsafe(rep.warn), rt.threadsafe(rep.note_once)
    p = Plan()
    noise = not rep.json_mode and logging.getLogger().isEnabledFor(NOISE)

    def work() -> None:
        # sqlite objects stay in the thread that made them: the cache is opened here.
        db = LocalDB(where[0], where[1], reader=True) if where else None
        try:
            plan_all(db.objects if db is not None else None)
        finally:
            if db is not None:
                db.close()

    def plan_all(cache: ObjectCacheLike | None) -> None:
        seen: set[bytes] = set()
        for e in source.walk(sel, warn, note):
            if stop.is_set():
                raise _Stopped()
            p.entries += 1
            if e.kind == "d":
                p.dirs += 1
            elif e.kind == "l":
                p.symlinks += 1
            elif e.kind != "f":
                p.specials += 1
            else:
                _plan_file(p, e, cache, source, mode, plain, seen, warn, noise)

    try:
        await rt.in_thread(work)
    finally:
        stop.set()
        rep.excluded(sel.excluded.counts)
    _report(rep, os.fsdecode(source.label), p)
    return outcome(rep)


def _report(rep: Reporter, source: str, p: Plan) -> None:
    for path in p.to_upload:
        rep.output(f"would upload: {path}")
    result = {k: v for k, v in vars(p).items() if k != "to_upload"}
    if rep.json_mode:
        rep.record({"type": "dry-run", "source": source, **result, "excluded": rep.stats.excluded,
                    "warnings": rep.stats.warnings})
        return
    lines = [f"dry run of a backup of {source}: nothing was written",
             f"  files: {p.files} ({size_text(p.bytes_total)}): {p.files_unchanged} unchanged, {p.files_read} "
             f"to read and hash",
             f"  would upload: {p.files_to_upload} files, {size_text(p.bytes_to_upload)} (before compression); "
             f"already stored (deduplicated): {p.files_deduplicated} files, {size_text(p.bytes_deduplicated)}; "
             f"inline: {p.files_inline}",
             f"  directories: {p.dirs}; symlinks: {p.symlinks}; special files: {p.specials}",
             *rep.excluded_lines()]
    if rep.stats.warnings:
        lines.append(f"  warnings: {rep.stats.warnings} (entries that would be skipped; see above)")
    rep.info("\n".join(lines))


class _Stopped(Exception):
    pass


def _plan_file(p: Plan, e: Entry, cache: ObjectCacheLike | None, source: Source, mode: str, plain: bool,
               seen: set[bytes], warn: WarnFn, noise: bool) -> None:
    """One file, as phase two would decide it: the planner decides, from the walk's stat of it and
    the cache's rows (``cache`` None: there is none)."""
    p.files += 1
    p.bytes_total += e.size
    st = SimpleNamespace(st_mode=e.mode, st_size=e.size, st_mtime_ns=e.mtime_ns, st_ctime_ns=e.ctime_ns,
                         st_ino=e.ino)
    rows = (lambda keys: cache.lookup_many(keys, 0)) if cache is not None else (lambda keys: {})
    if plan.for_files([(e.path, st, "")], rows, mode, plain)[0].action == plan.UNCHANGED:
        p.files_unchanged += 1
        return
    sha = _hash(source, e.path, warn)
    if sha is None:
        return
    p.files_read += 1
    p.bytes_read += e.size
    if e.size <= LIT_MAX:
        p.files_inline += 1
        return
    known = cache.lookup(content_key(sha, plain), 0) if cache is not None and mode != "force" else None
    if known is None and sha in seen:  # an earlier file of this run stores it: the store shares that upload
        known = Hit("", sha)
    if plan.for_content(sha, known, None, False, mode).action == plan.KNOWN:
        p.files_deduplicated += 1
        p.bytes_deduplicated += e.size
        return
    seen.add(sha)
    p.files_to_upload += 1
    p.bytes_to_upload += e.size
    if noise and len(p.to_upload) < 100000:
        p.to_upload.append(os.fsdecode(e.path))


def _hash(source: Source, rel: bytes, warn: WarnFn) -> bytes | None:
    try:
        f = source.open(rel)
    except OSError as e:
        warn(rel, f"cannot be read: {e.strerror}; it would be skipped")
        return None
    try:
        h = hashlib.sha256()
        offset = 0
        while True:
            chunk = f.pread(_CHUNK, offset)
            if not chunk:
                break
            h.update(chunk)
            offset += len(chunk)
        return h.digest()
    except OSError as e:
        warn(rel, f"cannot be read: {e.strerror}; it would be skipped")
        return None
    finally:
        f.close()
