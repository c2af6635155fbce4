"""Progress, warnings and the end-of-run summary, printed as text or JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable


@dataclass
class Stats:
    """Counters of one run (a backup or a restore)."""

    entries_scanned: int = 0
    files: int = 0
    files_new: int = 0
    files_unchanged: int = 0
    files_lit: int = 0
    files_deduplicated: int = 0
    dirs: int = 0
    dirs_new: int = 0
    dirs_unchanged: int = 0
    symlinks: int = 0
    specials: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    bytes_written: int = 0
    packs: int = 0
    warnings: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Warning_:
    path: str
    message: str


class Reporter:
    """Collects warnings and counters; prints warnings as they happen and a summary at the end.

    Text goes to ``err`` (stderr).  With ``json_mode`` each warning and the
    summary are JSON lines on ``out`` instead.
    """

    def __init__(self, json_mode: bool = False, out: IO[str] | None = None, err: IO[str] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stats = Stats()
        self.warnings: list[Warning_] = []
        self._now = now
        self._start = now()
        self._said_once: set[str] = set()

    def warn(self, path: bytes | str, message: str) -> None:
        shown = path if isinstance(path, str) else (os.fsdecode(path) if path else ".")
        w = Warning_(shown, message)
        self.stats.warnings += 1
        if len(self.warnings) < 10000:  # bounded; the count stays exact
            self.warnings.append(w)
        if self.json_mode:
            self._json({"type": "warning", "path": _printable(shown), "message": message})
        else:
            print(f"warning: {_printable(shown)}: {message}", file=self.err)

    def note(self, path: bytes | str, message: str) -> None:
        """Tell the user something about one path that is not a failure (no effect on the exit code)."""
        shown = path if isinstance(path, str) else (os.fsdecode(path) if path else ".")
        if self.json_mode:
            self._json({"type": "note", "path": _printable(shown), "message": message})
        else:
            print(f"note: {_printable(shown)}: {message}", file=self.err)

    def note_once(self, key: str, message: str) -> None:
        """Say something once per run (e.g. 'ownership not restored: not root')."""
        if key in self._said_once:
            return
        self._said_once.add(key)
        if self.json_mode:
            self._json({"type": "note", "message": message})
        else:
            print(f"note: {message}", file=self.err)

    def info(self, message: str) -> None:
        if not self.json_mode:
            print(message, file=self.err)

    def _json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, sort_keys=True), file=self.out, flush=True)

    def finish(self, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.stats.seconds = round(self._now() - self._start, 3)
        summary = {"type": "summary", "operation": kind, **asdict(self.stats), **(extra or {})}
        if self.json_mode:
            self._json(summary)
        else:
            s = self.stats
            lines = [f"{kind} finished in {s.seconds:.1f}s"]
            if kind == "backup":
                lines.append(f"  files: {s.files} ({s.files_new} uploaded, {s.files_unchanged} unchanged, "
                             f"{s.files_deduplicated} deduplicated, {s.files_lit} stored inline)")
                lines.append(f"  directories: {s.dirs} ({s.dirs_new} created, {s.dirs_unchanged} unchanged); "
                             f"symlinks: {s.symlinks}; special files: {s.specials}")
                lines.append(f"  bytes read: {s.bytes_read}, uploaded: {s.bytes_uploaded}")
            elif kind == "restore":
                lines.append(f"  files: {s.files}, directories: {s.dirs}, symlinks: {s.symlinks}, "
                             f"special files: {s.specials}, bytes written: {s.bytes_written}")
            if s.warnings:
                lines.append(f"  warnings: {s.warnings} (entries skipped or incomplete; see above)")
            print("\n".join(lines), file=self.err)
        return summary


def _printable(text: str) -> str:
    """A path made safe for one terminal line (no raw control characters)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode(
        "unicode_escape").decode("ascii") if not text.isprintable() else text
