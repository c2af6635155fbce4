"""The planner: what phase two does with each entry, and why (pure).

A file is decided twice.  Before it is read, from its fresh stat and the
cache row for that stat (:func:`for_file`; :func:`for_files` finds the row
a stat is known by, for a batch of files at once): unchanged (its stored
content is reused without reading it), to be read, or skipped.  Once read and
hashed, from the cache row for its content (:func:`for_content`): known
content (stored already, by this backup or an earlier one) or to be
stored.  A directory is decided from the cache row for its exact body
(:func:`for_directory`), or, when the tree lives in the snapshot index
alone, named by its body and recorded there (:func:`in_index`).  Every decision is a :class:`Decision` with its
reason, logged at DEBUG as borg logs its files cache ("UNCHANGED: ...").
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from .snapshot import Hit, file_key

UNCHANGED = "unchanged"
READ = "read"
KNOWN = "known"
STORE = "store"
SKIP = "skip"
INDEX = "index"

MODES = ("stat", "checksum", "verify", "force")


class StatLike(Protocol):
    @property
    def st_mode(self) -> int: ...


class FileStat(StatLike, Protocol):
    """What the cache knows a file's state by (an ``os.stat_result`` has it)."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime_ns(self) -> int: ...

    @property
    def st_ctime_ns(self) -> int: ...

    @property
    def st_ino(self) -> int: ...


#: The cache's rows for many keys at once (those it has), as ``lookup_many`` gives them.
Lookup = Callable[[list[bytes]], Mapping[bytes, Hit]]


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


def state_key(path: bytes, st: FileStat, plain: bool, inode: bool = True) -> bytes:
    """The cache key of a regular file's state: with its inode, or without it (the state a
    snapshot records, which is all a cache rebuilt from the repository knows of a file)."""
    return file_key(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino if inode else None, plain)


def for_files(files: Sequence[tuple[bytes, FileStat | None, str]], lookup: Lookup, mode: str,
              plain: bool) -> list[Decision]:
    """:func:`for_file` for each of ``files``: (path, its lstat now or None, why that could not be
    had).  The cache row of a regular file's stat is the one for its state with its inode or,
    failing that, without it (:func:`state_key`): ``lookup`` (the cache's, which marks the rows it
    gives as used) is asked once for the first keys of them all, then once for the second keys of
    the misses, and never for a file that is gone or no longer regular."""
    keys = [state_key(path, st, plain) if st is not None and stat.S_ISREG(st.st_mode) else None
            for path, st, _ in files]
    asked = [k for k in keys if k is not None]
    found = dict(lookup(asked)) if asked else {}
    # A state known from a snapshot (a rebuilt cache) has no inode.
    again = {state_key(path, st, plain, inode=False): k for (path, st, _), k in zip(files, keys)
             if k is not None and k not in found and st is not None}
    if again:
        found.update((again[k], hit) for k, hit in lookup(list(again)).items())
    out = []
    for (_, st, why), k in zip(files, keys):
        cached = found.get(k) if k is not None else None
        out.append(for_file(st, cached, mode, why) if why else for_file(st, cached, mode))
    return out


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


def in_index(name: str) -> Decision:
    """A directory that lives in the snapshot index alone: recorded there under ``name`` (its
    ``snapshot.dir_id``), at no request."""
    return Decision(INDEX, "recorded in the snapshot index", Hit(name, None))
