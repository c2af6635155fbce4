"""Check: deep-check recorded backups, renewing leases and repairing, and judge each object's health (pure judge)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Verdict:
    """One object's health as judged from a stream-deep-check unit."""

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


def judge(unit: Mapping[str, Any], happy: int) -> Verdict:
    """Health of one ``file``/``directory`` unit of a (repairing) deep-check stream.

    Healthy means recoverable and placed on at least ``happy`` servers
    (``count-happiness``), not Tahoe's ``healthy`` flag alone, which only
    counts shares.  After a repair the post-repair results count.
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
    if not results:
        return Verdict(path, utype, False, False, None, "no check results")
    recoverable = bool(results.get("recoverable", True))  # LIT objects report only "healthy"
    happiness = results.get("count-happiness")
    corrupt = int(results.get("count-corrupt-shares", 0) or 0)
    ok = recoverable and (happiness is None or happiness >= happy) and corrupt == 0
    if happiness is None:
        ok = ok and bool(results.get("healthy", True))
    summary = (f"recoverable={recoverable} happiness={happiness} needed>={happy}"
               f" corrupt_shares={corrupt}")
    return Verdict(path, utype, ok, recoverable, happiness, summary, repaired, corrupt)


@dataclass
class StreamParser:
    """Splits a stream-deep-check body into units; an ``ERROR:`` line ends it as a failure."""

    happy: int
    on_verdict: Callable[[Verdict], None]
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
            self.on_verdict(judge(unit, self.happy))


class _Unit(dict):  # type: ignore[type-arg]
    """A unit for user format strings: ``{0[path]}``, ``{0[type]}``, ``{0[summary]}`` ..."""


def format_line(fmt: str, verdict: Verdict, backup: Mapping[str, Any]) -> str:
    """Apply a user's ``-f``/``--healthy-format`` string; a bad one raises ValueError naming it."""
    try:
        return fmt.format(_Unit(verdict.as_dict()), backup=dict(backup))
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"bad format {fmt!r}: {e}")
