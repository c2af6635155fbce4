"""``cleanup``: forget backups, named ones or those a retention policy does not keep, per source and host."""

from __future__ import annotations

import argparse
import os
import time

from .. import history
from ..backup.source import recorded_as
from ..engine import forget as forgetting
from ..errors import UsageError
from ..history import Backup
from ..history import as_json as backup_json
from ..report import outcome, plural
from ..resources import Opener
from ..system.places import this_host
from ..upkeep.retention import Policy, parse_duration
from . import options, which


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup cleanup --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cleanup``."""
    options.snapshot(p, "the backups to forget", dest="backups", nargs="*")
    p.add_argument("-g", "--generation", type=int, action="append", default=[], metavar="N",
                    help="forget this generation (repeatable)")
    p.add_argument("--up-to", action="store_true", help="also forget every older backup")
    periods = {"hourly": "hours", "daily": "days", "weekly": "weeks", "monthly": "months", "yearly": "years"}
    p.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the N newest backups")
    for unit, units in periods.items():
        p.add_argument(f"--keep-{unit}", type=int, default=0, metavar="N",
                        help=f"keep the newest backup of each of the last N {units} that have one")
    p.add_argument("--keep-within", metavar="DURATION", help="keep all within DURATION (e.g. 30d, 1y6m) of the newest")
    p.add_argument("--keep-tag", action="append", default=[], metavar="TAG",
                   help="keep every backup carrying TAG, whatever the policy (or the names) say (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be forgotten and kept, and why")
    p.add_argument("-e", "--enumerate-shares", nargs="?", const="-", default=None, metavar="FILE|-",
                    help="list the storage indexes reachable only from the forgotten backups")
    p.add_argument("-n", "--enumerate-only", action="store_true", help="with -e: list, forget nothing")
    p.add_argument("--group-by", default="host,source", metavar="KEYS",
                    help="apply the policy to each group of backups with the same host and source "
                         "(default 'host,source'; also 'source', 'host', or 'none' for all together)")
    options.which(p)


def policy_of(ns: argparse.Namespace) -> Policy:
    return Policy(ns.keep_last, ns.keep_hourly, ns.keep_daily, ns.keep_weekly, ns.keep_monthly, ns.keep_yearly,
                  parse_duration(ns.keep_within) if ns.keep_within else None)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    policy = policy_of(ns)
    group_by = history.parse_grouping(ns.group_by)
    if ns.enumerate_only and ns.enumerate_shares is None:
        raise UsageError("-n/--enumerate-only needs -e/--enumerate-shares")
    if (ns.backups or ns.generation) and not policy.empty:
        raise UsageError("give either backups to forget, or a --keep-* policy, not both")
    if ns.keep_tag and policy.empty and not (ns.backups or ns.generation):
        raise UsageError("--keep-tag keeps tagged backups from a policy or from the backups named: give a "
                         "--keep-* policy (e.g. --keep-last 10) or the backups to forget too")
    async with o.locked_cache() as cache:
        everything = await o.backups()
        if not policy.empty:
            wanted = recorded_as(ns.source)
            verdicts = forgetting.by_policy(
                everything, policy, group_by, history.matching(everything, wanted, ns.host, ns.tag or ()), wanted,
                time.time(), lambda b: rep.warn(f"generation {b.generation}",
                                                "stamped in the future: kept, and not used to expire others"),
                ns.keep_tag)
        else:
            chosen = which.choose(o, everything, ns.backups, ns.source, ns.host, ns.tag, read=False) if ns.backups else []
            verdicts = forgetting.by_name(everything, chosen, ns.generation, ns.up_to, group_by, ns.keep_tag)
        forget, keep = verdicts.split(everything)
        _report(o, forget, keep, verdicts, ns.dry_run, policy.empty)
        if ns.dry_run:
            return outcome(rep)
        gw = await o.gateway() if (ns.enumerate_shares is not None or any(b.link_dir for b in forget)) else None
        if ns.enumerate_shares is not None:
            assert gw is not None
            _write(o, "".join(f"{si}\n" for si in await forgetting.only_theirs(gw, forget, keep)),
                   ns.enumerate_shares)
            if ns.enumerate_only:
                return outcome(rep)
        rows = await forgetting.forget(forget, cache.history, await o.repository(), gw, this_host())
    summary = {"type": "summary", "forgotten": len(forget), "kept": len(keep), "rows_deleted": rows}
    if rep.json_mode:
        rep.record(summary)
    else:
        rep.info(f"forgot {plural(len(forget), 'backup')}, kept {len(keep)}; {plural(rows, 'cache row')} that no "
                 "kept backup uses deleted.  Nothing is deleted from the grid: the objects of the forgotten backups "
                 "that no kept backup uses are no longer renewed, and the servers may drop them once their leases "
                 f"lapse (within {o.config.destination.lease_days or 31:g} days)")
    return outcome(rep)


def _report(o: Opener, forget: list[Backup], keep: list[Backup], verdicts: forgetting.Verdicts, dry_run: bool,
            named: bool) -> None:
    """A dry run's listing is its product (stdout); otherwise it is a report (stderr), and stdout
    stays free for -e's storage indexes."""
    rep = o.rt.reporter
    if dry_run:
        rep.emit(f"(dry run) {plural(len(forget), 'backup')} would be forgotten, {len(keep)} kept; nothing "
                 "changes", {"type": "dry_run", "forget": len(forget), "keep": len(keep)})
    for b in forget:
        info = backup_json(b)
        why = verdicts.reasons[b.id]
        rep.emit(f"{'would forget' if dry_run else 'forget'}: {b.short_id} (generation {b.generation}, "
                 f"{info['time']}, {info['source']}): {why}",
                 {"type": "forget", "id": b.short_id, "generation": b.generation, "time": info["time"], "host": b.host,
                  "source": info["source"], "reason": why}, err=not dry_run)
    if dry_run:
        for b in keep:
            why = ", ".join(verdicts.kept.get(b.id, [])) or ("not named" if named else "not in scope")
            rep.emit(f"keep: {b.short_id} (generation {b.generation}, {backup_json(b)['time']}): {why}",
                     {"type": "keep", "id": b.short_id, "generation": b.generation, "reason": why})


def _write(o: Opener, text: str, to: str) -> None:
    """-e's storage indexes, to stdout (-) or a new file of mode 0600."""
    if to == "-":
        o.rt.reporter.output(text, end="")
    else:
        fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
