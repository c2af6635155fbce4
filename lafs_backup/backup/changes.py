"""What changed since the last snapshot, and when the next one is due (pure).

The watcher turns kernel events into :class:`Change` records; this module
only marks directories dirty and decides.  A round of ``watch`` rescans the
dirty directories and every directory on the way to them from the root
(their bodies change when a child's cap does); every other directory keeps
the cap it had in the previous snapshot.  A subtree whose selection may
have changed (an ignore file, a cache tag or an exclusion marker was
touched) or that is new is rescanned whole.  When events were lost (the
kernel's queue overflowed, watches ran out) nothing is trusted: the next
round is a full rescan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

#: Change kinds, as the watcher reports them.
CHANGED = "changed"      # content or attributes of ``name`` (or of the directory itself: name b"")
CREATED = "created"
DELETED = "deleted"
MOVED_FROM = "moved_from"
MOVED_TO = "moved_to"


@dataclass(frozen=True)
class Change:
    """One event: something happened to ``name`` in the directory ``dir`` (paths relative to the
    source root; ``b""`` is the root, and ``name`` ``b""`` the directory itself)."""

    dir: bytes
    name: bytes
    kind: str
    is_dir: bool = False


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def ancestors(path: bytes) -> Iterable[bytes]:
    """``path`` and every directory above it, the root (``b""``) last."""
    while path:
        yield path
        path = parent_of(path)
    yield b""


@dataclass(frozen=True)
class Round:
    """What one incremental round rescans: ``closure`` (the dirty directories and their
    ancestors: each is listed again, its children stat'ed), and ``full`` subtrees (walked
    whole).  ``everything``: a full rescan."""

    closure: frozenset[bytes]
    full: frozenset[bytes]
    everything: bool = False
    changes: int = 0

    def descend(self, path: bytes) -> bool:
        """Must the walk enter the directory ``path`` (rather than keep its previous cap)?"""
        if self.everything or path in self.closure:
            return True
        return any(p in self.full for p in ancestors(path)) if self.full else False

    @classmethod
    def of(cls, dirty: Iterable[bytes], full: Iterable[bytes] = (), everything: bool = False,
           changes: int = 0) -> "Round":
        closure: set[bytes] = set()
        for d in (*dirty, *full):
            for p in ancestors(d):
                if p in closure:
                    break  # its ancestors are in already
                closure.add(p)
        return cls(frozenset(closure), frozenset(full), everything, changes)


@dataclass
class Changes:
    """Directories changed since the last round was taken.

    ``sensitive``: file names that change what the selection includes below
    their directory (ignore files, ``CACHEDIR.TAG``, exclusion markers): a
    change to one rescans that directory's whole subtree.
    """

    sensitive: frozenset[bytes] = frozenset()
    dirty: set[bytes] = field(default_factory=set)
    full: set[bytes] = field(default_factory=set)
    everything: bool = False
    #: Events taken into account since the last round (for the report).
    count: int = 0
    #: When the first and the last change since the last round arrived (None: nothing pending).
    first: float | None = None
    last: float | None = None

    @property
    def pending(self) -> bool:
        return self.everything or bool(self.dirty or self.full)

    def note(self, c: Change, now: float) -> list[bytes]:
        """Take one change into account; returns the subtrees that left the tree (their watches
        are to be dropped: a moved directory's watch would go on reporting its old path)."""
        self._touch(now)
        gone: list[bytes] = []
        if c.name == b"":
            # The directory itself (its attributes): its edge lives in its parent.
            self.dirty.add(parent_of(c.dir) if c.dir else b"")
            return gone
        self.dirty.add(c.dir)
        path = join(c.dir, c.name)
        if c.is_dir and c.kind in (CREATED, MOVED_TO):
            self.full.add(path)
        if c.is_dir and c.kind in (DELETED, MOVED_FROM):
            gone.append(path)
            self.full.discard(path)
        if c.name in self.sensitive:
            self.full.add(c.dir)
        return gone

    def mark(self, directory: bytes, now: float) -> None:
        """``directory`` needs another look (a file in it was still being written)."""
        self._touch(now)
        self.dirty.add(directory)

    def lost(self, now: float) -> None:
        """Events were lost: the next round trusts nothing and rescans everything."""
        self._touch(now)
        self.everything = True

    def _touch(self, now: float) -> None:
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now

    def take(self) -> Round:
        """The round for what is pending now; what arrives from here on is for the next one."""
        r = Round.of(self.dirty, self.full, self.everything, self.count)
        self.dirty, self.full, self.everything = set(), set(), False
        self.count, self.first, self.last = 0, None, None
        return r

    def give_back(self, r: Round) -> None:
        """A round that could not finish: its directories are dirty again (with anything newer)."""
        if r.everything:
            self.everything = True
        self.dirty |= r.closure
        self.full |= r.full
        self.count += r.changes

    def due_in(self, now: float, settle: float, max_delay: float, min_interval: float,
               last_start: float | None) -> float | None:
        """Seconds until the next round should start (0: now); None: nothing is pending.

        A round starts once nothing has changed for ``settle`` seconds, or at
        the latest ``max_delay`` after the first pending change (a tree that
        never goes quiet still gets snapshots), and never sooner than
        ``min_interval`` after the previous round started.
        """
        if not self.pending or self.last is None or self.first is None:
            return 0.0 if self.pending else None
        when = min(self.last + settle, self.first + max_delay)
        if last_start is not None:
            when = max(when, last_start + min_interval)
        return max(0.0, when - now)
