"""Check: deep-check recorded backups, renewing leases and repairing, each distinct object once per run.

Backups made from the same source share almost every object, so checking
them one by one repeats the same work.  A run checks each object, by its
storage index, once: the first backup is walked by the gateway itself
(``stream-deep-check``); each further one is walked here, directory by
directory, and a directory already checked in this run is not walked again,
since everything below it was checked with it.  The judge of one object's
health (:func:`judge`, in ``grid/health.py``) is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..errors import GatewayError
from ..grid.health import StreamParser, Verdict, judge, storage_index
from ..protocols import GatewayLike
from ..slots import Slots


@dataclass
class BackupCheck:
    """What checking one backup found."""

    #: Objects checked for this backup in this run.
    checked: int = 0
    #: Storage indexes of objects it shares with a backup checked before it in this run (not
    #: checked again, nor anything below them).
    shared_indexes: set[str] = field(default_factory=set)
    unhealthy: list[Verdict] = field(default_factory=list)
    #: Why the walk could not cover the whole backup (None: it did).
    error: str | None = None

    @property
    def shared(self) -> int:
        return len(self.shared_indexes)


class Checker:
    """Checks backups for one run, each distinct object once (see the module docstring).

    ``on_verdict(verdict)`` is told about every object checked.  ``jobs``
    bounds the objects being checked at once (the gateway bounds requests);
    ``clock`` (None: the gateway's) is the reactor a freed slot wakes the next on.
    """

    def __init__(self, gateway: GatewayLike, happy: int, lease: bool, repair: bool,
                 on_verdict: Callable[[Verdict], None], jobs: int = 6, clock: IReactorTime | None = None) -> None:
        self.gw = gateway
        self.happy = happy
        self.lease = lease
        self.repair = repair
        self.on_verdict = on_verdict
        self.seen: set[str] = set()
        self._slots = Slots(max(1, jobs) * 4, clock if clock is not None else gateway.clock)

    async def check(self, cap: str) -> BackupCheck:
        result = BackupCheck()
        if not self.seen:
            await self._stream(cap, result)
        else:
            await self._visit(cap, None, [], True, "directory", result)
        return result

    def _judged(self, v: Verdict, result: BackupCheck, stored: bool) -> None:
        if stored:  # a LIT object lives in its cap: there is nothing on a server to check
            result.checked += 1
        if not v.healthy:
            result.unhealthy.append(v)
        self.on_verdict(v)

    async def _stream(self, cap: str, result: BackupCheck) -> None:
        stored = [False]

        def unit(u: Mapping[str, Any]) -> None:
            si = u.get("storage-index")
            stored[0] = bool(si)
            if si:
                self.seen.add(str(si))

        parser = StreamParser(self.happy, lambda v: self._judged(v, result, stored[0]), unit)
        await self.gw.stream_deep_check(cap, parser.feed, add_lease=self.lease, repair=self.repair)
        parser.close()
        result.error = parser.error

    async def _visit(self, cap: str, verifycap: str | None, path: list[str], is_dir: bool, utype: str,
                     result: BackupCheck) -> None:
        si = storage_index(verifycap)
        literal = cap.startswith(("URI:LIT:", "URI:DIR2-LIT:"))
        if si is not None and si in self.seen:
            result.shared_indexes.add(si)
            return  # checked already in this run, and so was everything below it
        unit: dict[str, Any] = {"path": path, "type": utype, "cap": cap, "verifycap": verifycap,
                                "storage-index": "" if literal else si}
        if not literal:
            if si is not None:
                self.seen.add(si)
            await self._slots.acquire()
            try:
                answer = await self.gw.check(cap, add_lease=self.lease, repair=self.repair)
            except GatewayError as e:
                answer = None
                if e.status != 410:  # 410: unrecoverable, which the verdict says
                    result.error = f"cannot check {'/' + '/'.join(path)}: {e.reason or e}"
                    return
            finally:
                self._slots.release()
            if answer is not None:
                unit["storage-index"] = answer.get("storage-index", si)
                if self.repair:
                    unit["check-and-repair-results"] = answer
                else:
                    unit["check-results"] = answer
        verdict = judge(unit, self.happy)
        self._judged(verdict, result, not literal)
        if not is_dir or not verdict.recoverable:
            return
        try:
            listing = await self.gw.get_json(cap)
            children = listing[1]["children"]
        except (GatewayError, KeyError, IndexError, TypeError) as e:
            result.error = f"cannot list {'/' + '/'.join(path)}: {getattr(e, 'reason', '') or e}"
            return
        waits = []
        for name, (ntype, info) in sorted(children.items()):
            child = info.get("ro_uri") or info.get("rw_uri")
            if not isinstance(child, str):
                continue
            sub_dir = ntype == "dirnode"
            waits.append(Deferred.fromCoroutine(self._visit(
                child, info.get("verify_uri"), path + [name], sub_dir, "directory" if sub_dir else "file", result)))
        if waits:
            await gatherResults(waits, consumeErrors=True)


class _Unit(dict[str, Any]):
    """A unit for user format strings: ``{0[path]}``, ``{0[type]}``, ``{0[summary]}`` ..."""


def format_line(fmt: str, verdict: Verdict, backup: Mapping[str, Any]) -> str:
    """Apply a user's ``-f``/``--healthy-format`` string; a bad one raises ValueError naming it."""
    try:
        return fmt.format(_Unit(verdict.as_dict()), backup=dict(backup))
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"bad format {fmt!r}: {e}")
