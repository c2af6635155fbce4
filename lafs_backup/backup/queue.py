"""The queue file: a readable, line-per-entry format that round-trips any name bytes.

Layout::

    #lafs-backup-queue 1<TAB>source=/home/me<TAB>created=2026-11-21T09:00:00Z
    f<TAB>docs/a.txt<TAB>100644<TAB>1000<TAB>1000<TAB>12<TAB>mtime_ns<TAB>ctime_ns<TAB>dev<TAB>ino<TAB>nlink
    l<TAB>docs/link<TAB>120777<TAB>...<TAB>target=a.txt
    d<TAB>docs<TAB>40755<TAB>...
    d<TAB>.<TAB>40755<TAB>...
    #end<TAB>entries=4

Children always come before their directory; the root is ``.`` and comes
last.  Text fields (paths, targets, extra values) are UTF-8 where the bytes
are printable UTF-8; every other byte, a backslash, and a leading or trailing
space are written as ``\\xHH`` (``\\\\`` for a backslash), so a name may hold
newlines, tabs or invalid UTF-8 and still come back byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Callable, Iterable, Iterator

from ..store.entry import KIND_DIR, KIND_FILE, KIND_LINK, KINDS, Entry, escape, unescape
from ..errors import QueueError
from ..system.paths import replacing

MAGIC = "#lafs-backup-queue"
VERSION = 1
FOOTER = "#end"
_ROOT = "."
_KINDS = frozenset(KINDS)

_BAD_PATH = re.compile(rb"/(?:\.{0,2})/")  # an empty, "." or ".." component, or a leading "/"


#: The extras of many entries, as written: most entries of a tree have the same few (their
#: owner's names and nothing else), and each such set is escaped once.
_EXTRAS: dict[tuple[tuple[str, bytes], ...], str] = {}
#: How many sets are kept, and how long each may be: unique ones (a hard link's inode) fill it
#: too, so it starts again when full; a long one (a large xattr) is not kept.
_EXTRAS_MAX, _EXTRAS_LONG = 4096, 512


def _extras(extras: tuple[tuple[str, bytes], ...]) -> str:
    text = _EXTRAS.get(extras)
    if text is None:
        text = "".join("\t" + escape(key.encode(), "=") + "=" + escape(value) for key, value in extras)
        if len(text) < _EXTRAS_LONG:
            if len(_EXTRAS) >= _EXTRAS_MAX:
                _EXTRAS.clear()
            _EXTRAS[extras] = text
    return text


def format_entry(e: Entry) -> str:
    line = "%s\t%s\t%o\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d" % (
        e.kind, escape(e.path) if e.path else _ROOT, e.mode, e.uid, e.gid,
        e.size, e.mtime_ns, e.ctime_ns, e.dev, e.ino, e.nlink)
    if e.target is not None:
        line += "\ttarget=" + escape(e.target)
    if e.extras:
        line += _extras(e.extras)
    return line


def parse_entry(line: str) -> Entry:
    """Parse one entry line; raise ValueError naming what is wrong."""
    fields = line.split("\t")
    if len(fields) < 11:
        raise ValueError(f"expected at least 11 tab-separated fields, got {len(fields)}")
    kind, text = fields[0], fields[1]
    if kind not in _KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    plain = "\\" not in line  # nothing escaped: every text field is its UTF-8 (the common case)
    if text == _ROOT:
        path = b""
    else:
        path = text.encode("utf-8") if plain else unescape(text)
        if path and (b"\0" in path or _BAD_PATH.search(b"/" + path + b"/")):
            raise ValueError("invalid path")
    try:
        mode = int(fields[2], 8)
        uid, gid, size, mtime_ns, ctime_ns, dev, ino, nlink = nums = tuple(map(int, fields[3:11]))
    except ValueError:
        raise ValueError("a numeric field is not a number")
    if mode < 0 or min(nums) < 0:
        raise ValueError("negative number")
    target = None
    extras = []
    for item in fields[11:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        if key == "target":
            target = unescape(value)
        elif plain:
            extras.append((key, value.encode("utf-8")))
        else:
            extras.append((unescape(key).decode("utf-8"), unescape(value)))
    if (kind == "l") != (target is not None):
        raise ValueError("a symlink needs a target, and only a symlink has one")
    return Entry(kind, path, mode, uid, gid, size, mtime_ns, ctime_ns, dev, ino, nlink,
                 target, tuple(extras))


@dataclass(frozen=True)
class Header:
    source: bytes
    created: str


def format_header(h: Header) -> str:
    return f"{MAGIC} {VERSION}\tsource={escape(h.source)}\tcreated={h.created}"


def parse_header(line: str) -> Header:
    fields = line.split("\t")
    if not fields[0].startswith(MAGIC + " "):
        raise ValueError("not a lafs-backup queue file")
    if fields[0] != f"{MAGIC} {VERSION}":
        raise ValueError(f"unsupported queue version {fields[0][len(MAGIC) + 1:]!r}")
    kv = dict(f.partition("=")[::2] for f in fields[1:])
    if "source" not in kv:
        raise ValueError("header names no source")
    return Header(unescape(kv["source"]), kv.get("created", ""))


#: Called with a directory's path and the digest of everything below it (see :func:`write_queue`):
#: the cap the directory had when that subtree was last backed up, or None.
SettleFn = Callable[[bytes, bytes], "str | None"]


def write_queue(path: str, source: bytes, entries: Iterable[Entry], settle: SettleFn | None = None) -> int:
    """Write the queue atomically (see :func:`paths.replacing`); return the number of entries.

    On any error the previous queue at ``path`` is left as it was.

    With ``settle``, every directory's line carries ``tree=<hex>``, a digest of
    the lines below it (each child's line, a subdirectory's own digest before
    its line), so it changes with any entry of the subtree.  A directory that
    ``settle`` knows by that digest is kept whole: the lines of its subtree
    are taken back out of the file, and its own line carries ``reuse=<cap>``
    and ``settled=<files>,<dirs>,<symlinks>,<specials>,<bytes>`` (what the
    subtree below it holds, for the counters).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with replacing(path, buffering=1 << 20) as f:
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        f.write(format_header(Header(source, created)) + "\n")
        if settle is None:
            count = 0
            for e in entries:
                f.write(format_entry(e) + "\n")
                count += 1
        else:
            f.flush()
            count = _write_settling(f.buffer, entries, settle)
        f.write(f"{FOOTER}\tentries={count}\n")
    return count


