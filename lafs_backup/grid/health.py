"""Health of objects on the grid, judged from the gateway's check results (pure): one object's
:class:`Verdict`, and the units of a ``stream-deep-check`` body.  Used by ``check`` (``upkeep/check.py``)
and ``verify`` (``read/verify.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


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
