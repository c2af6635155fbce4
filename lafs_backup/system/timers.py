"""lafs-backup's systemd timers, as ``systemctl list-timers`` tells them: when the next scheduled run is
(asked through the reactor's process API, so the reactor is never blocked; nothing where systemd does not run)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorProcess

log = logging.getLogger(__name__)

#: Runs a program (its argument list) and gives its exit code and standard output.
RunProgram = Callable[[list[str]], Awaitable[tuple[int, bytes]]]

#: The units whose timers are lafs-backup's.
PREFIX = "lafs-backup"


@dataclass(frozen=True)
class TimerInfo:
    """One timer: its unit, the service it starts, when it fires next and when it last did (None: not)."""

    unit: str
    activates: str
    next: float | None
    last: float | None


def parse(output: bytes) -> list[TimerInfo]:
    """The lafs-backup timers in ``systemctl list-timers --all --output=json`` output (pure): times in
    microseconds since the epoch become seconds; 0 or null is "not scheduled".  Raises ValueError for
    output that is not that JSON."""
    doc = json.loads(output.decode("utf-8", "replace") or "[]")
    if not isinstance(doc, list):
        raise ValueError("expected a JSON list of timers")

    def seconds(v: Any) -> float | None:
        return v / 1e6 if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None

    out = []
    for t in doc:
        if not isinstance(t, dict):
            continue
        unit, activates = str(t.get("unit") or ""), str(t.get("activates") or "")
        if unit.startswith(PREFIX) or activates.startswith(PREFIX):
            out.append(TimerInfo(unit, activates, seconds(t.get("next")), seconds(t.get("last"))))
    return out


def process_runner(reactor: IReactorProcess) -> RunProgram:
    """Run a program through ``reactor``'s process API (no shell, stdin closed), off the reactor's thread."""
    from twisted.internet.utils import getProcessOutputAndValue

    async def run(argv: list[str]) -> tuple[int, bytes]:
        out, _err, code = await getProcessOutputAndValue(argv[0], argv[1:], reactor=reactor)
        return int(code), out
    return run


async def timers(run: RunProgram | None, which: Callable[[str], str | None] = shutil.which) -> list[TimerInfo] | None:
    """lafs-backup's timers, the system's and the user's (``systemctl --user``); None where systemd
    does not run (no systemctl, or neither manager answers) or ``run`` is None."""
    systemctl = which("systemctl")
    if run is None or systemctl is None:
        return None
    found: list[TimerInfo] = []
    answered = False
    for scope in ([], ["--user"]):
        try:
            code, out = await run([systemctl, *scope, "list-timers", "--all", "--output=json", "--no-pager"])
            if code != 0:
                continue
            found += parse(out)
            answered = True
        except Exception as e:  # (a best-effort look: a manager that fails to answer is one that does not run)
            log.debug("systemctl %s list-timers: %s", " ".join(scope), e)
    return found if answered else None