class _Open:
    """A directory whose subtree is being written: where it starts, and its digest so far."""

    __slots__ = ("path", "start", "count", "digest", "tally")

    def __init__(self, path: bytes, start: int, count: int) -> None:
        self.path = path
        self.start = start
        self.count = count
        self.digest = hashlib.sha256(b"lafs-backup tree 1\n")
        self.tally = [0, 0, 0, 0, 0]  # files, dirs, symlinks, specials, bytes of files


def _write_settling(out: IO[bytes], entries: Iterable[Entry], settle: SettleFn) -> int:
    start = out.tell()
    pos, count = start, 0
    stack: list[_Open] = []
    for e in entries:
        path = e.path
        parent = e.parent
        is_dir = e.kind == KIND_DIR
        if is_dir:
            if stack and stack[-1].path == path:
                frame = stack.pop()
            else:
                frame = _Open(path, pos, count)  # nothing below it
        if parent is not None and (not stack or stack[-1].path != parent):
            # The first entry below directories not begun yet: they begin where it does.
            top = stack[-1].path if stack else None
            missing = []
            p: bytes | None = parent
            while p is not None and p != top:
                missing.append(p)
                p = p.rpartition(b"/")[0] if b"/" in p else (b"" if p else None)
            begin = frame.start if is_dir else pos
            begun = frame.count if is_dir else count
            stack.extend(_Open(m, begin, begun) for m in reversed(missing))
        text = format_entry(e)
        line = (text + "\n").encode("utf-8")
        if is_dir:
            digest = frame.digest.digest()
            kept = settle(path, digest)
            tree = "\ttree=" + digest.hex()
            if kept is not None:
                out.flush()
                os.ftruncate(out.fileno(), frame.start)
                out.seek(frame.start)
                pos, count = frame.start, frame.count
                tally = frame.tally
                own = text + tree + "\treuse=" + kept + "\tsettled=" + ",".join(map(str, tally))
                written = (own + "\n").encode("utf-8")
            else:
                written = (text + tree + "\n").encode("utf-8")
            out.write(written)
            pos += len(written)
            count += 1
            if stack:
                up = stack[-1]
                up.digest.update(digest)
                up.digest.update(line)
                t, sub = up.tally, frame.tally
                t[0] += sub[0]
                t[1] += sub[1] + 1
                t[2] += sub[2]
                t[3] += sub[3]
                t[4] += sub[4]
            continue
        out.write(line)
        pos += len(line)
        count += 1
        up = stack[-1]
        up.digest.update(line)
        t = up.tally
        if e.kind == KIND_FILE:
            t[0] += 1
            t[4] += e.size
        elif e.kind == KIND_LINK:
            t[2] += 1
        else:
            t[3] += 1
    out.flush()
    return count


