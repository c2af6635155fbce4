"""``list``: every finished backup, with its host, source, lease renewal and cap."""

from __future__ import annotations

import argparse
import json

from .. import history
from ..errors import ExitCode
from .context import Context, backup_json


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    everything = await ctx.backups()
    floors = history.lease_floors(everything)
    chosen = history.matching(everything, ctx.source_filter(ns.source), ns.host, ns.tag or ())
    items = [backup_json(b, floors) for b in chosen]
    rep = ctx.reporter
    if rep.json_mode:
        rep.output(json.dumps(items, indent=1))
    elif not items:
        rep.info("no finished backups recorded")
    else:
        for it in items:
            tags = f"  [{','.join(it['tags'])}]" if it["tags"] else ""
            grids = f"  also on: {', '.join(it['copies'])}" if it["copies"] else ""
            copy = "  (a copy)" if it["original"] else ""
            rep.output(f"{it['id']}  {it['generation']:>5}  {it['time']}  {it['host'] or '-'}  {it['source']}{tags}  "
                       f"leases renewed: {it['leases_renewed'] or 'never'}{grids}{copy}  {it['cap']}")
    ctx.warn_copies(chosen)
    return ExitCode.OK
