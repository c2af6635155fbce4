"""A read-only FUSE file system of every backup, served through the reader.

The binding is mfusepy (a maintained fusepy, over libfuse 3 by ctypes):
libfuse runs its loop in a thread of its own, and every callback hands its
work to the reactor with ``blockingCallFromThread``, so the reactor stays
in charge of all I/O, of the gateway client and of signals.  (pyfuse3 would
want trio to own the process; llfuse is no longer maintained.)

Layout::

    snapshots/<UTC time>/...    each backup's tree (a second backup in the same second: <time>-<id>)
    snapshots/latest            a symlink to the newest
    hosts/<host>/<UTC time>     symlinks into snapshots/
    sources/<source>/<UTC time> ("/" in a source path shown as "%2F")
    tags/<tag>/<UTC time>

Directories are listed from their dirnodes on first access (kept in a
bounded cache); where a backup's directories live in its index alone, a
directory's record is found through the few index chunks on its way
(``read.locate``), not by loading the whole index.  A small file is read whole, decoded and checked on first
read (a packed file: one Range GET of its slice of the pack) and kept in
a memory cache of bounded size.  A large file is streamed once into a
private spool file as it is first read, and reads are answered as soon as
their bytes have arrived; a few spools are kept, the oldest unused ones
are removed.  A content whose SHA-256 does not match the record gives EIO.
A derived file (stored as its recipe) is made again on its first read, from
its inputs in the same backup (``read.remake``), and then kept as any other
content is: a read never runs its program twice while the file is open.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, TypeVar, TypeVarTuple

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread

from ..errors import SnapshotError
from ..store.entry import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FILE, KIND_LINK
from ..store.snapshot import xattrs_of
from ..derive.recipe import KEY as DERIVED
from .browse import Browser, Item
from .locate import Paths
from .reader import Remaking
from .remake import Remaker, lookup_in

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Files up to this size are read whole into memory; larger ones are spooled to disk.
SMALL = 1 << 20


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


#: A recorded backup (``history.Backup``: ``cap``, ``ts``, ``id``, ``host``, ``source_text``, ``tags``).
Backup = Any


@dataclass
class _Virtual:
    """A directory or symlink of the layout above the backups' own trees."""

    children: dict[str, "_Virtual | _Snap"] = field(default_factory=dict)
    target: str | None = None  # a symlink's
    mtime: float = 0.0


@dataclass
class _Snap:
    """One backup's tree, at ``snapshots/<name>``."""

    backup: Backup
    name: str


def layout(backups: list[Backup]) -> _Virtual:
    """The directories above the trees, built from the recorded backups (newest last)."""
    root = _Virtual()
    snaps = _Virtual()
    views = {"hosts": _Virtual(), "sources": _Virtual(), "tags": _Virtual()}
    root.children = {"snapshots": snaps, **views}
    for b in sorted(backups, key=lambda x: (x.ts, x.id)):
        name = _iso(b.ts)
        if name in snaps.children:
            name = f"{name}-{b.short_id}"  # (an id may hold a "/", never valid in a name)
        snaps.children[name] = _Snap(b, name)
        link = _Virtual(target=f"../../snapshots/{name}", mtime=b.ts)
        places = [("hosts", b.host or "unknown"), ("sources", urllib.parse.quote(b.source_text, safe=""))]
        places += [("tags", t.replace("/", "%2F")) for t in b.tags]
        for view, key in places:
            d = views[view].children.setdefault(key, _Virtual())
            assert isinstance(d, _Virtual)
            d.children[name] = link
            d.mtime = max(d.mtime, b.ts)
        snaps.mtime = b.ts
        root.mtime = b.ts
    if snaps.children:
        newest = list(snaps.children)[-1]
        snaps.children["latest"] = _Virtual(target=newest, mtime=snaps.mtime)
    return root


