"""``find``: paths matching a glob (or a regex) across every recorded backup, newest first."""

from __future__ import annotations

import argparse
import json

from ..history import iso
from ..read.browse import Browser, Finder, matcher
from ..read.reader import Reader
from ..report import _printable, outcome
from ..resources import Opener
from .which import choose
from . import options


#: The example ``--help`` shows.
EXAMPLE = "lafs-backup find '*.pdf'"


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``find``."""
    p.add_argument("pattern", metavar="PATTERN",
                   help="a glob matched against names (against whole paths if it has a '/')")
    p.add_argument("--regex", action="store_true", help="PATTERN is a regular expression searched in paths")
    p.add_argument("--snapshot", action="append", metavar="SNAPSHOT",
                   help=f"only this backup (repeatable): {options.SNAPSHOT_HELP}")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    everything = await o.backups()
    chosen = choose(o, everything, ns.snapshot or [], ns.source, ns.host, ns.tag)
    chosen = sorted(chosen, key=lambda b: (b.ts, b.id), reverse=True)
    # Listings are remembered only a few at a time (a whole snapshot's would not fit in memory);
    # the finder remembers each directory's matches, so an unchanged subtree is walked once.
    finder = Finder(Browser(Reader(await o.gateway(), jobs=o.config.operation.jobs),
                            ahead=max(4, o.config.operation.jobs), remember=64),
                    matcher(ns.pattern, ns.regex), whole_items=rep.json_mode)
    seen: dict[bytes, list] = {}  # path -> [first backup, last backup, backups]
    total = 0
    for b in chosen:
        for item in await finder.matches(b.cap):
            total += 1
            s = seen.setdefault(item.path, [b, b, 0])
            s[0], s[2] = b, s[2] + 1  # walking newest first: the first appearance is the last one met
            if rep.json_mode:
                rep.output(json.dumps({"type": "match", "id": b.short_id, "generation": b.generation, "time": iso(b.ts),
                                       "host": b.host, "source": b.source_text, "path": item.json()["path"],
                                       "entry": item.json()}, sort_keys=True))
            else:
                name = _printable(item.path.decode("utf-8", "surrogateescape"))
                rep.output(f"{b.short_id}  {b.generation:>5}  {iso(b.ts)}  {name}{'/' if item.kind == 'd' else ''}")
    if rep.json_mode:
        rep.output(json.dumps({"type": "summary", "matches": total, "backups": len(chosen), "paths": [
            {"path": p.decode("utf-8", "backslashreplace"), "first": iso(f.ts), "last": iso(last.ts), "backups": n}
            for p, (f, last, n) in sorted(seen.items())]}, sort_keys=True))
    else:
        rep.info(f"{total} matches of {len(seen)} paths in {len(chosen)} backups")
        if len(seen) <= 50:
            for p, (f, last, n) in sorted(seen.items()):
                rep.info(f"  {_printable(p.decode('utf-8', 'surrogateescape'))}: in {n} backups, first "
                         f"{iso(f.ts)}, last {iso(last.ts)}")
    return outcome(rep)
