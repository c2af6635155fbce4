"""What phase one backs up: the filter rules, plus the selection options users of other tools expect.

Each exclusion has a reason (the rule, option or ignore file that made it),
and every excluded entry is counted under its reason, with the bytes of the
files excluded.  An excluded directory counts as one entry: it is never
descended into, so its contents are neither read nor counted.

The decisions are pure; the few bytes they need from the source (a
``CACHEDIR.TAG``'s signature, an ignore file) are read by the walker and
handed in.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import UsageError
from ..filters import Filter, IgnoreLayer, compile_globs
# IgnoreLayer and compile_globs (the one glob engine: backup's --exclude, restore's --include and
# --exclude) live in ..filters; engine/backup.py imports them from here too.

#: The signature a valid ``CACHEDIR.TAG`` starts with (the Cache Directory Tagging specification).
CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
#: Ignore files larger than this are refused (a mistake, never a list of patterns).
IGNORE_FILE_MAX = 1 << 20


# -- --files-from ------------------------------------------------------------------------------
class Listed:
    """The paths of ``--files-from``: exactly these are backed up, each with its subtree.

    Their parent directories are walked too, but hold only what leads to a
    listed path.
    """

    def __init__(self, paths: Iterable[bytes]) -> None:
        self.paths = set(paths)
        self.through: set[bytes] = set()
        for p in self.paths:
            parts = p.split(b"/")
            for i in range(1, len(parts)):
                self.through.add(b"/".join(parts[:i]))
        self.seen: set[bytes] = set()

    def wants(self, rel: bytes) -> bool:
        if rel in self.through:
            return True
        parts = rel.split(b"/")
        for i in range(1, len(parts) + 1):
            head = b"/".join(parts[:i])
            if head in self.paths:
                if i == len(parts):
                    self.seen.add(rel)
                return True
        return False

    def missing(self) -> list[bytes]:
        return sorted(self.paths - self.seen)


def read_list(path: str, style: str) -> list[bytes]:
    """The entries of a ``--files-from`` file: ``plain`` (one a line; ``#`` comments, blank lines
    and surrounding blanks dropped; globs expanded later), ``verbatim`` (one a line, exactly) or
    ``raw`` (NUL-separated, exactly).  ``-`` reads stdin."""
    try:
        if path == "-":
            import sys

            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UsageError(f"--files-from{'' if style == 'plain' else '-' + style} {path}: {e.strerror}")
    if style == "raw":
        return [x for x in data.split(b"\0") if x]
    lines = data.split(b"\n")
    if style == "verbatim":
        return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines if ln]
    out = []
    for ln in lines:
        ln = ln.strip()
        if ln and not ln.startswith(b"#"):
            out.append(ln)
    return out


def listed_paths(root: bytes, entries: Sequence[tuple[bytes, bool]]) -> Listed:
    """Relative paths below ``root`` for listed entries ``(path, expand_globs)``.

    A relative entry is taken relative to the source; an absolute one must
    lie below it.  A glob that matches nothing is kept as written, so it is
    reported as missing.
    """
    out: list[bytes] = []
    for raw, expand in entries:
        full = raw if raw.startswith(b"/") else os.path.join(root, raw)
        matches = sorted(glob.glob(full)) if expand and glob.has_magic(full) else [full]
        for m in matches or [full]:
            norm = os.path.normpath(m)
            if norm == root:
                rel = b""
            elif norm.startswith(root.rstrip(b"/") + b"/"):
                rel = norm[len(root.rstrip(b"/")) + 1:]
            else:
                raise UsageError(f"--files-from: {os.fsdecode(raw)} is not below the source {os.fsdecode(root)}")
            out.append(rel)
    if b"" in out:
        return Listed([])  # the whole source
    return Listed(out)


# -- ignore files ------------------------------------------------------------------------------
def parse_ignore(base: bytes, name: bytes, data: bytes) -> IgnoreLayer:
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    label = os.fsdecode(os.path.join(base, name)) if base else os.fsdecode(name)
    return compile_globs(lines, label, base=base)


def read_globs(path: str, what: str = "--exclude-file") -> list[str]:
    """The lines of an ``--exclude-file`` (or ``what``: restore's ``--include-file``...): one glob
    a line, ``#`` comments."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None
    return data.decode("utf-8", "surrogateescape").splitlines()


def ignored_by(layers: Sequence[IgnoreLayer], rel: bytes, is_dir: bool) -> IgnoreLayer | None:
    """The ignore file that excludes ``rel``: the deepest one with a matching pattern decides."""
    for layer in reversed(layers):
        v = layer.verdict(rel, is_dir)
        if v is True:
            return layer
        if v is False:
            return None
    return None


# -- the selection -----------------------------------------------------------------------------
@dataclass
class Excluded:
    """What each rule excluded: reason -> [entries, bytes of files]."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, size: int) -> None:
        c = self.counts.setdefault(reason, [0, 0])
        c[0] += 1
        c[1] += size


@dataclass
class DirState:
    """What the selection knows about one directory being walked."""

    layers: tuple[IgnoreLayer, ...] = ()
    cache_dir: bool = False
    excluded: str | None = None  # the whole directory is excluded, for this reason


#: Reads the first ``n`` bytes of a child of the directory being entered (None: unreadable).
HeadFn = Callable[[bytes, int], "bytes | None"]


@dataclass
class Selection:
    """The filter rules and the selection options, with the counts of what they excluded."""

    filter: Filter = field(default_factory=lambda: Filter(()))
    one_file_system: bool = False
    exclude_caches: bool = False
    if_present: tuple[tuple[bytes, bytes | None], ...] = ()
    larger_than: int | None = None
    ignore_names: tuple[bytes, ...] = ()
    listed: Listed | None = None
    #: The globs of ``--exclude``, ``--iexclude`` and ``--exclude-file``, rooted at the source
    #: (each is its own layer: one that matches excludes, whatever the others say).
    globs: tuple[IgnoreLayer, ...] = ()
    excluded: Excluded = field(default_factory=Excluded)

    def enter(self, rel: bytes, children: dict[bytes, os.stat_result], parent: DirState | None,
              head: HeadFn, warn: Callable[[bytes, str], None]) -> DirState:
        """The state of a directory about to be walked, from its listing (the root: ``parent`` None)."""
        layers = parent.layers if parent else ()
        if parent is not None:
            for name, header in self.if_present:
                st = children.get(name)
                if st is not None and stat.S_ISREG(st.st_mode) and (
                        header is None or head(name, len(header)) == header):
                    shown = os.fsdecode(name) + (":" + header.decode("utf-8", "replace") if header else "")
                    return DirState(layers, excluded=f"--exclude-if-present {shown}")
        cache_dir = False
        if self.exclude_caches and parent is not None:
            st = children.get(CACHEDIR_TAG)
            cache_dir = bool(st is not None and stat.S_ISREG(st.st_mode)
                             and head(CACHEDIR_TAG, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE)
        for name in self.ignore_names:
            st = children.get(name)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > IGNORE_FILE_MAX:
                warn(os.path.join(rel, name) if rel else name, "ignore file larger than 1 MiB; not used")
                continue
            data = head(name, IGNORE_FILE_MAX)
            if data is None:
                warn(os.path.join(rel, name) if rel else name, "ignore file cannot be read; not used")
                continue
            layers = layers + (parse_ignore(rel, name, data),)
        return DirState(layers, cache_dir)

    def excludes_in(self, state: DirState) -> bool:
        """Whether :meth:`exclude` may leave out any child of a directory in ``state`` (False: it
        backs up every one, and the walk need not ask child by child)."""
        return bool(self.filter.rules or self.globs or (self.listed is not None and self.listed.paths)
                    or state.cache_dir or state.layers or self.larger_than is not None)

    def exclude(self, rel: bytes, st: os.stat_result, state: DirState) -> str | None:
        """Why the child ``rel`` of a directory in ``state`` is left out (None: it is backed up).
        (A reason added here is added to :meth:`excludes_in` too.)"""
        is_dir = stat.S_ISDIR(st.st_mode)
        rule = self.filter.rule_for(rel, is_dir)
        if rule is not None and not rule.include:
            return f"filter rule {rule.text!r}"
        for globs in self.globs:
            if globs.verdict(rel, is_dir):
                return globs.label
        if self.listed is not None and self.listed.paths and not self.listed.wants(rel):
            return "not listed by --files-from"
        if state.cache_dir and os.path.basename(rel) != CACHEDIR_TAG:
            return "--exclude-caches"
        if state.layers:
            layer = ignored_by(state.layers, rel, is_dir)
            if layer is not None:
                return f"ignore file {layer.label}"
        if self.larger_than is not None and stat.S_ISREG(st.st_mode) and st.st_size > self.larger_than:
            return "--exclude-larger-than"
        return None

    def count(self, reason: str, st: os.stat_result) -> None:
        self.excluded.add(reason, st.st_size if stat.S_ISREG(st.st_mode) else 0)
