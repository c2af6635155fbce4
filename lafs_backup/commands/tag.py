"""``tag``: add, remove or set the tags of backups already made, recorded in the repository as tag
changes of their own (every machine, and a new one with the recovery key, sees them)."""

from __future__ import annotations

import argparse
import time

from ..engine import tags as tagging
from ..errors import ExitCode, UsageError
from ..history import as_json as backup_json
from ..report import plural
from ..repository import TagChange
from ..resources import Opener
from ..system.places import this_host
from . import options, which


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup tag latest --source ~/Documents --add keep --remove daily'

#: The lock scope of tag changes: one ``tag`` at a time on this machine writes its directory.
SCOPE = "tags"


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``tag``."""
    options.snapshot(p, "the backups to tag", dest="backups", nargs="+")
    p.add_argument("--add", action="append", default=[], metavar="TAG", type=options.tag,
                   help="add this tag (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="TAG", type=options.tag,
                   help="remove this tag (repeatable)")
    p.add_argument("--set", action="append", dest="set_tags", metavar="TAG", type=options.tag,
                   help="replace every tag with these (repeatable; not with --add or --remove; -o is then "
                        "the only spelling of the global option that overrides a configuration key)")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    tagging.check_change(ns.set_tags, ns.add, ns.remove)
    change = TagChange("", time.time(), "", tuple(ns.set_tags) if ns.set_tags is not None else None,
                       tuple(ns.add), tuple(ns.remove))
    repo = await o.repository()
    if repo is None:
        raise UsageError("there is no repository on this grid yet (no backup was made): nothing to tag")
    lock = await o.lock(SCOPE)
    try:
        everything = await o.backups()
        plans = tagging.plan(which.choose(o, everything, ns.backups, ns.source, ns.host, ns.tag, read=False),
                             change)
        recorded = await tagging.record(repo, this_host(), change, plans)
    finally:
        lock.release()
    if repo.key.sealed and recorded:
        async with o.locked_cache() as cache:
            tagging.keep_own(cache.history, plans)
    for p in plans:
        info = backup_json(p.backup)
        tags = ", ".join(p.after) or "none"
        rep.emit(f"{'tagged' if p.changed else 'unchanged'}: {info['id']} (generation {info['generation']}, "
                 f"{info['time']}, {info['source']}): tags {tags}"
                 + (f" (were {', '.join(p.before) or 'none'})" if p.changed else ""),
                 {"type": "tagged", "id": info["id"], "generation": info["generation"], "time": info["time"],
                  "source": info["source"], "host": info["host"], "changed": p.changed, "before": list(p.before),
                  "tags": list(p.after)})
    if rep.json_mode:
        rep.record({"type": "summary", "changed": len(recorded), "unchanged": len(plans) - len(recorded)})
    else:
        rep.info(f"changed the tags of {plural(len(recorded), 'backup')}"
                 + (f"; {len(plans) - len(recorded)} had them already" if len(plans) > len(recorded) else ""))
    return ExitCode.OK
