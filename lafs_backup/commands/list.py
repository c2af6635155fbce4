"""``list``: every finished backup, with its host, source, lease renewal and cap."""

from __future__ import annotations

import argparse

from .. import history
from ..backup.source import recorded_as
from ..errors import ExitCode
from ..history import as_json as backup_json
from ..report import plural
from ..resources import Opener
from .which import advise
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup list --source ~/Documents'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``list``."""
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    everything = await o.backups()
    floors = history.lease_floors(everything)
    chosen = history.matching(everything, recorded_as(ns.source), ns.host, ns.tag or ())
    items = [backup_json(b, floors) for b in chosen]
    # The last complete renewal of everything this host can renew: the oldest of its backups' last renewals.
    renewed = [b.ts_lease for b in everything if not b.sealed]
    known = [t for t in renewed if t is not None]
    everything_renewed = history.iso(min(known)) if known and len(known) == len(renewed) else None
    for it in items:
        it["leases_all_renewed"] = everything_renewed
    rep = o.rt.reporter
    if rep.json_mode:
        for it in items:  # JSON lines, a backup each
            rep.record({"type": "backup", **it})
    elif not items and everything:
        rep.info(f"no backups match {_filters(ns)} ({plural(len(everything), 'backup')} recorded; see "
                 "'lafs-backup list')")
    elif not items:
        rep.info("no finished backups recorded")
    else:
        for it in items:
            tags = f"  [{','.join(it['tags'])}]" if it["tags"] else ""
            grids = f"  also on: {', '.join(it['copies'])}" if it["copies"] else ""
            copy = "  (a copy)" if it["original"] else ""
            copy += f"  (rewritten from {it['rewritten_from']})" if it["rewritten_from"] else ""
            leases = ("leases: the custodian's" if it["sealed"] else
                      f"leases renewed: {it['leases_renewed'] or 'never'}")
            cap = it["cap"] or "(sealed: the recovery key reads it)"
            rep.output(f"{it['id']}  {it['generation']:>5}  {it['time']}  {it['host'] or '-'}  {it['source']}{tags}  "
                       f"{leases}{grids}{copy}  {cap}")
    advise(o, chosen, leases=False)
    return ExitCode.OK


def _filters(ns: argparse.Namespace) -> str:
    """The filters a listing was asked for, as the user gave them."""
    given = [f"--source {ns.source}"] if ns.source else []
    given += [f"--host {ns.host}"] if ns.host else []
    given += [f"--tag {t}" for t in ns.tag or ()]
    return " ".join(given) or "the filters"
