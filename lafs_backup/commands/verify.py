"""``verify``: every share of a snapshot, and its file contents read back against their SHA-256."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..read import remake
from ..read.browse import Browser
from ..read.locate import Paths
from ..read.reader import Reader
from ..read.verify import Verifier
from ..report import outcome
from ..resources import Opener
from .which import resolve_backup
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup verify latest --sample 10'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``verify``."""
    options.snapshot(p, "the backup to verify")
    p.add_argument("--sample", type=float, default=100.0, metavar="PERCENT",
                   help="read back only this percentage of the files, chosen at random (default 100)")
    p.add_argument("--remake", action="store_true",
                   help="also make derived files again (those in the sample), running their recipes as restore "
                        "does, and compare their hashes; without it a derived file's recipe is checked (its "
                        "inputs are in the snapshot with the recorded hashes), nothing is run")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    if not 0 < ns.sample <= 100:
        raise UsageError(f"--sample must be a percentage above 0 and at most 100, not {ns.sample}")
    cap, record = await resolve_backup(o, ns.snapshot, ns.source, ns.host, ns.tag)
    gw = await o.gateway()
    # The walk reads the grid's directories themselves; the index is checked against them.
    reader = Reader(gw, whole_packs=ns.sample >= 50, use_index=False)
    index = Reader(gw, jobs=o.config.operation.jobs)
    # A derived file's inputs are found in the same snapshot; with --remake it is made again from them.
    lookup = remake.lookup_in(Paths(Browser(reader)), cap)
    if ns.remake:
        remake.make(reader, o.config.derive, o.rt.in_thread, lookup)
    try:
        v = Verifier(gw, reader, o.rt.reporter, ns.sample, o.config.operation.jobs, index=index, lookup=lookup,
                     remake=ns.remake)
        await v.run(cap)
    finally:
        reader.close()
        index.close()
    # What it found, for the record of this run (status and the metrics show it).
    o.rt.reporter.found.update(id=record.short_id if record is not None else None,
                               generation=record.generation if record is not None else None,
                               problems=o.rt.reporter.stats.problems, files_read=v.files_read,
                               sample_percent=ns.sample)
    # Its own fields: what was checked (every share of the snapshot; the contents of files_read files).
    o.rt.reporter.finish("verify", {
        "id": record.short_id if record is not None else None,
        "generation": record.generation if record is not None else None,
        "sample_percent": ns.sample, "files_read": v.files_read, "derived_checked": v.derived_checked,
        "derived_remade": v.derived_remade}, counters=("bytes_read",))
    return outcome(o.rt.reporter)
