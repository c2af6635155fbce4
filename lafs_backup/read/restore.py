"""Restore: read a snapshot back from the grid into a target directory, never writing outside it.

Every file operation goes through a directory fd reached from the target
by an ``openat`` chain that never follows a symlink, so a path of any
length works and nothing can be written outside the target, whatever the
snapshot or the target already holds.  Attributes are applied in the order
chown, mode, xattrs, ACLs, capabilities, times; a directory's after all its
children are done.

What is already in the target is met by an overwrite policy (:func:`decide`,
a pure decision per entry), optionally with ``delete`` (entries of the
restored directories that the snapshot does not hold are removed, never
through a symlink) and ``dry_run`` (each change is listed, none is made).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from ..store.entry import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_LINK, KIND_SOCKET
from ..errors import GatewayError, RestoreError
from ..log import NOISE
from ..protocols import InThread
from ..slots import Slots
from ..system.meta import Applier, FdHandle, LinkHandle, forget_owner_names
from ..system.paths import open_dir_chain
from ..report import Reporter, _printable as _shown
from ..store.snapshot import Node, xattrs_of
from .reader import Reader

log = logging.getLogger(__name__)

_ZERO_RUN = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

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
    want = {KIND_FIFO: stat.S_IFIFO, KIND_CHAR: stat.S_IFCHR, KIND_BLOCK: stat.S_IFBLK}.get(kind)
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


class _Group:
    """A hard-link group: the first member restored, awaited by the others."""

    def __init__(self) -> None:
        self.done: tuple[list[bytes], bytes] | None = None
        self.failed = False
        self.waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        if self.done is not None or self.failed:
            d.callback(None)
        else:
            self.waiters.append(d)
        return d

    def finish(self, where: tuple[list[bytes], bytes] | None) -> None:
        self.done = where
        self.failed = where is None
        for d in self.waiters:
            d.callback(None)
        self.waiters = []


class Restorer:
    """Restores one snapshot (or some of its subtrees) below ``target``.

    ``owners``: restore ownership (None: only when running as root).
    ``numeric``: use the recorded uid/gid, not the user and group names.
    """

    def __init__(self, reader: Reader, reporter: Reporter, target: str, window: int = 64,
                 listings: int = 4, owners: bool | None = None, numeric: bool = False,
                 clock: IReactorTime | None = None, overwrite: str = "always", delete: bool = False,
                 dry_run: bool = False, in_thread: InThread | None = None) -> None:
        """``clock`` (None: the reader's) is the reactor a freed slot wakes the next directory or
        file on.  ``overwrite`` (one of :data:`OVERWRITE_POLICIES`) says what to do with an entry
        already there; ``delete`` removes what the restored directories hold and the snapshot does
        not; ``dry_run`` lists each change (``would write PATH``...) and makes none.
        ``in_thread`` hashes existing files off the reactor (None: inline)."""
        if overwrite not in OVERWRITE_POLICIES:
            raise ValueError(f"unknown overwrite policy {overwrite!r}")
        self.reader = reader
        clock = clock if clock is not None else reader.clock
        self.rep = reporter
        self.stats = reporter.stats
        self.target = os.fsencode(os.path.abspath(target))
        self._window = Slots(window, clock)
        self._listings = Slots(listings, clock)
        self._root_fd = -1
        self._is_root = os.geteuid() == 0
        if owners is None:
            owners = self._is_root
            if not owners:
                reporter.note_once("owners", "not running as root: ownership (uid/gid) is not restored")
        self._owners = owners
        self._numeric = numeric
        self._groups: dict[str, _Group] = {}
        self._prefetch_jobs = max(1, listings // 2)
        self._leaf_dirs = _DirFds()
        self._overwrite = overwrite
        self._delete = delete
        self._dry_run = dry_run
        self._in_thread = in_thread
        self.counts = RestoreCounts()
        forget_owner_names()  # user and group names are looked up afresh for each restore

    async def run(self, snapshot_cap: str, paths: Sequence[bytes] = ()) -> None:
        tree, objects = await self.reader.root(snapshot_cap)
        if self._dry_run:
            await self._plan(tree, paths)
            return
        prefetch = None
        if not paths:
            # A full restore needs every pack: fetch them all now, while the tree is being walked.
            prefetch = Deferred.fromCoroutine(self.reader.prefetch(objects, self._prefetch_jobs))
        try:
            os.makedirs(self.target, exist_ok=True)
            self._root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreError(problem=f"cannot use target {os.fsdecode(self.target)}: {e.strerror}")
        try:
            if not paths:
                await self._restore_dir(tree, [])
            for p in paths:
                node, parents = await self._find(tree, p)
                with self._dir(parents, create=True):
                    pass
                if node.kind == KIND_DIR:
                    await self._restore_dir(node, parents + [node.name])
                else:
                    await self._restore_leaf(node, parents)
        finally:
            if prefetch is not None:
                await prefetch
            self._leaf_dirs.close()
            os.close(self._root_fd)

    # -- a dry run ---------------------------------------------------------------------
    async def _plan(self, tree: Node, paths: Sequence[bytes]) -> None:
        """Say what a restore would change, changing nothing (a missing target is empty)."""
        try:
            self._root_fd = os.open(self.target, _DIR_FLAGS)
        except FileNotFoundError:
            self._root_fd = -1
        except OSError as e:
            raise RestoreError(problem=f"cannot use target {os.fsdecode(self.target)}: {e.strerror}")
        try:
            if not paths:
                await self._plan_dir(tree, [])
            for p in paths:
                node, parents = await self._find(tree, p)
                if node.kind == KIND_DIR:
                    await self._plan_dir(node, parents + [node.name])
                else:
                    fd = self._open_existing(parents)
                    try:
                        await self._plan_leaf(node, fd, parents)
                    finally:
                        if fd is not None:
                            os.close(fd)
        finally:
            if self._root_fd >= 0:
                os.close(self._root_fd)

    def _open_existing(self, parts: list[bytes]) -> int | None:
        """The directory ``parts`` if the target has it (None: a restore would make it)."""
        if self._root_fd < 0:
            return None
        try:
            return open_dir_chain(self._root_fd, parts)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise

    async def _plan_dir(self, node: Node, parts: list[bytes]) -> None:
        self.stats.dirs += 1
        fd = self._open_existing(parts)
        try:
            children = await self._list(node)
            for child in children:
                if child.kind == KIND_DIR:
                    await self._plan_dir(child, parts + [child.name])
                else:
                    await self._plan_leaf(child, fd, parts)
            if self._delete and fd is not None:
                self._delete_extra(fd, parts, {c.name for c in children})
        finally:
            if fd is not None:
                os.close(fd)

    async def _plan_leaf(self, node: Node, dfd: int | None, parts: list[bytes]) -> None:
        rel = self._rel(parts, node.name)
        if node.kind == KIND_SOCKET:
            return
        decision = Decision(WRITE, "not in the target") if dfd is None else await self._decide(node, dfd, rel)
        if decision.action == BLOCKED:
            self.rep.warn(rel, "a directory is in the way; would not be restored")
            self.counts.failed += 1
            return
        self._count(decision)
        self._said(decision.action, rel)

    def _said(self, action: str, rel: bytes) -> None:
        """One line of a dry run: ``would ACTION PATH`` (JSON: a ``dry-run`` record)."""
        path = os.fsdecode(rel)
        self.rep.emit(f"would {action} {_shown(path)}", {"type": "dry-run", "action": action, "path": _shown(path)})

    def _count(self, decision: Decision) -> None:
        if decision.action == WRITE:
            self.counts.written += 1
        elif decision.action == OVERWRITE:
            self.counts.overwritten += 1
        elif decision.action == SKIP:
            self.counts.skipped += 1

    # -- the overwrite policy and --delete ---------------------------------------------
    async def _decide(self, node: Node, dfd: int, rel: bytes) -> Decision:
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
        decision = decide(self._overwrite, node.kind, node.metadata, st, there, node.target)
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
            digest = await self._in_thread(_sha256_fd, fd) if self._in_thread is not None else _sha256_fd(fd)
            if digest != node.metadata.get("sha256"):
                return Decision(OVERWRITE, "content differs")
            if not self._dry_run:
                self._applier(rel).apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            return Decision(SKIP, "same content (attributes restored)")
        finally:
            os.close(fd)

    def _delete_extra(self, dfd: int, parts: list[bytes], keep: set[bytes]) -> None:
        """Remove (dry: list) what the directory ``dfd`` holds and ``keep`` does not."""
        for name in sorted(os.fsencode(n) for n in os.listdir(dfd)):
            if name not in keep:
                self._remove(dfd, name, self._rel(parts, name))

    def _remove(self, dfd: int, name: bytes, rel: bytes) -> None:
        """Remove ``name`` from ``dfd``, a directory with all it holds; a symlink is removed itself,
        never followed (each directory is opened with O_NOFOLLOW below the one before)."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                        self.rep.warn(rel, "it was replaced while it was deleted; left")
                        return
                    self._delete_extra(fd, rel.split(b"/"), set())
                finally:
                    os.close(fd)
                if not self._dry_run:
                    os.rmdir(name, dir_fd=dfd)
            elif not self._dry_run:
                os.unlink(name, dir_fd=dfd)
        except OSError as e:
            self.rep.warn(rel, f"cannot delete: {e.strerror}")
            return
        self.counts.deleted += 1
        if self._dry_run:
            self._said("delete", rel)
        else:
            log.debug("deleted %r: not in the snapshot", rel)

    # -- navigation ---------------------------------------------------------------
    async def _find(self, tree: Node, rel: bytes) -> tuple[Node, list[bytes]]:
        comps = [c for c in rel.strip(b"/").split(b"/") if c not in (b"", b".")]
        if not comps or b".." in comps:
            raise RestoreError(problem=f"invalid path {os.fsdecode(rel)!r}")
        node = tree
        for comp in comps:
            if node.kind != KIND_DIR:
                raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
            match = [c for c in await self._list(node) if c.name == comp]
            if not match:
                raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
            node = match[0]
        return node, comps[:-1]

    async def _list(self, node: Node) -> list[Node]:
        return await self.reader.children(node)

    @contextmanager
    def _dir(self, parts: list[bytes], create: bool = False) -> Iterator[int]:
        fd = open_dir_chain(self._root_fd, parts, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _leaf_dir(self, parts: list[bytes]) -> Iterator[int]:
        """The directory leaves are created in: opened through the same chain as :meth:`_dir` once,
        then kept open while its leaves are made (the directory itself, whatever happens to the
        path meanwhile)."""
        key = tuple(parts)
        fd = self._leaf_dirs.take(key)
        if fd is None:
            fd = self._leaf_dirs.put(key, open_dir_chain(self._root_fd, parts, create=True))
        try:
            yield fd
        finally:
            self._leaf_dirs.give(key)

    def _rel(self, parts: list[bytes], name: bytes | None = None) -> bytes:
        return b"/".join(parts + ([name] if name is not None else [])) or b"."

    def _applier(self, rel: bytes) -> Applier:
        return Applier(lambda msg: self.rep.warn(rel, msg), self.rep.note_once, self._owners, self._numeric)

    # -- directories ----------------------------------------------------------------
    async def _restore_dir(self, node: Node, parts: list[bytes]) -> None:
        self.stats.dirs += 1
        rel = self._rel(parts)
        try:
            with self._dir(parts, create=True) as fd:
                st = os.fstat(fd)
                if st.st_uid == os.geteuid() and st.st_mode & 0o700 != 0o700:
                    # Ours but not writable (a read-only directory restored before): writable while
                    # its children are restored; its recorded mode is applied after them.
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError as e:
            self.rep.warn(rel, f"cannot create directory: {e.strerror}")
            return
        made = (st.st_dev, st.st_ino)
        waits: list[Deferred] = []
        await self._listings.acquire()
        try:
            children = await self._list(node)
            for child in children:
                if child.kind == KIND_DIR:
                    waits.append(Deferred.fromCoroutine(self._restore_dir(child, parts + [child.name])))
                else:
                    await self._window.acquire()
                    waits.append(Deferred.fromCoroutine(self._windowed_leaf(child, parts)))
        finally:
            self._listings.release()
        if waits:
            await _all_done(waits)
        # All children done: now the directory's own attributes, mtime last, through a descriptor
        # of the very directory made above (never a path that could have been swapped meanwhile).
        try:
            with self._dir(parts) as fd:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != made:
                    self.rep.warn(rel, "the directory was replaced while it was restored; its attributes "
                                       "were not applied")
                    return
                if self._delete:
                    self._delete_extra(fd, parts, {c.name for c in children})
                self._applier(rel).apply(FdHandle(fd), node.metadata, KIND_DIR, xattrs_of(node.metadata))
        except OSError as e:
            self.rep.warn(rel, f"cannot set attributes: {e.strerror}")

    async def _windowed_leaf(self, node: Node, parts: list[bytes]) -> None:
        try:
            await self._restore_leaf(node, parts)
        except OSError as e:
            self.rep.warn(self._rel(parts, node.name), f"cannot restore: {e.strerror}")
            self.counts.failed += 1
        finally:
            self._window.release()

    # -- leaves ------------------------------------------------------------------------
    async def _restore_leaf(self, node: Node, parts: list[bytes]) -> None:
        rel = self._rel(parts, node.name)
        log.log(NOISE, "restoring %r", rel)
        if node.kind == KIND_SOCKET:
            self.rep.note(rel, "socket not restored (sockets cannot be restored)")
            return
        with self._leaf_dir(parts) as dfd:
            decision = await self._decide(node, dfd, rel)
        if decision.action == BLOCKED:
            self.rep.warn(rel, "a directory is in the way; not restored")
            self.counts.failed += 1
            return
        if decision.action == SKIP:
            self.counts.skipped += 1
            return
        meta = node.metadata
        group = None
        ok: bool | None = None
        if node.kind == KIND_FILE and isinstance(meta.get("hardlink"), str):
            gid = meta["hardlink"]
            if gid in self._groups:
                ok = await self._link_to_group(self._groups[gid], parts, node.name, rel)
            else:
                group = self._groups[gid] = _Group()
        if ok is None:
            try:
                with self._leaf_dir(parts) as dfd:
                    ok = await self._create(node, dfd, rel)
            finally:
                if group is not None:
                    group.finish((parts, node.name) if ok else None)
        if not ok:  # said why (a warning or a problem)
            self.counts.failed += 1
            return
        self._count(decision)
        if node.kind == KIND_FILE:
            self.stats.files += 1
        elif node.kind == KIND_LINK:
            self.stats.symlinks += 1
        else:
            self.stats.specials += 1

    async def _link_to_group(self, group: _Group, parts: list[bytes], name: bytes, rel: bytes) -> bool | None:
        """Make ``name`` a hard link to the group's first restored member: True if it was, False
        if a directory is in the way, None to restore it plainly."""
        await group.wait()
        if group.done is None:
            return None
        src_parts, src_name = group.done
        try:
            with self._dir(src_parts) as sfd, self._dir(parts, create=True) as dfd:
                if not _clear(dfd, name, rel, self.rep):
                    return False
                os.link(src_name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            log.info("cannot hard-link %r (%s); restoring it as a copy", rel, e.strerror)
            return None
        return True

    async def _create(self, node: Node, dfd: int, rel: bytes) -> bool:
        """Create one non-directory entry with its attributes; False if it was not restored."""
        meta = node.metadata
        name = node.name
        applier = self._applier(rel)
        if node.kind == KIND_FILE:
            return await self._file(node, dfd, rel, applier)
        if not _clear(dfd, name, rel, self.rep):
            return False
        if node.kind == KIND_LINK:
            if node.target is None:
                self.rep.warn(rel, "symlink without a target; skipped")
                return False
            os.symlink(node.target, name, dir_fd=dfd)
            applier.apply(LinkHandle(dfd, name), meta, KIND_LINK, xattrs_of(meta))
            return True
        if node.kind == KIND_FIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            rdev = meta.get("rdev")
            if not isinstance(rdev, int):
                self.rep.warn(rel, "device without a device number; skipped")
                return False
            if not self._is_root:
                self.rep.warn(rel, "device not restored: only root can create devices")
                return False
            fmt = stat.S_IFCHR if node.kind == KIND_CHAR else stat.S_IFBLK
            os.mknod(name, fmt | 0o600, rdev, dir_fd=dfd)
        # A FIFO or a device is never opened for reading: its attributes go through an O_PATH
        # descriptor, checked to be the kind of file just made.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            want = {KIND_FIFO: stat.S_IFIFO, KIND_CHAR: stat.S_IFCHR, KIND_BLOCK: stat.S_IFBLK}[node.kind]
            if stat.S_IFMT(os.fstat(fd).st_mode) != want:
                self.rep.warn(rel, "it was replaced while it was restored; its attributes were not applied")
                return False
            applier.apply(FdHandle(fd, o_path=True), meta, node.kind, xattrs_of(meta))
        finally:
            os.close(fd)
        return True

    async def _file(self, node: Node, dfd: int, rel: bytes, applier: Applier) -> bool:
        """Download a file under a temporary name, check it, apply its attributes through its
        descriptor, then rename it into place: its final name never holds wrong content.  An
        empty file is made under its own name (empty is its whole content)."""
        if _is_empty(node):
            fd = _create_excl(dfd, node.name, rel, self.rep)
            if fd is None:
                return False
            try:
                applier.apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            finally:
                os.close(fd)
            return True
        tmp = _partial_name(node.name)
        fd = _create_excl(dfd, tmp, rel, self.rep)
        if fd is None:
            return False
        placed = False
        try:
            sink = _SparseSink(fd)
            try:
                got = await self.reader.content(node, sink.write, sink.restart)
            except GatewayError as e:
                self.rep.warn(rel, f"cannot read from the grid: {e.reason or e}")
                return False
            sink.close()
            if got.matches is False:
                self.rep.problem(rel, f"{got.mismatch}; not restored")
                return False
            applier.apply(FdHandle(fd), node.metadata, KIND_FILE, xattrs_of(node.metadata))
            try:
                os.rename(tmp, node.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    self.rep.warn(rel, "a directory is in the way; not restored")
                    return False
                raise
            placed = True
            self.stats.bytes_written += sink.size  # only what was put in place
            return True
        finally:
            os.close(fd)
            if not placed:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass


def _sha256_fd(fd: int) -> str:
    """The SHA-256 (hex) of the file open as ``fd``, read by offset."""
    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)


async def _all_done(waits: list[Deferred]) -> None:
    """Wait for every one of ``waits``, then raise the first failure if any: no task is still
    writing through the restore's descriptors when an error ends the restore."""
    results = await DeferredList(waits, consumeErrors=True)
    for ok, value in results:
        if not ok:
            value.raiseException()


def _is_empty(node: Node) -> bool:
    """A file recorded as empty whose cap holds nothing (so there is nothing to read or check)."""
    return node.metadata.get("size") == 0 and node.cap == "URI:LIT:" and node.pack is None and node.object is None


def _create_excl(dfd: int, name: bytes, rel: bytes, rep: Reporter) -> int | None:
    """Create ``name`` (0600) in ``dfd``, never through a symlink: whatever is there (a leftover,
    a symlink, a file) is removed first; None when a directory is in the way."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dfd)
    except FileExistsError:
        if not _clear(dfd, name, rel, rep):
            return None
        return os.open(name, flags, 0o600, dir_fd=dfd)


class _DirFds:
    """Directory descriptors shared by the leaves made in them: at most ``keep`` kept open when no
    leaf uses them (one in use is never closed)."""

    def __init__(self, keep: int = 64) -> None:
        self._keep = keep
        self._fds: dict[tuple[bytes, ...], list[int]] = {}  # key -> [fd, users], least recent first

    def take(self, key: tuple[bytes, ...]) -> int | None:
        entry = self._fds.pop(key, None)
        if entry is None:
            return None
        entry[1] += 1
        self._fds[key] = entry  # most recent last
        return entry[0]

    def put(self, key: tuple[bytes, ...], fd: int) -> int:
        self._fds[key] = [fd, 1]
        return fd

    def give(self, key: tuple[bytes, ...]) -> None:
        entry = self._fds.get(key)
        if entry is None:  # closed already (the restore is ending on an error)
            return
        entry[1] -= 1
        if len(self._fds) > self._keep:
            for k in [k for k, (_, users) in self._fds.items() if users == 0][:len(self._fds) - self._keep]:
                os.close(self._fds.pop(k)[0])

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _partial_name(name: bytes) -> bytes:
    """Where a file is written before it is checked and renamed into place (short enough for
    any name; the same for the same name, so a killed restore's leftover is replaced)."""
    return b".lafs-restore-" + hashlib.sha256(name).hexdigest()[:20].encode() + b".part"


class _SparseSink:
    """Writes a download to ``fd``, seeking over runs of zeros so sparse files stay sparse."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # a new, empty file
        self._hole = False

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0
        self._hole = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(chunk) >= _ZERO_RUN and chunk.count(0) == len(chunk):
            os.lseek(self.fd, len(chunk), os.SEEK_CUR)
            self._hole = True
            return
        self._hole = False
        view = memoryview(chunk)
        while view:
            k = os.write(self.fd, view)
            view = view[k:]

    def close(self) -> None:
        if self._hole:
            os.ftruncate(self.fd, self.size)  # a trailing hole needs the size set


def _clear(dfd: int, name: bytes, rel: bytes, rep: Reporter) -> bool:
    """Remove a non-directory at ``name`` so a leaf can be created there; False if a directory is in the way."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(st.st_mode):
        rep.warn(rel, "a directory is in the way; not restored")
        return False
    os.unlink(name, dir_fd=dfd)
    return True
