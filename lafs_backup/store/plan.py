"""The planner: what phase two does with each entry, and why (pure).

A file is decided twice.  Before it is read, from its fresh stat and the
cache row for that stat (:func:`for_file`): unchanged (its stored content
is reused without reading it), to be read, or skipped.  Once read and
hashed, from the cache row for its content (:func:`for_content`): known
content (stored already, by this backup or an earlier one) or to be
stored.  A directory is decided from the cache row for its exact body
(:func:`for_directory`).  Every decision is a :class:`Decision` with its
reason, logged at DEBUG as borg logs its files cache ("UNCHANGED: ...").
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Protocol

from .snapshot import Hit

UNCHANGED = "unchanged"
READ = "read"
KNOWN = "known"
STORE = "store"
SKIP = "skip"

MODES = ("stat", "checksum", "verify", "force")


class StatLike(Protocol):
    @property
    def st_mode(self) -> int: ...


@dataclass(frozen=True)
class Decision:
    """What to do with one entry.

    ``hit`` is where its content already lives (UNCHANGED, KNOWN).  ``change``
    says how a file's content relates to what the last backup of this path
    held: "new", "changed" or "unchanged" (None until its content is known).
    ``problem`` is damage found on the way (``--mode verify``).
    """

    action: str
    reason: str
    hit: Hit | None = None
    change: str | None = None
    problem: str | None = None

    def __str__(self) -> str:
        return f"{self.action.upper()}: {self.reason}"


def for_file(st: StatLike | None, cached: Hit | None, mode: str,
             unreadable: str = "it vanished since the scan") -> Decision:
    """Before reading: ``st`` is the file's lstat now (None: it could not be had, for the reason
    ``unreadable``), ``cached`` the cache row for exactly that stat (path, size, mtime, ctime,
    inode)."""
    if st is None:
        return Decision(SKIP, unreadable)
    if not stat.S_ISREG(st.st_mode):
        return Decision(SKIP, "it is no longer a regular file")
    if mode == "stat" and cached is not None:
        return Decision(UNCHANGED, "size, mtime, ctime and inode as when it was stored", cached, "unchanged")
    if mode == "force":
        return Decision(READ, "mode force: every file is stored again")
    if mode in ("checksum", "verify"):
        return Decision(READ, f"mode {mode}: every file is read and hashed")
    return Decision(READ, "its size, mtime, ctime or inode differ from every stored state")


def for_content(sha256: bytes, known: Hit | None, cached: Hit | None, seen_before: bool,
                mode: str) -> Decision:
    """Once read: ``known`` is the cache row for this content, ``cached`` the row for the file's
    stat (if any: a content that changed under it is silent corruption in ``--mode verify``),
    ``seen_before`` whether content was stored from this path before."""
    if cached is not None and cached.sha256 == sha256:
        change = "unchanged"
    elif cached is not None and cached.sha256 is not None:
        change = "changed"
    else:
        change = "changed" if seen_before else "new"
    problem = None
    if mode == "verify" and change == "changed" and cached is not None:
        problem = ("content changed although its size, mtime, ctime and inode did not "
                   "(silent corruption in the source?)")
    if mode == "force":
        return Decision(STORE, "mode force: stored again", None, change, problem)
    if known is not None:
        return Decision(KNOWN, "its content is stored already (same SHA-256)", known, change, problem)
    return Decision(STORE, "its content is not stored yet", None, change, problem)


def for_directory(known: Hit | None, mode: str) -> Decision:
    """``known``: the cache row for the directory's exact body (names, caps, metadata)."""
    if mode == "force":
        return Decision(STORE, "mode force: made again")
    if known is not None:
        return Decision(KNOWN, "the same children and metadata were stored already", known)
    return Decision(STORE, "its children or their metadata changed")
