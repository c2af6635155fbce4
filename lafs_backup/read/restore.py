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
through a symlink) and ``dry_run`` (each change is listed, none is made):
see ``overwrite``.  The leaves themselves are made by ``leaves``.  A ``pick``
(``--include``/``--exclude``, see ``pick``) narrows all of it: what it leaves
out is neither restored nor deleted, and a directory is made only on the way
to a path it takes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from contextlib import contextmanager
from typing import Iterator, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from ..derive.recipe import KEY as DERIVED
from ..store.entry import KIND_DIR, KIND_FILE, KIND_LINK, KIND_SOCKET
from ..errors import RestoreError
from ..log import NOISE
from ..protocols import InThread
from ..slots import Slots
from ..system.meta import Applier, FdHandle, forget_owner_names
from ..system.paths import open_dir_chain
from ..report import Reporter, Stats
from ..store.snapshot import Node, xattrs_of
from .leaves import Leaves, clear
from .overwrite import (BLOCKED, COMPARE, DIR_FLAGS, OVERWRITE, OVERWRITE_POLICIES, SKIP, WRITE, Decision, Existing,
                        RestoreCounts, decide, rel_path)
from .pick import IN, MAYBE, OUT, Below, Pick
from .reader import Reader

log = logging.getLogger(__name__)

__all__ = ["BLOCKED", "COMPARE", "OVERWRITE", "OVERWRITE_POLICIES", "SKIP", "WRITE", "Decision", "DryRun",
           "RestoreCounts", "Restorer", "decide"]


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
    What is there already is met by :class:`~.overwrite.Existing`, the leaves are made by
    :class:`~.leaves.Leaves`, and a dry run is a :class:`DryRun`.  ``pick``: the paths
    ``--include``/``--exclude`` take (None: all).
    """

    def __init__(self, reader: Reader, reporter: Reporter, target: str, window: int = 64,
                 listings: int = 4, owners: bool | None = None, numeric: bool = False,
                 clock: IReactorTime | None = None, overwrite: str = "always", delete: bool = False,
                 dry_run: bool = False, in_thread: InThread | None = None, pick: Pick | None = None,
                 skip_derived: bool = False) -> None:
        """``clock`` (None: the reader's) is the reactor a freed slot wakes the next directory or
        file on.  ``overwrite`` (one of :data:`OVERWRITE_POLICIES`) says what to do with an entry
        already there; ``delete`` removes what the restored directories hold and the snapshot does
        not; ``dry_run`` lists each change (``would write PATH``...) and makes none.
        ``in_thread`` hashes existing files off the reactor (None: inline).  Derived files (stored
        as their recipes) are made again by the reader's remaker; ``skip_derived`` leaves them out
        (counted in ``counts.derived_skipped``); those that could not be made are :attr:`unmade`."""
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
        #: Directories this restore made (the target's own: ``()``): empty when made, so a leaf's
        #: name there is not looked up for the overwrite policy (its O_EXCL create still is).
        self._fresh: set[tuple[bytes, ...]] = set()
        self._dry_run = dry_run
        self._pick = pick if pick is not None else Pick()
        self._below = Below(self._pick, reader.children)
        self._existing = Existing(reporter, overwrite, delete, dry_run, self._applier, in_thread, self._pick)
        self._leaves = Leaves(reader, reporter, self._is_root)
        self._skip_derived = skip_derived
        self.counts = self._existing.counts
        forget_owner_names()  # user and group names are looked up afresh for each restore

    async def run(self, snapshot_cap: str, paths: Sequence[bytes] = ()) -> None:
        tree, objects = await self.reader.root(snapshot_cap)
        if self._dry_run:
            await DryRun(self.reader, self.stats, self.target, self._existing, self._skip_derived).run(tree, paths)
            return
        prefetch = None
        if not paths and not self._pick.narrows:
            # A full restore needs every pack: fetch them all now, while the tree is being walked.
            prefetch = Deferred.fromCoroutine(self.reader.prefetch(objects, self._prefetch_jobs))
        try:
            if _made(self.target):
                self._fresh.add(())
            self._root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise _unusable(self.target, e)
        try:
            if not paths:
                await self._restore_dir(tree, [], self._pick.root)
            for p in paths:
                node, parents = await find(self.reader, tree, p)
                state = self._pick.state_of(parents + [node.name], node.kind == KIND_DIR)
                if state == OUT:
                    self.rep.note(rel_path(parents, node.name), "left out by --include/--exclude")
                    continue
                if state == IN:
                    with self._dir(parents, create=True):
                        pass
                if node.kind == KIND_DIR:
                    await self._restore_dir(node, parents + [node.name], state)
                else:
                    await self._restore_leaf(node, parents)
        finally:
            if prefetch is not None:
                await prefetch
            self._leaf_dirs.close()
            os.close(self._root_fd)

    @property
    def unmade(self) -> list[tuple[bytes, str]]:
        """The derived files that could not be made again, so were not restored: path, why."""
        return self._leaves.unmade

    # -- the target's directories ------------------------------------------------------
    @contextmanager
    def _dir(self, parts: list[bytes], create: bool = False) -> Iterator[int]:
        fd = self._chain(parts, create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _chain(self, parts: list[bytes], create: bool) -> int:
        """``open_dir_chain`` below the target, remembering the directories it made (:attr:`_fresh`)."""
        made: list[int] = []
        fd = open_dir_chain(self._root_fd, parts, create=create, made=made)
        self._fresh.update(tuple(parts[:depth]) for depth in made)
        return fd

    @contextmanager
    def _leaf_dir(self, parts: list[bytes]) -> Iterator[int]:
        """The directory leaves are created in: opened through the same chain as :meth:`_dir` once,
        then kept open while its leaves are made (the directory itself, whatever happens to the
        path meanwhile)."""
        key = tuple(parts)
        fd = self._leaf_dirs.take(key)
        if fd is None:
            fd = self._leaf_dirs.put(key, self._chain(parts, create=True))
        try:
            yield fd
        finally:
            self._leaf_dirs.give(key)

    def _applier(self, rel: bytes) -> Applier:
        return Applier(lambda msg: self.rep.warn(rel, msg), self.rep.note_once, self._owners, self._numeric)

    # -- directories ----------------------------------------------------------------
    async def _restore_dir(self, node: Node, parts: list[bytes], state: str = IN) -> None:
        """Restore the directory ``node`` at ``parts``, in the pick's ``state`` (``MAYBE``: only if
        it holds something the pick takes; else only ``--delete`` looks into it)."""
        if state == MAYBE and not await self._below.holds(node, parts):
            if self._existing.delete:
                await self._sweep(node, parts)
            return
        self.stats.dirs += 1
        rel = rel_path(parts)
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
            children = await self.reader.children(node)
            for child in children:
                taken = self._pick.state(rel_path(parts, child.name), child.kind == KIND_DIR, state) \
                    if self._pick.narrows else IN
                if taken == OUT:
                    log.debug("left %r: not taken by --include/--exclude", rel_path(parts, child.name))
                elif child.kind == KIND_DIR:
                    waits.append(Deferred.fromCoroutine(self._restore_dir(child, parts + [child.name], taken)))
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
                if self._existing.delete:
                    self._existing.delete_extra(fd, parts, {c.name for c in children}, state)
                self._applier(rel).apply(FdHandle(fd), node.metadata, KIND_DIR, xattrs_of(node.metadata))
        except OSError as e:
            self.rep.warn(rel, f"cannot set attributes: {e.strerror}")

    async def _sweep(self, node: Node, parts: list[bytes]) -> None:
        """``--delete`` in a ``MAYBE`` directory that holds nothing the pick takes: what the target
        holds there (and below) that the pick takes and the snapshot does not is deleted; nothing
        is made, no attribute applied."""
        try:
            fd = open_dir_chain(self._root_fd, parts)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # the target has no such directory: nothing to delete
            raise
        try:
            children = await self.reader.children(node)
            for child in children:
                if child.kind == KIND_DIR and self._pick.state(rel_path(parts, child.name), True, MAYBE) == MAYBE:
                    await self._sweep(child, parts + [child.name])
            self._existing.delete_extra(fd, parts, {c.name for c in children}, MAYBE)
        finally:
            os.close(fd)

    async def _windowed_leaf(self, node: Node, parts: list[bytes]) -> None:
        try:
            await self._restore_leaf(node, parts)
        except OSError as e:
            self.rep.warn(rel_path(parts, node.name), f"cannot restore: {e.strerror}")
            self.counts.failed += 1
        finally:
            self._window.release()

    # -- leaves ------------------------------------------------------------------------
    async def _restore_leaf(self, node: Node, parts: list[bytes]) -> None:
        rel = rel_path(parts, node.name)
        log.log(NOISE, "restoring %r", rel)
        if node.kind == KIND_SOCKET:
            self.rep.note(rel, "socket not restored (sockets cannot be restored)")
            return
        if self._skip_derived and is_derived(node):
            log.debug("left %r: a derived file (--skip-derived)", rel)
            self.counts.derived_skipped += 1
            return
        if tuple(parts) in self._fresh:
            decision = Decision(WRITE, "not in the target")
        else:
            with self._leaf_dir(parts) as dfd:
                decision = await self._existing.decide(node, dfd, rel)
        if decision.action == BLOCKED:
            self._existing.blocked(rel)
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
                    ok = await self._leaves.create(node, dfd, rel, self._applier(rel))
            finally:
                if group is not None:
                    group.finish((parts, node.name) if ok else None)
        if not ok:  # said why (a warning or a problem)
            self.counts.failed += 1
            if is_derived(node):
                self.counts.derived_failed += 1
            return
        self._existing.count(decision)
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
                if not clear(dfd, name, rel, self.rep):
                    return False
                os.link(src_name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            log.info("cannot hard-link %r (%s); restoring it as a copy", rel, e.strerror)
            return None
        return True


class DryRun:
    """A restore's dry run: says what it would change (``would write PATH``...) and changes
    nothing; a missing target is empty.  ``existing`` decides and counts, as it does for a restore."""

    def __init__(self, reader: Reader, stats: Stats, target: bytes, existing: Existing,
                 skip_derived: bool = False) -> None:
        self.reader = reader
        self.stats = stats
        self.target = target
        self._existing = existing
        self._skip_derived = skip_derived
        self._root_fd = -1

    async def run(self, tree: Node, paths: Sequence[bytes]) -> None:
        """Say what a restore of ``paths`` of ``tree`` (all of it if none) would change."""
        try:
            self._root_fd = os.open(self.target, DIR_FLAGS)
        except FileNotFoundError:
            self._root_fd = -1
        except OSError as e:
            raise _unusable(self.target, e)
        try:
            pick = self._existing.pick
            if not paths:
                await self._dir(tree, [], pick.root)
            for p in paths:
                node, parents = await find(self.reader, tree, p)
                state = pick.state_of(parents + [node.name], node.kind == KIND_DIR)
                if state == OUT:
                    continue
                if node.kind == KIND_DIR:
                    await self._dir(node, parents + [node.name], state)
                else:
                    fd = self._open_existing(parents)
                    try:
                        await self._leaf(node, fd, parents)
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

    async def _dir(self, node: Node, parts: list[bytes], state: str = IN) -> bool:
        """Say what restoring the directory ``node`` (in the pick's ``state``) would change;
        returns whether it would be restored (``MAYBE``: it holds something the pick takes)."""
        pick = self._existing.pick
        fd = self._open_existing(parts)
        taken = state == IN
        try:
            children = await self.reader.children(node)
            for child in children:
                there = pick.state(rel_path(parts, child.name), child.kind == KIND_DIR, state) \
                    if pick.narrows else IN
                if there == OUT:
                    continue
                if child.kind == KIND_DIR:
                    taken = await self._dir(child, parts + [child.name], there) or taken
                else:
                    taken = True
                    await self._leaf(child, fd, parts)
            if self._existing.delete and fd is not None:
                self._existing.delete_extra(fd, parts, {c.name for c in children}, state)
        finally:
            if fd is not None:
                os.close(fd)
        if taken:
            self.stats.dirs += 1
        return taken

    async def _leaf(self, node: Node, dfd: int | None, parts: list[bytes]) -> None:
        rel = rel_path(parts, node.name)
        if node.kind == KIND_SOCKET:
            return
        if self._skip_derived and is_derived(node):
            self._existing.counts.derived_skipped += 1
            return
        decision = Decision(WRITE, "not in the target") if dfd is None else await self._existing.decide(node, dfd, rel)
        if decision.action == BLOCKED:
            self._existing.blocked(rel)
            return
        self._existing.count(decision)
        self._existing.said(decision.action, rel)


async def find(reader: Reader, tree: Node, rel: bytes) -> tuple[Node, list[bytes]]:
    """The node at ``rel`` in the snapshot ``tree``, and the names of the directories above it.
    Raises :class:`RestoreError` if the path is invalid or not in the snapshot."""
    comps = [c for c in rel.strip(b"/").split(b"/") if c not in (b"", b".")]
    if not comps or b".." in comps:
        raise RestoreError(problem=f"invalid path {os.fsdecode(rel)!r}")
    node = tree
    for comp in comps:
        if node.kind != KIND_DIR:
            raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
        match = [c for c in await reader.children(node) if c.name == comp]
        if not match:
            raise RestoreError(problem=f"{os.fsdecode(rel)!r} is not in the snapshot")
        node = match[0]
    return node, comps[:-1]


def is_derived(node: Node) -> bool:
    """Is ``node`` a file stored as its recipe (``derive/recipe.py``)?"""
    return node.kind == KIND_FILE and DERIVED in node.metadata


def _unusable(target: bytes, e: OSError) -> RestoreError:
    """The error of a target that cannot be opened (or made)."""
    return RestoreError(problem=f"cannot use target {os.fsdecode(target)}: {e.strerror}")


async def _all_done(waits: list[Deferred]) -> None:
    """Wait for every one of ``waits``, then raise the first failure if any: no task is still
    writing through the restore's descriptors when an error ends the restore."""
    results = await DeferredList(waits, consumeErrors=True)
    for ok, value in results:
        if not ok:
            value.raiseException()


def _made(target: bytes) -> bool:
    """Make the target directory (and its parents) if it is missing: True if this made it (empty)."""
    for _ in range(2):
        try:
            os.mkdir(target)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
    return False


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
