"""``cleanup``: forget backups, named ones or those a retention policy does not keep, per source and host."""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from typing import Any

from .. import history
from ..backup.record import remove_result_line
from ..errors import SnapshotError, UsageError
from ..history import Backup
from ..upkeep.retention import Policy, decide, parse_duration
from .context import Context, backup_json, outcome


def policy_of(ns: argparse.Namespace) -> Policy:
    return Policy(ns.keep_last, ns.keep_hourly, ns.keep_daily, ns.keep_weekly, ns.keep_monthly, ns.keep_yearly,
                  parse_duration(ns.keep_within) if ns.keep_within else None)


def choose(ctx: Context, everything: list[Backup], ns: argparse.Namespace, policy: Policy,
           group_by: tuple[str, ...]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Which backups to forget (id -> why) and why the others are kept (id -> reasons)."""
    reasons: dict[int, str] = {}
    kept: dict[int, list[str]] = {}
    if not policy.empty:
        wanted = ctx.source_filter(ns.source)
        scope = history.matching(everything, wanted, ns.host, ns.tag or ())
        # Each group (by default: each source on each host) keeps its own backups: a source's
        # newest backup is never forgotten because another source has a newer one.  A glob
        # source (dated snapshot directories) is one source.
        pattern = os.fsdecode(wanted) if wanted is not None and glob.has_magic(wanted) else None
        for key, members in history.groups(scope, group_by, pattern).items():
            d = decide([(b.id, b.ts) for b in members], policy, time.time())
            label = " on ".join(reversed(key)) if key else ""
            for i in d.future:
                b = next(x for x in members if x.id == i)
                ctx.reporter.warn(f"generation {b.generation}",
                                  "stamped in the future: kept, and not used to expire others")
            reasons.update({i: "not kept by the policy" + (f" for {label}" if label else "") for i in d.forget})
            kept.update(d.keep)
        return reasons, kept
    chosen = ctx.select(everything, ns.backups, ns.source, ns.host, ns.tag) if ns.backups else []
    for g in ns.generation:
        found = [b for b in everything if b.generation == g]
        if not found:
            raise SnapshotError(what=str(g), problem="no backup of that generation is recorded")
        chosen += found
    if not chosen:
        raise UsageError("nothing to forget: name backups (caps or generations, -g) or give a --keep-* policy")
    reasons = {b.id: "named" for b in chosen}
    if ns.up_to:
        for b in chosen:
            same = history.group_key(b, group_by)
            for other in everything:
                if other.ts <= b.ts and history.group_key(other, group_by) == same:
                    reasons.setdefault(other.id, "older than a named backup (--up-to)")
    return reasons, kept


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    policy = policy_of(ns)
    group_by = history.parse_grouping(ns.group_by)
    if ns.enumerate_only and ns.enumerate_shares is None:
        raise UsageError("-n/--enumerate-only needs -e/--enumerate-shares")
    if (ns.backups or ns.generation) and not policy.empty:
        raise UsageError("give either backups to forget, or a --keep-* policy, not both")
    lock = await ctx.lock()
    try:
        cache = await ctx.cache()
        try:
            everything = await ctx.backups()
            reasons, kept = choose(ctx, everything, ns, policy, group_by)
            forget = [b for b in everything if b.id in reasons]
            keep = [b for b in everything if b.id not in reasons]
            _report(ctx, forget, keep, reasons, kept, ns.dry_run, policy.empty)
            if ns.dry_run:
                return outcome(ctx.reporter)
            gw = await ctx.gateway() if (ns.enumerate_shares is not None or any(b.link_dir for b in forget)) \
                else None
            if ns.enumerate_shares is not None and gw is not None:
                await _enumerate(ctx, gw, forget, keep, ns.enumerate_shares)
                if ns.enumerate_only:
                    return outcome(ctx.reporter)
            repo = await ctx.repository()
            if repo is not None:
                await repo.forget(_records(forget))
            for b in forget:
                if b.link_dir and b.link_name:
                    await (gw or await ctx.gateway()).unlink(b.link_dir, b.link_name)
                if b.result_file:
                    remove_result_line(b.result_file, b.cap)
            rows = cache.forget([b.row for b in forget if b.row is not None])
        finally:
            cache.close()
    finally:
        lock.release()
    rep = ctx.reporter
    summary = {"type": "summary", "forgotten": len(forget), "kept": len(keep), "rows_deleted": rows}
    if rep.json_mode:
        rep.record(summary)
    else:
        rep.info(f"forgot {len(forget)} backup(s), kept {len(keep)}; {rows} cache row(s) that no kept backup "
                 "uses were deleted (nothing is deleted from the grid: leases simply stop being renewed)")
    return outcome(rep)


def _records(backups: list[Backup]) -> list[Any]:
    from ..repository import Record

    return [Record(b.cap, b.host or "", b.source, b.ts, b.generation, b.tags, b.summary, writer=b.writer,
                   name=b.record) for b in backups if b.writer and b.record]


def _report(ctx: Context, forget: list[Backup], keep: list[Backup], reasons: dict[int, str],
            kept: dict[int, list[str]], dry_run: bool, named: bool) -> None:
    """A dry run's listing is its product (stdout); otherwise it is a report (stderr), and stdout
    stays free for -e's storage indexes."""
    rep = ctx.reporter
    for b in forget:
        info = backup_json(b)
        rep.emit(f"{'would forget' if dry_run else 'forget'}: generation {b.generation} ({info['time']}, "
                 f"{info['source']}): {reasons[b.id]}",
                 {"type": "forget", "generation": b.generation, "time": info["time"], "host": b.host,
                  "source": info["source"], "reason": reasons[b.id]}, err=not dry_run)
    if dry_run:
        for b in keep:
            why = ", ".join(kept.get(b.id, [])) or ("not named" if named else "not in scope")
            rep.emit(f"keep: generation {b.generation} ({backup_json(b)['time']}): {why}",
                     {"type": "keep", "generation": b.generation, "reason": why})


async def _enumerate(ctx: Context, gw: Any, forget: list[Backup], keep: list[Backup], to: str) -> None:
    """List the storage indexes reachable only from the forgotten backups (to a file, or stdout)."""
    gone: set[str] = set()
    for b in forget:
        gone |= await storage_indexes(gw, b.cap)
    for b in keep:
        gone -= await storage_indexes(gw, b.cap)
    text = "".join(f"{si}\n" for si in sorted(gone))
    if to == "-":
        ctx.reporter.output(text, end="")
    else:
        fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)


async def storage_indexes(gw: Any, cap: str) -> set[str]:
    """Storage indexes of every object reachable from ``cap`` (LIT objects have none)."""
    out: set[str] = set()
    buf = [b""]

    def sink(chunk: bytes) -> None:
        buf[0] += chunk
        *lines, buf[0] = buf[0].split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                si = json.loads(line).get("storage-index")
                if si:
                    out.add(si)

    await gw.stream_manifest(cap, sink)
    sink(b"\n")
    return out
