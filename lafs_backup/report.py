"""Progress, warnings and the end-of-run summary, printed as text or JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
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
    #: Source directories recorded in the snapshot index alone (no Tahoe directory made).
    dirs_indexed: int = 0
    symlinks: int = 0
    specials: int = 0
    #: Bytes of regular files done with, whatever became of them (stored, unchanged, kept, skipped).
    bytes_done: int = 0
    #: Bytes of the files phase two found new or changed (read to be stored, unless their content
    #: turns out to be stored already): what a backup has to send, before compression.
    bytes_to_store: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    #: Bytes of request bodies the run handed to the gateway (contents, directories, index,
    #: records), attempts that failed not counted: what went over the wire to the grid.
    bytes_sent: int = 0
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
    #: Derived files stored as their recipes, and their bytes (not stored); those that matched a rule
    #: but were stored as bytes, by reason (``backup/derive.py``).
    derived: int = 0
    bytes_derived: int = 0
    derived_not: dict[str, int] = field(default_factory=dict)
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
        self._now = now
        self._start = now()
        self.stats = Stats()
        self.warnings: list[Warning_] = []
        self._said_once: set[str] = set()
        #: What the run found, by name, for the record of its run (check's ``unhealthy`` and
        #: ``repaired`` objects, verify's ``problems``): ``status`` and the metrics show it.
        self.found: dict[str, Any] = {}

    @property
    def stats(self) -> Stats:
        """The counters of this run, or of this round of a command that runs several (a new
        :class:`Stats` set here starts them again, and :meth:`elapsed` with them)."""
        return self._stats

    @stats.setter
    def stats(self, value: Stats) -> None:
        self._stats = value
        self._stats_start = self._now()

    def elapsed(self) -> float:
        """Seconds since the counters in :attr:`stats` started (the run, or its round, or its source)."""
        return self._now() - self._stats_start

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

    def hook_output(self, hook: str, stream: str, line: str) -> None:
        """A line a hook (``source.hooks``) wrote on its ``stream`` (stdout or stderr): on stderr as
        ``hook NAME: LINE`` (not with -q), or a JSON line ``{"type": "hook", ...}`` on stdout."""
        if self.json_mode:
            self._json({"type": "hook", "hook": hook, "stream": stream, "line": line})
        elif not self.quiet:
            print(f"hook {hook}: {line}", file=self.err, flush=True)

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
        return [f"  excluded by {reason}: {c['entries']} entries, {size_text(c['bytes'])} of files"
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
        if kind == "backup":  # (the name ``stats`` gives the same figure: see the summary's "added")
            summary["bytes_added"] = self.stats.bytes_uploaded
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
                             f"{s.dirs_unchanged} already stored"
                             + (f"; {s.dirs_indexed} recorded in the index alone" if s.dirs_indexed else ""))
                if s.subtrees_kept:
                    lines.append(f"  kept whole: {plural(s.subtrees_kept, 'directory', 'directories')} as in the "
                                 f"previous backup, with the {plural(s.entries_kept, 'entry', 'entries')} below them")
                # "added": the contents and index chunks this backup stored, after compression (what
                # ``stats`` counts as the objects it added: the same bytes when the cache knew the rest).
                lines.append(f"  bytes: {size_text(s.bytes_to_store)} new or changed, {size_text(s.bytes_read)} "
                             f"read, {size_text(s.bytes_sent)} sent to the grid; added: {size_text(s.bytes_uploaded)} "
                             f"(contents and index, after compression); saved by deduplication: "
                             f"{size_text(s.bytes_deduplicated)}, by compression: {size_text(s.bytes_compression_saved)}")
                lines.extend(self.excluded_lines())
                if s.derived or s.derived_not:
                    lines.append(f"  derived: {plural(s.derived, 'file')} stored as recipes ({size_text(s.bytes_derived)} "
                                 f"not stored); {sum(s.derived_not.values())} matched a rule but were stored as bytes")
                    lines.extend(f"    {n}: {reason}" for reason, n in sorted(s.derived_not.items(), key=lambda kv: -kv[1]))
            elif kind == "verify":
                ext = extra or {}
                lines.append(f"  snapshot: {ext.get('id') or '(a cap not recorded here)'}; every share checked; "
                             f"file contents read back: {ext.get('files_read', s.files)} "
                             f"({size_text(s.bytes_read)})")
                if ext.get("derived_checked"):
                    lines.append(f"  derived files: {ext['derived_checked']} recipes checked (their inputs are in the "
                                 f"snapshot as recorded), {ext.get('derived_remade', 0)} made again and compared")
            elif kind == "restore":
                would = "would be " if summary.get("dry_run") else ""
                lines.append(f"  {would}written: {summary.get('written', 0)}, {would}overwritten: "
                             f"{summary.get('overwritten', 0)}, left as they were: {summary.get('skipped', 0)}, "
                             f"{would}deleted: {summary.get('deleted', 0)}, failed: {summary.get('failed', 0)}")
                if not summary.get("dry_run"):  # (a dry run restores nothing: the line above says it all)
                    lines.append(f"  restored files: {s.files}, directories: {s.dirs}, symlinks: {s.symlinks}, "
                                 f"special files: {s.specials}; {size_text(s.bytes_written)} written")
                derived = [f"{n} {what}" for n, what in ((summary.get("derived_skipped"), "left out (--skip-derived)"),
                                                         (summary.get("derived_failed"), "could not be made again"))
                           if n]
                if derived:
                    lines.append(f"  derived files: {', '.join(derived)}")
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


def size_text(n: float) -> str:
    """A number of bytes as people read it, the one way every summary, progress line and message
    shows a size: binary units, whole bytes below 1 KiB, one decimal from there on ("785 B",
    "1.0 KiB", "2.9 MiB", "1.2 GiB").  JSON carries exact bytes instead."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    sign, n = ("-" if n < 0 else ""), abs(n)
    i = 0
    # (rounded first: 1048575 bytes is "1.0 MiB", not "1024.0 KiB")
    while i < len(units) - 1 and (round(n) if i == 0 else round(n, 1)) >= 1024:
        n /= 1024
        i += 1
    return f"{sign}{n:.0f} B" if i == 0 else f"{sign}{n:.1f} {units[i]}"


