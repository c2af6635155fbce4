"""Progress, warnings and the end-of-run summary, printed as text or JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Callable, Collection, Protocol

from .names import shown_text
from .protocols import GatewayLike

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.internet.task import LoopingCall


@dataclass
class Stats:
    """Counters of one run (a backup or a restore)."""

    entries_scanned: int = 0
    entries_done: int = 0
    files: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_uploaded: int = 0
    files_deduplicated: int = 0
    files_lit: int = 0
    dirs: int = 0
    dirs_new: int = 0
    dirs_unchanged: int = 0
    symlinks: int = 0
    specials: int = 0
    bytes_done: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    bytes_deduplicated: int = 0
    bytes_compression_saved: int = 0
    bytes_written: int = 0
    packs: int = 0
    #: Chunks of the snapshot index: all of them, and those stored by this run.
    index_chunks: int = 0
    index_chunks_new: int = 0
    #: Directories the walk found as in the previous backup, kept whole, and the entries below them.
    subtrees_kept: int = 0
    entries_kept: int = 0
    warnings: int = 0
    problems: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    #: What each rule or option left out: reason -> {"entries": n, "bytes": b}.
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
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
        #: -q: no progress, information or summary; warnings, problems and errors still.
        self.quiet = False
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

    def advise(self, topic: str, message: str) -> None:
        """A warning about the backups as a whole, not about one entry: it does not make the run
        partial (its exit code stays 0).  In JSON mode it is a JSON line on stderr, so that a
        command whose stdout is one document (``list --json``) keeps its JSON lines parseable."""
        if self.json_mode:
            print(json.dumps({"type": "warning", "topic": topic, "message": message}, sort_keys=True),
                  file=self.err, flush=True)
        else:
            print(f"warning: {message}", file=self.err)

    def problem(self, path: bytes | str, message: str) -> None:
        """Damage found (corruption, unhealthy object): counted apart, it sets exit code 6."""
        shown = path if isinstance(path, str) else (os.fsdecode(path) if path else ".")
        self.stats.problems += 1
        if self.json_mode:
            self._json({"type": "problem", "path": _printable(shown), "message": message})
        else:
            print(f"problem: {_printable(shown)}: {message}", file=self.err)

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
        """A line for the user on stderr, in text mode only (JSON mode has its records; -q says none)."""
        if not self.json_mode and not self.quiet:
            print(message, file=self.err)

    def say(self, message: str) -> None:
        """A line for the user on stderr, in either mode (e.g. that the embedded grid was started)."""
        print(message, file=self.err, flush=True)

    def error(self, message: str) -> None:
        """The one line that says why a command failed."""
        print(f"lafs-backup: error: {message}", file=self.err, flush=True)

    def output(self, text: str, end: str = "\n") -> None:
        """A command's product on stdout, as text (a cap, a listing, a configuration)."""
        print(text, file=self.out, end=end, flush=True)

    def record(self, obj: object) -> None:
        """A command's product on stdout as one JSON line."""
        self._json(obj)

    def emit(self, text: str, obj: dict[str, Any], err: bool = False) -> None:
        """One result line: ``obj`` as JSON in JSON mode, else ``text``; on stdout (stderr with ``err``)."""
        line = json.dumps(obj, sort_keys=True) if self.json_mode else text
        print(line, file=self.err if err else self.out, flush=True)

    def _json(self, obj: object) -> None:
        print(json.dumps(obj, sort_keys=True), file=self.out, flush=True)

    def excluded(self, counts: dict[str, list[int]]) -> None:
        """Add what the selection left out, by reason (shown in the summary)."""
        for reason, (n, size) in counts.items():
            c = self.stats.excluded.setdefault(reason, {"entries": 0, "bytes": 0})
            c["entries"] += n
            c["bytes"] += size

    def excluded_lines(self) -> list[str]:
        return [f"  excluded by {reason}: {c['entries']} entries, {_size(c['bytes'])} of files"
                for reason, c in sorted(self.stats.excluded.items(), key=lambda kv: (-kv[1]["entries"], kv[0]))]

    def finish(self, kind: str, extra: dict[str, Any] | None = None,
               counters: Collection[str] | None = None) -> dict[str, Any]:
        """Print the run's summary (one JSON document, or lines on stderr) and return it: the
        :class:`Stats` fields named by ``counters`` (None: all of them; warnings, problems and
        seconds always), then ``extra``."""
        self.stats.seconds = round(self._now() - self._start, 3)
        stats = asdict(self.stats)
        if counters is not None:
            stats = {k: v for k, v in stats.items() if k in counters or k in ("warnings", "problems", "seconds")}
        summary = {"type": "summary", "operation": kind, **stats, **(extra or {})}
        if self.json_mode:
            self._json(summary)
        else:
            s = self.stats
            lines = [f"{kind} finished in {s.seconds:.1f}s"]
            if kind == "backup":
                lines.append(f"  files: {s.files} ({s.files_new} new, {s.files_changed} changed, "
                             f"{s.files_unchanged} unchanged)")
                lines.append(f"  contents: {s.files_uploaded} stored, {s.files_deduplicated} already stored "
                             f"(deduplicated), {s.files_lit} inline; {plural(s.packs, 'pack')} uploaded")
                lines.append(f"  index: {plural(s.index_chunks, 'chunk')} ({s.index_chunks_new} stored)")
                # s.dirs counts the source's directories; dirs_new and dirs_unchanged count every
                # directory object the snapshot needed (the source's, and its root, index and objects list).
                lines.append(f"  directories: {s.dirs}; symlinks: {s.symlinks}; special files: {s.specials}")
                lines.append(f"  directory objects (the source's and the snapshot's own): {s.dirs_new} stored, "
                             f"{s.dirs_unchanged} already stored")
                if s.subtrees_kept:
                    lines.append(f"  kept whole: {plural(s.subtrees_kept, 'directory', 'directories')} as in the "
                                 f"previous backup, with the {plural(s.entries_kept, 'entry', 'entries')} below them")
                lines.append(f"  bytes read: {_size(s.bytes_read)}, uploaded: {_size(s.bytes_uploaded)}; saved by "
                             f"deduplication: {_size(s.bytes_deduplicated)}, by compression: "
                             f"{_size(s.bytes_compression_saved)}")
                lines.extend(self.excluded_lines())
            elif kind == "verify":
                ext = extra or {}
                lines.append(f"  snapshot: {ext.get('id') or '(a cap not recorded here)'}; every share checked; "
                             f"file contents read back: {ext.get('files_read', s.files)} "
                             f"({_size(s.bytes_read)})")
            elif kind == "restore":
                would = "would be " if summary.get("dry_run") else ""
                lines.append(f"  {would}written: {summary.get('written', 0)}, {would}overwritten: "
                             f"{summary.get('overwritten', 0)}, left as they were: {summary.get('skipped', 0)}, "
                             f"{would}deleted: {summary.get('deleted', 0)}, failed: {summary.get('failed', 0)}")
                lines.append(f"  restored files: {s.files}, directories: {s.dirs}, symlinks: {s.symlinks}, "
                             f"special files: {s.specials}, bytes written: {s.bytes_written}")
            if s.warnings:
                lines.append(f"  warnings: {s.warnings} (entries skipped or incomplete; see above)")
            if s.problems:
                lines.append(f"  problems: {s.problems} (see above)")
            if not self.quiet:
                print("\n".join(lines), file=self.err)
        return summary


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1 ("1 pack", "0 packs"; ``words`` when not
    just an ``s``: "2 directories")."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _printable(text: str) -> str:
    """A path (decoded with surrogateescape) as one printable line, as ``ls`` prints it
    (see :func:`names.shown`: a PATH argument written so names the same path)."""
    return shown_text(text)