class _Spool:
    """A large file's decoded content, streamed once into a private temporary file."""

    def __init__(self, tmpdir: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="lafs-mount-", dir=tmpdir)
        self.fd = fd
        self.have = 0
        self.done = False
        self.failed: str | None = None
        self.users = 0
        self._waiters: list[tuple[int, Deferred]] = []

    def write(self, chunk: bytes) -> None:
        os.pwrite(self.fd, chunk, self.have)
        self.have += len(chunk)
        self._wake()

    def hole(self, n: int) -> None:
        """A sparse file's hole: a hole in the spool too (it reads as zeros), not zeros written."""
        self.have += n
        os.ftruncate(self.fd, self.have)
        self._wake()

    def restart(self) -> None:
        self.have = 0

    def finish(self, failed: str | None) -> None:
        self.done, self.failed = True, failed
        self._wake()

    def until(self, end: int) -> Deferred:
        d: Deferred = Deferred()
        if self.done or self.have >= end:
            d.callback(None)
        else:
            self._waiters.append((end, d))
        return d

    def _wake(self) -> None:
        ready = [(e, d) for e, d in self._waiters if self.done or self.have >= e]
        self._waiters = [(e, d) for e, d in self._waiters if not (self.done or self.have >= e)]
        for _e, d in ready:
            d.callback(None)

    def close(self) -> None:
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Contents:
    """File contents for the mount, in the reactor: small ones in memory, large ones spooled."""

    def __init__(self, browser: Browser, tmpdir: str, memory: int = 64 << 20, spools: int = 4) -> None:
        self.browser = browser
        self.tmpdir = tmpdir
        self._small: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0
        self._memory = memory
        self._spools: OrderedDict[str, _Spool] = OrderedDict()
        self._max_spools = spools

    @staticmethod
    def key(item: Item) -> str:
        if DERIVED in item.meta:  # (it points at no content: known by the bytes it is checked to be)
            return f"derived:{item.meta.get('sha256')}:{item.meta.get('size')}"
        pack = item.node.pack
        return f"{pack[0]}@{pack[1]}+{pack[2]}" if pack else (item.node.object or item.node.cap)

    async def read(self, item: Item, size: int, offset: int, remaker: Remaking | None = None) -> bytes:
        """``size`` bytes of ``item`` from ``offset``; ``remaker``: what makes it again, if it is a
        derived file (of the backup it lies in)."""
        if item.size() <= SMALL:
            data = await self._whole(item, remaker)
            return data[offset:offset + size]
        spool = self._spool(item, remaker)
        await spool.until(min(offset + size, item.size()))
        if spool.failed:
            raise OSError(errno.EIO, spool.failed)
        return os.pread(spool.fd, size, offset)

    async def _whole(self, item: Item, remaker: Remaking | None) -> bytes:
        k = self.key(item)
        hit = self._small.get(k)
        if hit is not None:
            self._small.move_to_end(k)
            return hit
        parts: list[bytes] = []
        content = await self.browser.reader.content(item.node, parts.append, parts.clear, remaker=remaker)
        if content.matches is False:
            log.warning("mount: %r: %s", item.path, content.mismatch)
            raise OSError(errno.EIO, content.mismatch)
        data = b"".join(parts)
        self._small[k] = data
        self._small_bytes += len(data)
        while self._small_bytes > self._memory and len(self._small) > 1:
            _k, old = self._small.popitem(last=False)
            self._small_bytes -= len(old)
        return data

    def _spool(self, item: Item, remaker: Remaking | None = None) -> _Spool:
        k = self.key(item)
        spool = self._spools.get(k)
        if spool is not None:
            self._spools.move_to_end(k)
            return spool
        spool = self._spools[k] = _Spool(self.tmpdir)
        ensureDeferred(self._fill(item, spool, remaker))
        for old_key in list(self._spools):
            if len(self._spools) <= self._max_spools:
                break
            old = self._spools[old_key]
            if old.users == 0 and old.done:
                del self._spools[old_key]
                old.close()
        return spool

    async def _fill(self, item: Item, spool: _Spool, remaker: Remaking | None) -> None:
        try:
            content = await self.browser.reader.content(item.node, spool.write, spool.restart, spool.hole,
                                                         remaker=remaker)
        except Exception as e:  # the grid failed: every read waiting on it gets EIO
            log.warning("mount: %r could not be read: %s", item.path, e)
            spool.finish(str(e) or "the grid could not be read")
            return
        spool.finish(None if content.matches is not False else content.mismatch)

    def opened(self, item: Item, remaker: Remaking | None = None) -> None:
        if item.size() > SMALL:
            self._spool(item, remaker).users += 1

    def released(self, item: Item) -> None:
        spool = self._spools.get(self.key(item))
        if spool is not None and spool.users > 0:
            spool.users -= 1

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


def _attrs_of(item: Item) -> dict[str, Any]:
    mode = item.st_mode()
    ns = item.int_meta("mtime_ns")
    ctime = item.int_meta("ctime_ns", ns)
    out = {"st_mode": mode, "st_size": item.size(), "st_uid": item.int_meta("uid"), "st_gid": item.int_meta("gid"),
           "st_mtime": ns, "st_atime": ns, "st_ctime": ctime, "st_nlink": 2 if item.kind == KIND_DIR else 1,
           "st_blocks": (item.size() + 511) // 512, "st_blksize": 131072}
    if item.kind in (KIND_CHAR, KIND_BLOCK):
        out["st_rdev"] = item.int_meta("rdev")
    return out


def _virtual_attrs(v: _Virtual) -> dict[str, Any]:
    ns = int(v.mtime * 1e9)
    if v.target is not None:
        return {"st_mode": stat.S_IFLNK | 0o777, "st_size": len(v.target), "st_nlink": 1, "st_mtime": ns,
                "st_atime": ns, "st_ctime": ns, "st_uid": os.getuid(), "st_gid": os.getgid()}
    return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0, "st_mtime": ns, "st_atime": ns,
            "st_ctime": ns, "st_uid": os.getuid(), "st_gid": os.getgid()}


def _ino(snap: str | None, path: str, node: _Virtual | _Snap | Item) -> int:
    """A stable inode number: by backup and path, or by backup and hard-link group (shared)."""
    group = node.meta.get("hardlink") if isinstance(node, Item) and node.kind == KIND_FILE else None
    key = f"{snap}\0{group}" if isinstance(group, str) else f"{snap}\0{path.rstrip('/') or '/'}"
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "big") >> 1 or 1


class SnapshotFS:
    """The file system's operations, called by libfuse's threads; each runs its work in the reactor."""

    use_ns = True

    def __init__(self, reactor: IReactorFromThreads, browser: Browser, backups: list[Backup], tmpdir: str,
                 remaker: Remaker | None = None) -> None:
        """``remaker`` makes derived files again (None: their reads fail with EIO)."""
        self.reactor = reactor
        self.browser = browser
        self.top = layout(backups)
        self.paths = Paths(browser)
        self.contents = Contents(browser, tmpdir)
        self._remaker = remaker
        self._remakers: OrderedDict[str, Remaker] = OrderedDict()
        self._handles: dict[int, tuple[Item, str | None]] = {}
        self._next = 1
        self._lock = threading.Lock()

    # -- resolving a path ------------------------------------------------------------------------
    def _call(self, fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        # (Twisted types the callable as a union of two callables, which mypy cannot solve for T:
        # what comes back is the result of the Deferred the callable returns)
        return blockingCallFromThread(self.reactor, lambda: ensureDeferred(fn(*args)))  # type: ignore[arg-type]

    async def _resolve(self, path: str) -> _Virtual | _Snap | Item:
        return (await self._locate(path))[0]

    async def _locate(self, path: str) -> tuple[_Virtual | _Snap | Item, str | None]:
        """The node at ``path``, and the cap of the backup it lies in (None: above the backups)."""
        parts = [p for p in path.split("/") if p]
        here: _Virtual | _Snap | Item = self.top
        for i, part in enumerate(parts):
            if isinstance(here, _Snap):
                return await self._in_snapshot(here.backup.cap, parts[i:], path), here.backup.cap
            assert isinstance(here, _Virtual)
            nxt = here.children.get(part)
            if nxt is None or here.target is not None:
                raise OSError(errno.ENOENT, path)
            here = nxt
        return here, here.backup.cap if isinstance(here, _Snap) else None

    async def _in_snapshot(self, cap: str, parts: list[str], path: str) -> Item:
        """The entry at ``parts`` of a backup: its parent is found through the few index chunks on
        its way (``read.locate``; the directories found are remembered), then its name."""
        try:
            parent = await self.paths.lookup(cap, os.fsencode("/".join(parts[:-1])))
        except SnapshotError:
            # (one of the parents is not there, or is not a directory: found out name by name)
            parent = await self.paths.lookup(cap, b"")
            for part in parts[:-1]:
                parent = await self._child(parent, part, path)
        return await self._child(parent, parts[-1], path)

    async def _child(self, item: Item, part: str, path: str) -> Item:
        if item.kind != KIND_DIR:
            raise OSError(errno.ENOTDIR, path)
        found = await self.browser.child(item, os.fsencode(part))
        if found is None:
            raise OSError(errno.ENOENT, path)
        return found

    # -- the operations --------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        node, snap = self._call(self._locate, path)
        if isinstance(node, _Snap):  # a backup's directory shows its source root's own attributes
            node = self._call(self.paths.lookup, node.backup.cap, b"")
        attrs = _virtual_attrs(node) if isinstance(node, _Virtual) else _attrs_of(node)
        attrs["st_ino"] = _ino(snap, path, node)
        if isinstance(node, Item) and isinstance(node.meta.get("hardlink"), str):
            attrs["st_nlink"] = 2  # at least: the group's size is not recorded
        return attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        parent = os.path.dirname(path.rstrip("/")) or "/"
        entries = [(".", {"st_ino": self._call(self._ino_of, path)}, 0),
                   ("..", {"st_ino": self._call(self._ino_of, parent)}, 0)]
        return entries + self._call(self._entries, path)

    def _remaker_for(self, cap: str | None) -> Remaker | None:
        """(In the reactor.)  The remaker of the backup ``cap``: its inputs are found in it."""
        if self._remaker is None or cap is None:
            return None
        hit = self._remakers.get(cap)
        if hit is None:
            hit = self._remakers[cap] = self._remaker.at(lookup_in(self.paths, cap))
            if len(self._remakers) > 16:
                self._remakers.popitem(last=False)
        else:
            self._remakers.move_to_end(cap)
        return hit

    async def _ino_of(self, path: str) -> int:
        node, snap = await self._locate(path)
        return _ino(snap, path, node)

    async def _entries(self, path: str) -> list[tuple[str, dict[str, int], int]]:
        """A directory's entries with their inode numbers and types (an entry without an inode
        number would be skipped by readdir)."""
        node, snap = await self._locate(path)
        base = path.rstrip("/")
        if isinstance(node, _Virtual):
            if node.target is not None:
                raise OSError(errno.ENOTDIR, path)
            out = []
            for name, child in node.children.items():
                mode = stat.S_IFLNK if isinstance(child, _Virtual) and child.target is not None else stat.S_IFDIR
                csnap = child.backup.cap if isinstance(child, _Snap) else None
                out.append((name, {"st_ino": _ino(csnap, f"{base}/{name}", child), "st_mode": mode}, 0))
            return out
        if isinstance(node, _Snap):
            node = await self.paths.lookup(node.backup.cap, b"")
        if node.kind != KIND_DIR:
            raise OSError(errno.ENOTDIR, path)
        out = []
        for c in await self.browser.children(node):
            name = os.fsdecode(c.node.name)
            out.append((name, {"st_ino": _ino(snap, f"{base}/{name}", c), "st_mode": stat.S_IFMT(c.st_mode())}, 0))
        return out

    def readlink(self, path: str) -> str:
        node = self._call(self._resolve, path)
        if isinstance(node, _Virtual) and node.target is not None:
            return node.target
        if isinstance(node, Item) and node.kind == KIND_LINK and node.node.target is not None:
            return os.fsdecode(node.node.target)
        raise OSError(errno.EINVAL, path)

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, path)
        node, snap = self._call(self._locate, path)
        if not isinstance(node, Item) or node.kind != KIND_FILE:
            raise OSError(errno.EISDIR if not isinstance(node, Item) or node.kind == KIND_DIR else errno.EINVAL,
                          path)
        blockingCallFromThread(self.reactor, lambda: self.contents.opened(node, self._remaker_for(snap)))
        with self._lock:
            fh, self._next = self._next, self._next + 1
            self._handles[fh] = (node, snap)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, path)
        item, snap = handle
        if offset >= item.size():
            return b""
        return self._call(self._read, item, snap, size, offset)

    async def _read(self, item: Item, snap: str | None, size: int, offset: int) -> bytes:
        return await self.contents.read(item, size, offset, self._remaker_for(snap))

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None:
            blockingCallFromThread(self.reactor, self.contents.released, handle[0])
        return 0

    def listxattr(self, path: str) -> list[str]:
        node = self._call(self._resolve, path)
        if not isinstance(node, Item):
            return []
        return [os.fsdecode(n) for n in xattrs_of(node.meta)]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        node = self._call(self._resolve, path)
        value = xattrs_of(node.meta).get(os.fsencode(name)) if isinstance(node, Item) else None
        if value is None:
            raise OSError(errno.ENODATA, path)
        return value

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 131072, "f_frsize": 131072, "f_namemax": 255}
