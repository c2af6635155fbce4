"""Forgetting backups: which ones (named, or those a retention policy does not keep, per group),
and the forgetting itself: the repository's records, the result links and lines, the cache rows.
Nothing is deleted from the grid: the forgotten backups' leases simply stop being renewed."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import history
from ..backup.result import remove_result_line
from ..db.local_history import LocalHistory
from ..errors import SnapshotError, UsageError
from ..history import Backup
from ..protocols import GatewayLike
from ..upkeep.retention import Policy, decide

if TYPE_CHECKING:
    from ..repository import Repository


@dataclass(frozen=True)
class Verdicts:
    """What a cleanup decided: why each forgotten backup goes (id -> why), and why others stay."""

    reasons: dict[str, str]
    kept: dict[str, list[str]]

    def split(self, everything: list[Backup]) -> tuple[list[Backup], list[Backup]]:
        """(forget, keep), in the order of ``everything``."""
        return ([b for b in everything if b.id in self.reasons], [b for b in everything if b.id not in self.reasons])


def by_policy(everything: list[Backup], policy: Policy, group_by: tuple[str, ...], scope: list[Backup],
              wanted: bytes | None, now: float, future: Callable[[Backup], None],
              keep_tags: Sequence[str] = ()) -> Verdicts:
    """What ``policy`` keeps of ``scope``, in each group (by default: each source on each host keeps
    its own, so a source's newest backup is never forgotten because another source has a newer
    one; a glob source, dated snapshot directories, is one source).  ``future`` is told of each
    backup stamped in the future (kept, and not used to expire others).  A backup carrying one
    of ``keep_tags`` is kept whatever the policy says (it still counts in the policy's periods)."""
    reasons: dict[str, str] = {}
    kept: dict[str, list[str]] = {}
    pattern = os.fsdecode(wanted) if wanted is not None and glob.has_magic(wanted) else None
    for key, members in history.groups(scope, group_by, pattern).items():
        d = decide([(b.id, b.ts) for b in members], policy, now)
        label = " on ".join(reversed(key)) if key else ""
        for i in d.future:
            future(next(x for x in members if x.id == i))
        tagged = tag_reasons(members, keep_tags)
        reasons.update({i: "not kept by the policy" + (f" for {label}" if label else "") for i in d.forget
                        if i not in tagged})
        kept.update(d.keep)
        for i, why in tagged.items():
            kept.setdefault(i, []).extend(why)
    return Verdicts(reasons, kept)


def tag_reasons(backups: Sequence[Backup], keep_tags: Sequence[str]) -> dict[str, list[str]]:
    """Backup id -> why ``--keep-tag`` keeps it (``tag T``), for those carrying one of ``keep_tags``."""
    out: dict[str, list[str]] = {}
    for b in backups:
        why = [f"tag {t}" for t in dict.fromkeys(keep_tags) if t in b.tags]
        if why:
            out[b.id] = why
    return out


def by_name(everything: list[Backup], chosen: list[Backup], generations: Sequence[int], up_to: bool,
            group_by: tuple[str, ...], keep_tags: Sequence[str] = ()) -> Verdicts:
    """The backups named (and, with ``up_to``, every older one of the same group), but those
    carrying one of ``keep_tags``."""
    chosen = list(chosen)
    for g in generations:
        found = [b for b in everything if b.generation == g]
        if not found:
            raise SnapshotError(what=str(g), problem="no backup of that generation is recorded")
        chosen += found
    if not chosen:
        raise UsageError("nothing to forget: name backups (caps or generations, -g) or give a --keep-* policy")
    reasons = {b.id: "named" for b in chosen}
    if up_to:
        for b in chosen:
            same = history.group_key(b, group_by)
            for other in everything:
                if other.ts <= b.ts and history.group_key(other, group_by) == same:
                    reasons.setdefault(other.id, "older than a named backup (--up-to)")
    tagged = tag_reasons([b for b in everything if b.id in reasons], keep_tags)
    return Verdicts({i: why for i, why in reasons.items() if i not in tagged}, tagged)


async def forget(forgotten: list[Backup], cache: LocalHistory, repo: Repository | None,
                 gw: GatewayLike | None, host: str | None = None) -> int:
    """Forget ``forgotten``: their repository records (``repo``: None, none) and the tag changes
    ``host`` (this machine; None: none) made of them (and ask the repository's custodian, if it has
    one, to forget them too: ``engine.inbox``), result links (through ``gw``; None: none of
    them has one) and lines, and the cache rows no kept backup uses; returns the rows deleted."""
    from ..repository import Record

    if repo is not None:
        from .inbox import request_forgets

        # The custodian is asked first: a rerun after a failure here finds the records still there.
        await request_forgets(repo.gw, repo.key.writecap, forgotten)
        await repo.forget([Record(b.cap, b.host or "", b.source, b.ts, b.generation, b.tags, b.summary,
                                  writer=b.writer, name=b.record) for b in forgotten if b.writer and b.record],
                          host)
    for b in forgotten:
        if b.link_dir and b.link_name:
            assert gw is not None
            await gw.unlink(b.link_dir, b.link_name)
        if b.result_file:  # (a sealed repository's result lines end with the backup's id)
            remove_result_line(b.result_file, b.short_id if b.sealed else b.cap) or \
                remove_result_line(b.result_file, b.short_id)
    return int(cache.forget([b.row for b in forgotten if b.row is not None]))


async def only_theirs(gw: GatewayLike, forgotten: list[Backup], kept: list[Backup]) -> list[str]:
    """The storage indexes reachable only from the forgotten backups, sorted."""
    if any(b.sealed for b in forgotten + kept):
        raise UsageError("the storage indexes of a sealed repository's backups beyond this host's window are the "
                         "recovery key's to list: give it with --repo FILE")
    gone: set[str] = set()
    for b in forgotten:
        gone |= await storage_indexes(gw, b.cap)
    for b in kept:
        gone -= await storage_indexes(gw, b.cap)
    return sorted(gone)


async def reachable(gw: GatewayLike, cap: str, each: Callable[[dict[str, Any]], None]) -> None:
    """Call ``each`` with the gateway's record of every object reachable from ``cap`` (its manifest:
    ``cap``, ``storage-index``...), as the records stream in."""
    buf = [b""]

    def sink(chunk: bytes) -> None:
        buf[0] += chunk
        *lines, buf[0] = buf[0].split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                each(json.loads(line))

    await gw.stream_manifest(cap, sink)
    sink(b"\n")


async def storage_indexes(gw: GatewayLike, cap: str) -> set[str]:
    """Storage indexes of every object reachable from ``cap`` (LIT objects have none)."""
    out: set[str] = set()

    def each(record: dict[str, Any]) -> None:
        if record.get("storage-index"):
            out.add(record["storage-index"])

    await reachable(gw, cap, each)
    return out
