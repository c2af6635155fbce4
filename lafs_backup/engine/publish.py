"""After the upload: a finished backup is recorded (the result link and file, the cache row), published
into the repository, and a new entry cache is filled from the newest recorded backup."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .. import history
from ..backup.result import append_result, link_into
from ..config import ResultConfig
from ..db.local_history import LocalHistory
from ..db.objects import ObjectCache
from ..errors import GatewayError, GridError
from ..history import Backup, iso
from ..protocols import GatewayLike
from ..report import Reporter
from ..system.places import this_host

if TYPE_CHECKING:
    from ..repository import Repository

log = logging.getLogger(__name__)


async def record_backup(rep: Reporter, result: ResultConfig, cache: LocalHistory, gw: GatewayLike, gen: int,
                        snap: str, source: bytes, host: str, tags: tuple[str, ...], sealed: bool = False) -> Backup:
    """Record a finished backup: the link, the result file, and (made durable) the cache row.  In a
    sealed repository the result file gets the backup's id, not its cap (``result.cap_when_sealed``)."""
    ts = time.time()
    link = result.append_to_lafs_dir
    if link and sealed and not result.cap_when_sealed:
        # (a link is a cap: a directory this host writes would keep every backup readable from it)
        rep.note_once("sealed-link", "destination.result.append_to_lafs_dir is not used in a sealed repository: a "
                                     "link there would keep every backup readable from this host (set "
                                     "destination.result.cap_when_sealed: true to link them all the same)")
        link = None
    lname = await link_into(gw, link, source, ts, snap) if link else None
    result_file = result.append_to_file
    if result_file:
        try:
            append_result(result_file, ts, source, snap if not sealed or result.cap_when_sealed
                          else history.short_id(snap, ts))
        except OSError as e:  # the backup is complete on the grid: record it all the same
            rep.warn(result_file, f"the result line could not be appended ({e.strerror}); the "
                                  "backup is recorded in the entry cache ('lafs-backup list')")
            result_file = None
    st = rep.stats
    summary: dict[str, Any] = {k: getattr(st, k) for k in (
        "files", "files_new", "files_changed", "files_unchanged", "dirs", "symlinks", "bytes_read", "bytes_uploaded",
        "packs", "warnings")}
    summary["seconds"] = round(rep.elapsed(), 3)  # (status and the metrics show how long a backup took)
    return cache.record_backup(gen, snap, source, os.path.basename(source).decode("utf-8", "replace"),
                               ts, link, lname, result_file, host, tags, summary)


async def publish(rep: Reporter, repo: Repository, cache: LocalHistory, source: bytes) -> None:
    """Record in the repository every backup of ``source`` in this cache it does not hold yet (this
    one, and any a run before could not record there).  The caller holds the source's lock: only it
    writes that source's directories in the repository (another source's are its own runs' to
    write, which may be under way).  Each goes to the writer's volume :func:`repository.volume_for`
    picks from what this cache knows it recorded where: the cost stays that of a small directory.
    In a sealed repository each record is sealed once, and its box kept in the cache before the first
    attempt: every attempt writes the same (see ``Repository.add``)."""
    import dataclasses
    import json

    from ..repository import Record, record_name, seal_box, volume_for, writer_name

    for b in cache.unrecorded(source):
        if b.row is None:
            continue
        host = b.host or this_host()
        writer = writer_name(host, b.source, repo.key)
        rec = Record(b.cap, host, b.source, b.ts, b.generation, b.tags, b.summary,
                     writer=volume_for(writer, cache.held(writer)), name=record_name(b.ts, b.generation))
        if repo.key.sealed:
            if b.box is None:
                box = seal_box(repo.key, rec.cap, rec.metadata(), rec.writer, rec.name)
                cache.set_sealed(b.row, json.dumps({"writer": rec.writer, "name": rec.name, "box": box}))
                rec = dataclasses.replace(rec, box=box)
            else:
                kept = json.loads(b.box)
                rec = dataclasses.replace(rec, writer=kept["writer"], name=kept["name"], box=kept["box"])
        try:
            placed = await repo.add(rec)
        except (GatewayError, GridError) as e:
            rep.warn("repository", f"the backup is not recorded in the repository yet ({e.message}); it "
                                   "is kept in the local cache, and the next backup records it there")
            return
        cache.set_recorded(b.row, placed.writer, placed.name)


async def rebuild_cache(rep: Reporter, everything: list[Backup], gw: GatewayLike, cache: ObjectCache, gen: int,
                        source: bytes, host: str) -> None:
    """A new cache (a new machine, or one set aside): fill it from the newest recorded backup of this
    source, so that what is stored already is not uploaded again."""
    from ..backup.cache_rebuild import Rebuilder
    from ..read.reader import Reader

    mine = history.matching(everything, source, host) or history.matching(everything, source)
    if not mine:
        return
    newest = mine[-1]
    t0 = time.monotonic()
    rows = await Rebuilder(Reader(gw), cache, gen).snapshot(newest.cap)
    rep.note_once("rebuilt", f"the entry cache was rebuilt from the backup of {iso(newest.ts)} "
                             f"({rows} rows in {time.monotonic() - t0:.1f}s): content already stored is "
                             "not uploaded again")


async def unhappy(gw: GatewayLike, e: GatewayError, happy: Callable[[GatewayLike], Awaitable[int]]) -> GridError:
    """Say why the grid refused an upload: usually storage servers are missing (``happy``: how many
    the grid asks for, when its answer does not say)."""
    asked = re.search(r"asked to place shares on at least (\d+) server", e.body)
    after = "Nothing was recorded; what was uploaded is kept, so a rerun continues from there."
    try:
        have = len(await gw.connected_servers())
    except GatewayError as g:
        return GridError(problem=f"the grid refused an upload (UploadUnhappinessError) and the gateway "
                                 f"no longer answers ({g.reason or g}). {after}")
    want = int(asked.group(1)) if asked else await happy(gw)
    if have < want:
        return GridError(problem=f"only {have} of {want} required storage servers connected: the grid "
                                 f"refused an upload (UploadUnhappinessError). {after}")
    return GridError(problem=f"{e}. {after}")