def _last_line(f: IO[bytes]) -> bytes:
    f.seek(0, os.SEEK_END)
    end = f.tell()
    pos = max(0, end - 4096)
    f.seek(pos)
    tail = f.read()
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    return lines[-1]


class QueueReader:
    """Validates a queue file up front, then streams its entries.

    Raises :class:`QueueError` if the file is missing, not a queue, incomplete
    (no footer), or made for another source than ``expect_source``.
    """

    def __init__(self, path: str, expect_source: bytes | None = None) -> None:
        self.path = path
        try:
            self._f = open(path, "rb")
        except FileNotFoundError:
            raise QueueError(path=path, problem="it does not exist")
        except OSError as e:
            raise QueueError(path=path, problem=e.strerror)
        try:
            first = self._f.readline()
            try:
                self.header = parse_header(first.decode("utf-8").rstrip("\n"))
            except (UnicodeDecodeError, ValueError) as e:
                raise QueueError(path=path, problem=str(e))
            last = _last_line(self._f).decode("utf-8", "replace")
            if not last.startswith(FOOTER + "\tentries="):
                raise QueueError(path=path, problem="it is incomplete (no end marker): "
                                 "phase one was interrupted; build it again")
            try:
                self.count = int(last.split("=", 1)[1])
            except ValueError:
                raise QueueError(path=path, problem="its end marker is damaged")
            if expect_source is not None and self.header.source != expect_source:
                raise QueueError(path=path, problem=(
                    f"it was made for source {self.header.source.decode('utf-8', 'replace')!r}, "
                    f"not {expect_source.decode('utf-8', 'replace')!r}"))
        except BaseException:
            self._f.close()
            raise

    def __iter__(self) -> Iterator[Entry]:
        f = self._f
        f.seek(0)
        f.readline()
        n = 0
        for lineno, raw in enumerate(f, start=2):
            if raw.startswith(b"#"):
                if raw.startswith(FOOTER.encode()):
                    break
                continue
            try:
                line = raw.decode("utf-8")
                if not line.endswith("\n"):
                    raise ValueError("truncated line")
                yield parse_entry(line[:-1])
            except (UnicodeDecodeError, ValueError) as e:
                raise QueueError(path=self.path, problem=f"line {lineno}: {e}")
            n += 1
        if n != self.count:
            raise QueueError(path=self.path,
                             problem=f"it holds {n} entries but its end marker says {self.count}")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "QueueReader":
        return self

    def __exit__(self, *a: object) -> None:
        self.close()
