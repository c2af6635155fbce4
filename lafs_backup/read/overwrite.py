"""What a restore does with what its target already holds: the overwrite policy (:func:`decide`, a pure
decision per entry; the file there hashed when it asks), ``delete`` (what a restored directory holds and
the snapshot does not, removed, never through a symlink, and only what ``--include``/``--exclude`` take),
a dry run's ``would ...`` lines, and the
counts of both."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Mapping

from ..store.entry import KIND_BLOCK, KIND_CHAR, KIND_FIFO, KIND_FILE, KIND_LINK
from ..protocols import InThread
from ..system.meta import Applier, FdHandle
from ..system.sparse import holds
from ..report import Reporter, _printable as _shown
from ..store.snapshot import Node, xattrs_of
from .pick import IN, MAYBE, OUT, Pick

# The restore's own logger: what it decides about the target is logged under the restore's name.
log = logging.getLogger("lafs_backup.read.restore")

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: The file type of each special kind of entry (FIFOs and devices).
SPECIAL_TYPES = {KIND_FIFO: stat.S_IFIFO, KIND_CHAR: stat.S_IFCHR, KIND_BLOCK: stat.S_IFBLK}

#: What ``--overwrite`` accepts: what to do with an entry that is already in the target.
OVERWRITE_POLICIES = ("always", "if-changed", "if-newer", "never")

#: Decision actions: nothing there (write), something there replaced (overwrite) or left (skip),
#: a directory in the way (blocked), and, for ``if-changed``, same size (compare the content).
WRITE, OVERWRITE, SKIP, BLOCKED, COMPARE = "write", "overwrite", "skip", "blocked", "compare"


@dataclass(frozen=True)
class Decision:
    """What a restore does with one non-directory entry, and why (logged at DEBUG)."""

    action: str
    reason: str


def decide(policy: str, kind: str, meta: Mapping[str, object], st: os.stat_result | None,
           link_target: bytes | None = None, snapshot_target: bytes | None = None) -> Decision:
    """What to do with the snapshot entry of ``kind`` and ``meta`` where the target holds ``st``
    (its lstat; None: nothing).  ``link_target``: what the symlink there points to;
    ``snapshot_target``: what the snapshot's does.  ``COMPARE`` asks the caller to hash the file
    there against ``meta["sha256"]``: the same content is SKIP (its attributes restored), else
    OVERWRITE."""
    if st is None:
        return Decision(WRITE, "not in the target")
    if stat.S_ISDIR(st.st_mode):
        return Decision(BLOCKED, "a directory is in the way")
    if policy == "always":
        return Decision(OVERWRITE, "--overwrite always")
    if policy == "never":
        return Decision(SKIP, "already there (--overwrite never)")
    if policy == "if-newer":
        mtime = meta.get("mtime_ns")
        if isinstance(mtime, int) and mtime > st.st_mtime_ns:
            return Decision(OVERWRITE, "the snapshot's is newer")
        return Decision(SKIP, "the one there is as new or newer")
    if policy != "if-changed":
        raise ValueError(f"unknown overwrite policy {policy!r}")
    if kind == KIND_FILE:
        if not stat.S_ISREG(st.st_mode):
            return Decision(OVERWRITE, "not a regular file there")
        if st.st_nlink != 1:
            # Its attributes would be applied to every name of it: write a new file instead.
            return Decision(OVERWRITE, "hard-linked there")
        if meta.get("size") != st.st_size:
            return Decision(OVERWRITE, "size differs")
        if not isinstance(meta.get("sha256"), str):
            return Decision(OVERWRITE, "no recorded SHA-256 to compare with")
        return Decision(COMPARE, "same size")
    if kind == KIND_LINK:
        if stat.S_ISLNK(st.st_mode) and link_target is not None and link_target == snapshot_target:
            return Decision(SKIP, "the same symlink")
        return Decision(OVERWRITE, "not the same symlink")
    want = SPECIAL_TYPES.get(kind)
    rdev = meta.get("rdev")
    if want == stat.S_IFMT(st.st_mode) and (kind == KIND_FIFO or rdev == st.st_rdev):
        return Decision(SKIP, "the same kind of file")
    return Decision(OVERWRITE, "not the same kind of file")


@dataclass
class RestoreCounts:
    """What a restore did (or, dry, would do) with the target's entries: non-directory entries
    written where nothing was, overwritten, left as they were (skipped), not restored (failed),
    and entries deleted (``delete``)."""

    written: int = 0
    overwritten: int = 0
    skipped: int = 0
    failed: int = 0
    deleted: int = 0
    #: Derived files (stored as their recipes) left out by ``--skip-derived``, and those that could
    #: not be made again (counted in ``failed`` too).
    derived_skipped: int = 0
    derived_failed: int = 0


def rel_path(parts: list[bytes], name: bytes | None = None) -> bytes:
    """The path below the target of ``name`` in the directory ``parts`` (the directory itself
    without a name; the target itself is ``.``)."""
    return b"/".join(parts + ([name] if name is not None else [])) or b"."


class Existing:
    """What a restore meets in its target: each entry already there decided on by the overwrite
    policy, what ``delete`` removes, and the counts of both (a dry run says each change instead of
    making it).

    ``applier`` gives the applier of a path's recorded attributes (a file left as it is gets
    them); ``in_thread`` hashes existing files off the reactor (None: inline); ``pick``: the paths
    ``--delete`` may remove (None: all)."""

    def __init__(self, rep: Reporter, overwrite: str, delete: bool, dry_run: bool,
                 applier: Callable[[bytes], Applier], in_thread: InThread | None, pick: Pick | None = None) -> None:
        self.rep = rep
        self.pick = pick if pick is not None else Pick()
        self.overwrite = overwrite
        self.delete = delete
        self.dry_run = dry_run
        self._applier = applier
        self._in_thread = in_thread
        self.counts = RestoreCounts()

    # -- the overwrite policy ------------------------------------------------------------
    async def decide(self, node: Node, dfd: int, rel: bytes) -> Decision:
        """The policy's decision for ``node`` against what ``dfd`` holds under its name, with the
        content compared when it asks to (a file left as it is gets its recorded attributes,
        unless this is a dry run)."""
        try:
            st: os.stat_result | None = os.stat(node.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        there = None
        if st is not None and stat.S_ISLNK(st.st_mode) and node.kind == KIND_LINK:
            there = os.readlink(node.name, dir_fd=dfd)
        decision = decide(self.overwrite, node.kind, node.metadata, st, there, node.target)
        if decision.action == COMPARE:
            decision = await self._compare(node, dfd, rel)
        log.debug("%s %r: %s", decision.action, rel, decision.reason)
        return decision

    async def _compare(self, node: Node, dfd: int, rel: bytes) -> Decision:
        """Hash the file there (opened without following a symlink, checked to be a regular file
        with one name) against the recorded SHA-256."""
        try:
            fd = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return Decision(OVERWRITE, "cannot read the file there")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != node.metadata.get("size"):
                return Decision(OVERWRITE, "the file there changed while it was compared")
            same = (await self._in_thread(holds, fd, node.metadata) if self._in_thread is not None
                    else holds(fd, node.metadata))
            if not same:
                return Decision(OVERWRITE, "content differs")
            if not self.dry_run:
                self._applier(rel).apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            return Decision(SKIP, "same content (attributes restored)")
        finally:
            os.close(fd)

    def blocked(self, rel: bytes) -> None:
        """A directory is in the way of the leaf ``rel``: it is not restored (a failure)."""
        self.rep.warn(rel, "a directory is in the way; would not be restored" if self.dry_run
                      else "a directory is in the way; not restored")
        self.counts.failed += 1

    def count(self, decision: Decision) -> None:
        if decision.action == WRITE:
            self.counts.written += 1
        elif decision.action == OVERWRITE:
            self.counts.overwritten += 1
        elif decision.action == SKIP:
            self.counts.skipped += 1

    def said(self, action: str, rel: bytes) -> None:
        """One line of a dry run: ``would ACTION PATH`` (JSON: a ``dry-run`` record)."""
        path = os.fsdecode(rel)
        self.rep.emit(f"would {action} {_shown(path)}", {"type": "dry-run", "action": action, "path": _shown(path)})

    # -- --delete --------------------------------------------------------------------------
    def delete_extra(self, dfd: int, parts: list[bytes], keep: set[bytes], state: str = IN) -> int:
        """Remove (dry: list) what the directory ``dfd`` (at ``parts``, in the ``state`` of the
        restore's :class:`~.pick.Pick`) holds and ``keep`` does not, of what the pick takes: an
        entry it leaves out is never touched, and in a directory it may hold paths of (``MAYBE``)
        only those are removed.  Returns how many entries not in ``keep`` are left there."""
        left = 0
        for name in sorted(os.fsencode(n) for n in os.listdir(dfd)):
            if name in keep:
                continue
            rel = rel_path(parts, name)
            there = self._state(dfd, name, rel, state)
            if there == OUT or not self._remove(dfd, name, rel, keep_dir=there == MAYBE):
                left += 1
        return left

    def _state(self, dfd: int, name: bytes, rel: bytes, parent: str) -> str:
        """The pick's state of the entry ``name`` the target holds (OUT: it cannot be looked at)."""
        if not self.pick.narrows:
            return IN
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return OUT
        state = self.pick.state(rel, stat.S_ISDIR(st.st_mode), parent)
        if state == OUT:
            log.debug("left %r: not taken by --include/--exclude", rel)
        return state

    def _remove(self, dfd: int, name: bytes, rel: bytes, keep_dir: bool = False) -> bool:
        """Remove ``name`` from ``dfd``, a directory with all it holds (that the pick takes); a
        symlink is removed itself, never followed (each directory is opened with O_NOFOLLOW below
        the one before).  ``keep_dir``: a directory the pick only may hold paths of: what it holds
        is removed, not itself.  Returns whether ``name`` is gone (dry: would be)."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
                try:
                    if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                        self.rep.warn(rel, "it was replaced while it was deleted; left")
                        return False
                    left = self.delete_extra(fd, rel.split(b"/"), set(), MAYBE if keep_dir else IN)
                finally:
                    os.close(fd)
                if keep_dir or left:
                    if left and not keep_dir:
                        log.debug("kept %r: it holds what --include/--exclude leave out", rel)
                    return False
                if not self.dry_run:
                    os.rmdir(name, dir_fd=dfd)
            elif not self.dry_run:
                os.unlink(name, dir_fd=dfd)
        except OSError as e:
            self.rep.warn(rel, f"cannot delete: {e.strerror}")
            return False
        self.counts.deleted += 1
        if self.dry_run:
            self.said("delete", rel)
        else:
            log.debug("deleted %r: not in the snapshot", rel)
        return True
