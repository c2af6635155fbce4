"""``check``: deep-check recorded backups, each distinct object once, renewing leases and repairing."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import ExitCode, UsageError
from ..history import as_json as backup_json
from ..log import redact
from ..resources import Opener
from ..grid.health import Verdict
from ..upkeep.check import Checker, format_line
from .which import advise, choose
from . import options


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup check --least-recently-checked'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``check``."""
    options.snapshot(p, "the backups to check (default: all)", dest="backups", nargs="*")
    p.add_argument("-a", "--least-recently-checked", action="store_true",
                   help="check only the backup checked least recently (round-robin from cron)")
    p.add_argument("-r", "--repair", action="store_true", help="repair what is not healthy")
    p.add_argument("-n", "--no-lease", action="store_true", help="don't renew leases")
    p.add_argument("-f", "--format", default="{backup[name]} gen {backup[generation]}: {0[path]} ({0[type]}): "
                   "{0[summary]}", help="line for each unhealthy object")
    p.add_argument("--healthy-format", default=None, help="line for each healthy object (default: none)")
    p.add_argument("-e", "--error-output", action="store_true", help="write the lines to stderr")
    options.which(p)


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    for f in (ns.format, ns.healthy_format):  # a bad format fails before any work
        if f is not None:
            try:
                format_line(f, Verdict("/x", "file", True, True, 3, "s"), {"name": "n", "generation": 1})
            except ValueError as e:
                raise UsageError(str(e))
    lease = not ns.no_lease
    to_err = ns.error_output
    lock = await o.lock()
    try:
        cache = await o.cache()
        try:
            chosen = choose(o, await o.backups(), ns.backups, ns.source, ns.host, ns.tag)
            if not chosen:
                raise UsageError("no finished backups recorded: nothing to check")
            if ns.least_recently_checked:
                chosen = [min(chosen, key=lambda b: (b.ts_check or 0.0, b.ts))]
            gw = await o.gateway()
            current: list[dict[str, Any]] = [{}]

            def seen(v: Verdict) -> None:
                info = current[0]
                if not v.healthy:
                    rep.emit(format_line(ns.format, v, info),
                             {**v.as_dict(), "object_type": v.type, "type": "unhealthy",
                              "generation": info["generation"]}, err=to_err)
                elif ns.healthy_format is not None and not rep.json_mode:
                    rep.emit(format_line(ns.healthy_format, v, info), {}, err=to_err)

            checker = Checker(gw, await o.happy(gw), lease, ns.repair, seen, o.config.operation.jobs)
            total_bad = 0
            found = rep.found  # (the record of this run: status and the metrics show it)
            found.update(backups=len(chosen), objects=0, unhealthy=0, repaired=0, leases_renewed=lease)
            # Newest first: the newest backup holds most of what the older ones share.
            for b in sorted(chosen, key=lambda x: (x.ts, x.id), reverse=True):
                info = current[0] = backup_json(b)
                started = time.time()
                result = await checker.check(b.cap)
                bad = result.unhealthy
                if result.error is not None:
                    bad.append(Verdict("?", "?", False, False, None, result.error))
                    msg = f"deep-check of generation {b.generation} stopped: {redact(result.error)}"
                    rep.emit(msg, {"type": "error", "generation": b.generation, "message": msg}, err=to_err)
                else:
                    cache.history.set_checked([b.cap], started, lease)
                total_bad += len(bad)
                found["objects"] += result.checked
                found["unhealthy"] += len(bad)
                found["repaired"] += sum(1 for v in bad if v.repaired)
                summary = {"type": "checked", "generation": b.generation, "objects": result.checked,
                           "shared": result.shared, "unhealthy": len(bad),
                           "repaired": sum(1 for v in bad if v.repaired)}
                if rep.json_mode:
                    rep.emit("", summary, err=to_err)
                else:
                    rep.info(f"generation {b.generation} ({info['time']}): {result.checked} objects checked"
                             + (f" ({result.shared} more shared with backups checked before)" if result.shared
                                else "")
                             + f", {len(bad)} unhealthy" + (", leases renewed" if lease else ""))
            o.forget_backups()
            advise(o, await o.backups())
        finally:
            cache.close()
    finally:
        lock.release()
    if total_bad:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK
