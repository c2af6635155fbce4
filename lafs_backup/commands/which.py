"""Which backups a command's arguments name: by cap, id, generation number or 'latest', narrowed by
--source, --host and --tag ('latest' defaults to ``source.path``'s backups)."""

from __future__ import annotations

from typing import Sequence

from .. import history
from ..backup.source import recorded_as
from ..errors import SnapshotError
from ..history import Backup
from ..resources import Opener


def latest_of(o: Opener, source: str | None) -> bytes | None:
    """The source a ``latest`` refers to: the one given, else ``source.path``, else any."""
    return recorded_as(source or o.config.source.path)


def choose(o: Opener, everything: list[Backup], refs: Sequence[str], source: str | None = None,
           host: str | None = None, tags: Sequence[str] | None = None, read: bool = True) -> list[Backup]:
    """Backups named by ``refs``; all of them (of ``source``, ``host``, ``tags``) when there are none.
    ``read``: the command reads them, so a sealed one (see :func:`readable`) named is an error, and
    sealed ones are left out of all of them (said once)."""
    chosen = history.choose(everything, refs, recorded_as(source), latest_of(o, source), host, tags or ())
    if not read:
        return chosen
    if refs:
        return [readable(b) for b in chosen]
    sealed = [b for b in chosen if b.sealed]
    if sealed:
        o.rt.reporter.note_once("sealed", f"{len(sealed)} sealed backup(s) left out: beyond this host's window "
                                          "(repository.window), only the recovery key reads them (--repo FILE)")
    return [b for b in chosen if not b.sealed]


def readable(b: Backup) -> Backup:
    """``b``, when this machine can read it; raises :class:`SnapshotError` for a sealed repository's backup
    beyond the host's window."""
    if b.sealed:
        raise SnapshotError(what=b.short_id, problem="it is sealed: this host keeps the caps of its newest "
                                                     "backups only (repository.window). Give the recovery key "
                                                     "(--repo FILE) to read it")
    return b


async def resolve(o: Opener, ref: str, source: str | None = None, host: str | None = None,
                  tags: Sequence[str] | None = None) -> str:
    """The cap a SNAPSHOT argument names (a cap needs no record)."""
    if ref.startswith("URI:"):
        return ref
    return readable(history.resolve(await o.backups(), ref, latest_of(o, source), host, tags or ())).cap


async def resolve_backup(o: Opener, ref: str, source: str | None = None, host: str | None = None,
                         tags: Sequence[str] | None = None) -> tuple[str, Backup | None]:
    """The cap a SNAPSHOT argument names, and its record (None: a cap not recorded here)."""
    if ref.startswith("URI:"):
        return ref, next((b for b in await o.backups() if b.cap == ref), None)
    b = readable(history.resolve(await o.backups(), ref, latest_of(o, source), host, tags or ()))
    return b.cap, b


def advise(o: Opener, backups: list[Backup], leases: bool = True, copies: bool = True) -> None:
    """Say what the user should act on about ``backups``: leases that may end within a week, and
    backups held by fewer grids than ``destination.copies`` asks."""
    import time

    rep, dest = o.rt.reporter, o.config.destination
    said = history.expiring_warning(backups, time.time(), dest.lease_days) if leases else None
    if said:
        rep.advise("leases", said)
    said = history.copies_warning(backups, dest.copies) if copies else None
    if said:
        rep.advise("copies", said)