class _Bar(Protocol):
    """A progress bar on the terminal (tqdm's)."""

    def update(self, n: int) -> object: ...

    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...

    def close(self) -> None: ...


class Progress:
    """Live progress of phase two.

    On a terminal: a bar on stderr (tqdm) with bytes, rate and ETA, and the
    counts of entries, new, unchanged and deduplicated files.  With
    ``--json``: a progress line on stdout every ``interval`` seconds.
    Otherwise nothing at all.  Driven by a LoopingCall on the injected clock.
    """

    def __init__(self, reporter: Reporter, clock: IReactorTime, total_entries: int, total_bytes: int,
                 interval: float = 0.5) -> None:
        self.rep = reporter
        self.clock = clock
        self.total_entries = total_entries
        self.total_bytes = total_bytes
        self.interval = interval if not reporter.json_mode else max(interval, 1.0)
        self._bar: _Bar | None = None
        self._loop: LoopingCall | None = None
        self._shown = 0
        self._t0 = clock.seconds()

    @property
    def enabled(self) -> bool:
        return self.rep.json_mode or (_isatty(self.rep.err) and not self.rep.quiet)

    def start(self) -> None:
        if not self.enabled:
            return
        from twisted.internet.task import LoopingCall

        if not self.rep.json_mode:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             file=self.rep.err, leave=False, desc="backup")
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def tick(self) -> None:
        s = self.rep.stats
        if self._bar is not None:
            self._bar.update(max(0, s.bytes_done - self._shown))
            self._shown = s.bytes_done
            self._bar.set_postfix_str(
                f"entries {s.entries_done}/{self.total_entries}, stored {s.files_uploaded}, "
                f"unchanged {s.files_unchanged}, dedup {s.files_deduplicated}", refresh=True)
        else:
            elapsed = max(1e-9, self.clock.seconds() - self._t0)
            rate = s.bytes_done / elapsed
            left = max(0, self.total_bytes - s.bytes_done)
            self.rep._json({
                "type": "progress", "entries_done": s.entries_done, "entries_total": self.total_entries,
                "bytes_done": s.bytes_done, "bytes_total": self.total_bytes,
                "bytes_uploaded": s.bytes_uploaded, "files_new": s.files_new, "files_changed": s.files_changed,
                "files_unchanged": s.files_unchanged, "files_deduplicated": s.files_deduplicated,
                "rate_bytes_per_second": round(rate), "eta_seconds": round(left / rate, 1) if rate else None,
            })

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False



class Uploading(Protocol):
    """The uploader of a running backup, as the operation shows it (``backup.upload.Uploader``)."""

    @property
    def in_flight(self) -> Collection[bytes]: ...


class Operation:
    """The running command, as the manhole shows it: its counters, progress and paths in flight.

    Commands fill in what they have (``gateway``, ``uploader``, ``totals``,
    ``frame``) as they get it; everything here is read live.
    """

    def __init__(self, command: str, reporter: Reporter, now: Callable[[], float] = time.monotonic) -> None:
        self.command = command
        self.reporter = reporter
        self.gateway: GatewayLike | None = None
        self.uploader: Uploading | None = None
        #: Entries and bytes of regular files the run will go through (0 until known).
        self.totals: list[int] = [0, 0]
        #: The command's own frame (its coroutine), to inspect its local variables.
        self.frame: FrameType | None = None
        self._now = now
        self._start = now()

    @property
    def stats(self) -> Stats:
        return self.reporter.stats

    @property
    def in_flight(self) -> list[str]:
        """Paths being read or uploaded right now."""
        paths = sorted(self.uploader.in_flight) if self.uploader is not None else []
        return ["/" + p.decode("utf-8", "backslashreplace") for p in paths]

    @property
    def progress(self) -> dict[str, Any]:
        s = self.stats
        return {"command": self.command, "seconds": round(self._now() - self._start, 1),
                "entries_done": s.entries_done, "entries_total": self.totals[0],
                "bytes_done": s.bytes_done, "bytes_total": self.totals[1],
                "files_uploaded": s.files_uploaded, "bytes_uploaded": s.bytes_uploaded,
                "warnings": s.warnings, "in_flight": len(self.in_flight),
                "requests": dict(self.gateway.counts) if self.gateway is not None else {}}

    def __repr__(self) -> str:
        p = self.progress
        return (f"<{self.command}: {p['entries_done']}/{p['entries_total']} entries, "
                f"{_size(p['bytes_done'])}/{_size(p['bytes_total'])}, {p['in_flight']} in flight, "
                f"{p['seconds']}s>")


def outcome(rep: Reporter) -> int:
    """The exit code of a finished run: damage found (6), entries skipped (1), or success (0)."""
    from .errors import ExitCode

    if rep.stats.problems:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK
