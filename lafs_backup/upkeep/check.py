"""Check: deep-check recorded backups, renewing leases and repairing, each distinct object once per run.

Backups made from the same source share almost every object, so checking
them one by one repeats the same work.  A run checks each object, by its
storage index, once: the first backup is walked by the gateway itself
(``stream-deep-check``); each further one is walked here, directory by
directory, and a directory already checked in this run is not walked again,
since everything below it was checked with it.  The judge of one object's
health (:func:`judge`) is pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from ..errors import GatewayError


@dataclass(frozen=True)
class Verdict:
    """One object's health as judged from its check results."""

    path: str
    type: str
    healthy: bool
    recoverable: bool
    happiness: int | None
    summary: str
    repaired: bool = False
    corrupt_shares: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "healthy": self.healthy, "recoverable": self.recoverable,
                "happiness": self.happiness, "summary": self.summary, "repaired": self.repaired,
                "corrupt_shares": self.corrupt_shares}


def storage_index(verifycap: str | None) -> str | None:
    """The storage index in a verify cap (``URI:CHK-Verifier:SI:...``); None for a LIT object."""
    if not verifycap or "-Verifier:" not in verifycap:
        return None
    parts = verifycap.split(":")
    return parts[2] if len(parts) > 2 and parts[2] else None


def shares_total(verifycap: str | None) -> int | None:
    """N, the number of shares an immutable object was encoded into, from its verify cap."""
    if not verifycap or not verifycap.startswith(("URI:CHK-Verifier:", "URI:DIR2-CHK-Verifier:")):
        return None
    parts = verifycap.split(":")
    try:
        return int(parts[-2])
    except (ValueError, IndexError):
        return None


#: Result fields without which no object can be called healthy.
_NEEDED = ("recoverable", "count-happiness", "count-corrupt-shares")


def judge(unit: Mapping[str, Any], happy: int) -> Verdict:
    """Health of one ``file``/``directory`` unit of a (repairing) check.

    Healthy means recoverable, no corrupt share, and spread over as many
    servers as the object can be: ``happy`` (the grid's happiness), or its own
    N if that is smaller (a k-of-N object never has more than N shares).
    Tahoe's ``healthy`` flag is not trusted on its own: it counts shares, not
    servers.  After a repair the post-repair results count.  Results that
    lack a field the judgement needs are a failure, never health.
    """
    path = "/" + "/".join(unit.get("path") or [])
    utype = str(unit.get("type", "?"))
    if unit.get("storage-index") == "" or str(unit.get("cap", "")).startswith(("URI:LIT:", "URI:DIR2-LIT:")):
        # A LIT object lives inside its cap: nothing on any server to lose.
        return Verdict(path, utype, True, True, None, "literal (stored in the cap)")
    repaired = False
    cr = unit.get("check-and-repair-results")
    if isinstance(cr, Mapping):
        if cr.get("repair-attempted") and isinstance(cr.get("post-repair-results"), Mapping):
            results = cr["post-repair-results"].get("results", {})
            repaired = bool(cr.get("repair-successful"))
        else:
            results = (cr.get("pre-repair-results") or {}).get("results", {})
    else:
        results = (unit.get("check-results") or {}).get("results", {})
    if not isinstance(results, Mapping) or not results:
        return Verdict(path, utype, False, False, None, "no check results")
    missing = [k for k in _NEEDED if k not in results]
    if missing:
        return Verdict(path, utype, False, bool(results.get("recoverable", False)), results.get("count-happiness"),
                       f"incomplete check results (no {', '.join(missing)})")
    recoverable = bool(results["recoverable"])
    happiness = results["count-happiness"]
    corrupt = int(results["count-corrupt-shares"] or 0)
    total = results.get("count-shares-expected") or shares_total(unit.get("verifycap"))
    want = min(happy, int(total)) if isinstance(total, int) and total > 0 else happy
    ok = recoverable and isinstance(happiness, int) and happiness >= want and corrupt == 0
    summary = f"recoverable={recoverable} happiness={happiness} needed>={want} corrupt_shares={corrupt}"
    return Verdict(path, utype, ok, recoverable, happiness if isinstance(happiness, int) else None,
                   summary, repaired, corrupt)


@dataclass
class StreamParser:
    """Splits a stream-deep-check body into units; an ``ERROR:`` line ends it as a failure.

    ``on_unit`` sees each raw unit (with its storage index), ``on_verdict`` its judgement.
    """

    happy: int
    on_verdict: Callable[[Verdict], None]
    on_unit: Callable[[Mapping[str, Any]], None] = lambda unit: None
    error: str | None = None
    units: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    _buf: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while b"\n" in self._buf and self.error is None:
            line, self._buf = self._buf.split(b"\n", 1)
            self._line(line)

    def close(self) -> None:
        if self._buf.strip() and self.error is None:
            self._line(self._buf)
        self._buf = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return
        if line.startswith("ERROR:"):
            # Tahoe reports an untraversable directory in-band, with HTTP 200.
            self.error = line[:300]
            return
        try:
            unit = json.loads(line)
        except ValueError:
            self.error = f"unparseable line in the deep-check stream: {line[:100]!r}"
            return
        kind = unit.get("type")
        if kind == "stats":
            self.stats = unit.get("stats", {})
        elif kind in ("file", "directory"):
            self.units += 1
            self.on_unit(unit)
            self.on_verdict(judge(unit, self.happy))


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
    bounds the objects being checked at once (the gateway bounds requests).
    """

    def __init__(self, gateway: Any, happy: int, lease: bool, repair: bool,
                 on_verdict: Callable[[Verdict], None], jobs: int = 6) -> None:
        self.gw = gateway
        self.happy = happy
        self.lease = lease
        self.repair = repair
        self.on_verdict = on_verdict
        self.seen: set[str] = set()
        self._slots = DeferredSemaphore(max(1, jobs) * 4)

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


class _Unit(dict):  # type: ignore[type-arg]
    """A unit for user format strings: ``{0[path]}``, ``{0[type]}``, ``{0[summary]}`` ..."""


def format_line(fmt: str, verdict: Verdict, backup: Mapping[str, Any]) -> str:
    """Apply a user's ``-f``/``--healthy-format`` string; a bad one raises ValueError naming it."""
    try:
        return fmt.format(_Unit(verdict.as_dict()), backup=dict(backup))
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"bad format {fmt!r}: {e}")
