"""``stats``: what each backup holds and what it added, and what the repository stores, read from the
snapshots' indexes alone (no file's content is read)."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..history import Backup, iso
from ..read.reader import Reader
from ..read.stats import count
from ..read.tally import BackupFigures, RepositoryFigures
from ..report import outcome, plural, size_text
from ..resources import Opener
from .which import choose
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup stats latest'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``stats``."""
    options.snapshot(p, "the backups to show (default: all; the repository's figures cover every backup)",
                     dest="backups", nargs="*")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    everything = [b for b in await o.backups() if not b.sealed]  # (a sealed one beyond the window: not readable)
    if not everything:
        raise UsageError("no finished backups recorded: nothing to count (see 'lafs-backup list')")
    chosen = choose(o, everything, ns.backups, ns.source, ns.host, ns.tag)
    if not chosen:
        raise UsageError(f"no backups match the filters ({plural(len(everything), 'backup')} recorded; see "
                         "'lafs-backup list')")
    jobs = o.config.operation.jobs
    reader = Reader(await o.gateway(), use_index=False, jobs=jobs)
    try:
        # Every backup, oldest first: what one added is counted against every older one.
        each, repo = await count(reader, [b.cap for b in everything], jobs)
    finally:
        reader.close()
    by_id = {b.id: f for b, f in zip(everything, each)}
    rows = sorted(((b, by_id[b.id]) for b in chosen), key=lambda r: (r[0].ts, r[0].id))
    if rep.json_mode:
        rep.record({"type": "stats", "backups": [{**_identity(b), **f.json()} for b, f in rows],
                    "repository": repo.json()})
    else:
        for line in table(rows) + repository_lines(repo):
            rep.output(line)
    return outcome(rep)


def _identity(b: Backup) -> dict[str, object]:
    return {"id": b.short_id, "generation": b.generation, "time": iso(b.ts), "host": b.host,
            "source": b.source_text, "tags": list(b.tags)}


def table(rows: list[tuple[Backup, BackupFigures]]) -> list[str]:
    """One line per backup under a header: its entries, its files' bytes, the objects it holds
    and the bytes it added."""
    head = f"{'id':<8}  {'gen':>5}  {'time':<20}  {'files':>9}  {'dirs':>7}  {'symlinks':>8}  {'size':>10}  " \
           f"{'objects':>7}  {'added':>10}"
    out = [head]
    for b, f in rows:
        c = f.counts
        out.append(f"{b.short_id:<8}  {b.generation:>5}  {iso(b.ts):<20}  {c.files:>9}  {c.dirs:>7}  "
                   f"{c.symlinks:>8}  {size_text(c.bytes):>10}  {f.objects:>7}  {size_text(f.added_bytes):>10}")
    return out


def repository_lines(r: RepositoryFigures) -> list[str]:
    """The repository's figures, as a few lines."""
    return [
        f"repository: {plural(r.backups, 'backup')}, {size_text(r.logical_bytes)} of files in all; distinct "
        f"contents: {r.distinct_contents} ({size_text(r.distinct_bytes)})",
        f"  stored: {plural(r.objects, 'object')}, {size_text(r.content_bytes + r.index_bytes)} after compression "
        f"(contents {size_text(r.content_bytes)}, index {size_text(r.index_bytes)}); directories and the like: "
        f"{plural(r.other_objects, 'object')}, {size_text(r.other_bytes)}",
        f"  on the storage servers: {size_text(r.on_grid_bytes)} (every share, after erasure coding)",
        f"  deduplication {_times(r.deduplication)}, compression {_times(r.compression)}: "
        f"{size_text(r.logical_bytes)} of files in {size_text(r.stored_bytes)} stored ({_times(r.overall)})",
    ]


def _times(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"