def duration_text(seconds: float | None) -> str:
    """A time left as progress shows it: "0:42", "12:05", "1:02:03"; "?" when unknown."""
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _printable(text: str) -> str:
    """A path (decoded with surrogateescape) as one printable line, as ``ls`` prints it
    (see :func:`names.shown`: a PATH argument written so names the same path)."""
    return shown_text(text)


def left_to_send(total: int, done: int, storing: int, to_store: int, deduplicated: int, uploaded: int,
                 compression_saved: int, sent: int) -> int:
    """The bytes a backup still has to send to the grid: an estimate, never below 0 (pure).

    Of the ``total`` bytes of regular files, phase two knows the fate of those it has come to:
    ``done`` (finished, whatever became of them) and ``storing`` (new or changed, being stored
    now).  Of those, ``to_store`` were new or changed, ``deduplicated`` of them turned out to be
    stored already.  The files not come to yet are expected to need storing in the same share, so
    the unchanged files of a tree count for nothing.  What compression kept of the contents stored
    so far (``uploaded``, against ``compression_saved``) turns file bytes into bytes on the wire,
    and what was ``sent`` already is taken off.
    """
    decided = done + storing
    needed = max(0, to_store - deduplicated)
    undecided = max(0, total - decided)
    share = min(1.0, needed / decided) if decided else 1.0
    kept = uploaded / (uploaded + compression_saved) if uploaded + compression_saved > 0 else 1.0
    return max(0, round((needed + share * undecided) * kept) - sent)


@dataclass(frozen=True)
class Estimate:
    """Where a backup's sending stands: ``sent`` bytes, about ``left`` still to send, and the rate
    of the bytes sent lately (bytes a second; None until two measures, or while none moved)."""

    sent: int
    left: int
    rate: float | None

    @property
    def total(self) -> int:
        """What the run sends in all, as it looks now."""
        return self.sent + self.left

    @property
    def eta(self) -> float | None:
        """Seconds until what is left is sent at the recent rate (0: nothing left; None: unknown,
        rather than a made-up 0 while nothing moves)."""
        if self.left == 0:
            return 0.0
        return self.left / self.rate if self.rate else None


#: Seconds of recent progress the send rate is measured over: long enough to even out a rate
#: limit's bursts and packs sealed now and then, short enough to follow a link that slows down.
RATE_WINDOW = 10.0


class Uploading(Protocol):
    """The uploader of a running backup, as progress and the manhole read it (``backup.upload.Uploader``)."""

    @property
    def in_flight(self) -> Collection[bytes]: ...

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies this run handed to the gateway (failed attempts taken back)."""
        ...

    @property
    def bytes_storing(self) -> int:
        """Bytes of the new or changed files being stored right now."""
        ...


class _Bar(Protocol):
    """A progress bar on the terminal (tqdm's; the numbers it shows are ours)."""

    total: float
    n: float

    def set_description_str(self, desc: str | None = None, refresh: bool | None = True) -> None: ...

    def close(self) -> None: ...


class Progress:
    """Live progress of phase two, counted in bytes sent to the grid.

    It shows what went over the wire (``uploader.bytes_sent``) against an estimate of what the run
    sends in all (:func:`left_to_send`: the new and changed files, not the unchanged ones), the rate
    of the bytes sent over the last :data:`RATE_WINDOW` seconds, and an ETA from the bytes left to
    send at that rate.  On a terminal: a bar on stderr, drawn by tqdm with these numbers in
    :func:`size_text`'s units, and the counts of entries and files.  With ``--json``: a progress
    line on stdout every ``interval`` seconds (at least one).  Otherwise nothing at all.  Driven by
    a LoopingCall on the injected clock, which every time it shows is read from.
    """

    def __init__(self, reporter: Reporter, clock: IReactorTime, total_entries: int, total_bytes: int,
                 uploader: Uploading | None = None, interval: float = 0.5) -> None:
        self.rep = reporter
        self.clock = clock
        self.total_entries = total_entries
        self.total_bytes = total_bytes
        self.uploader = uploader
        self.interval = interval if not reporter.json_mode else max(interval, 1.0)
        self._bar: _Bar | None = None
        self._loop: LoopingCall | None = None
        #: (time, bytes sent) measured over the last RATE_WINDOW seconds, oldest first.
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def enabled(self) -> bool:
        return self.rep.json_mode or (_isatty(self.rep.err) and not self.rep.quiet)

    def start(self) -> None:
        if not self.enabled:
            return
        from twisted.internet.task import LoopingCall

        self._samples.append((self.clock.seconds(), self._sent()))
        if not self.rep.json_mode:
            from tqdm import tqdm

            self._bar = tqdm(total=1, file=self.rep.err, leave=False, dynamic_ncols=True,
                             bar_format="{percentage:3.0f}%|{bar}| {desc}")
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def _sent(self) -> int:
        return self.uploader.bytes_sent if self.uploader is not None else self.rep.stats.bytes_sent

    def measure(self) -> Estimate:
        """Where sending stands now; each call is also a sample of the rate."""
        s = self.rep.stats
        sent = self._sent()
        storing = self.uploader.bytes_storing if self.uploader is not None else 0
        left = left_to_send(self.total_bytes, s.bytes_done, storing, s.bytes_to_store, s.bytes_deduplicated,
                            s.bytes_uploaded, s.bytes_compression_saved, sent)
        now = self.clock.seconds()
        samples = self._samples
        samples.append((now, sent))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()  # (the oldest kept is at most RATE_WINDOW old, or the only one before now)
        t0, sent0 = samples[0]
        rate = (sent - sent0) / (now - t0) if now > t0 else None
        return Estimate(sent, left, rate)

    def line(self, est: Estimate) -> str:
        """The text beside the bar."""
        s = self.rep.stats
        rate = f"{size_text(est.rate)}/s" if est.rate is not None else "? B/s"
        return (f"{size_text(est.sent)} of ~{size_text(est.total)} sent, {rate}, ETA {duration_text(est.eta)}; "
                f"entries {s.entries_done}/{self.total_entries}, files stored {s.files_uploaded}, "
                f"unchanged {s.files_unchanged}, deduplicated {s.files_deduplicated}")

    def tick(self) -> None:
        s = self.rep.stats
        est = self.measure()
        if self._bar is not None:
            self._bar.total = max(1, est.total)
            self._bar.n = est.sent
            self._bar.set_description_str(self.line(est), refresh=True)
        else:
            self.rep._json({
                "type": "progress", "entries_done": s.entries_done, "entries_total": self.total_entries,
                "bytes_done": s.bytes_done, "bytes_total": self.total_bytes,
                "bytes_sent": est.sent, "bytes_to_send": est.total, "bytes_uploaded": s.bytes_uploaded,
                "files_new": s.files_new, "files_changed": s.files_changed,
                "files_unchanged": s.files_unchanged, "files_deduplicated": s.files_deduplicated,
                "rate_bytes_per_second": round(est.rate) if est.rate is not None else None,
                "eta_seconds": round(est.eta, 1) if est.eta is not None else None,
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
                "bytes_sent": self.uploader.bytes_sent if self.uploader is not None else s.bytes_sent,
                "files_uploaded": s.files_uploaded, "bytes_uploaded": s.bytes_uploaded,
                "warnings": s.warnings, "in_flight": len(self.in_flight),
                "requests": dict(self.gateway.counts) if self.gateway is not None else {}}

    def __repr__(self) -> str:
        p = self.progress
        return (f"<{self.command}: {p['entries_done']}/{p['entries_total']} entries, "
                f"{size_text(p['bytes_done'])}/{size_text(p['bytes_total'])} done, {size_text(p['bytes_sent'])} "
                f"sent, {p['in_flight']} in flight, {p['seconds']}s>")


def outcome(rep: Reporter) -> int:
    """The exit code of a finished run: damage found (6), entries skipped (1), or success (0)."""
    from .errors import ExitCode

    if rep.stats.problems:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK
