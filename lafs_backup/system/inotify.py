"""Watching a directory tree with inotify, read by the reactor (the only user of inotify_simple).

One watch per directory, added on the directory the walk has open (through
its ``/proc/self/fd`` path, so it is the very directory listed, whatever
happens to its name meanwhile).  The descriptor is read by the reactor when
the kernel has events; nothing polls.  Each event is delivered as an
:class:`Event` naming the directory by its path relative to the watched
root; lost events (the kernel's queue overflowed) are reported as such.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Callable, NamedTuple

from inotify_simple import INotify, flags
from zope.interface import implementer
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure

log = logging.getLogger(__name__)

MASK = (flags.CREATE | flags.DELETE | flags.MODIFY | flags.CLOSE_WRITE | flags.ATTRIB | flags.MOVED_FROM
        | flags.MOVED_TO | flags.ONLYDIR | flags.EXCL_UNLINK)

#: The sysctls that bound inotify, named when they run out.
WATCHES_SYSCTL = "fs.inotify.max_user_watches"
QUEUE_SYSCTL = "fs.inotify.max_queued_events"


class WatchesExhausted(Exception):
    """The kernel refused another watch (``fs.inotify.max_user_watches``)."""


class Event(NamedTuple):
    """Something happened to ``name`` in the watched directory ``dir`` (``name`` b"": to the
    directory itself)."""

    dir: bytes
    name: bytes
    mask: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & flags.ISDIR)

    @property
    def created(self) -> bool:
        return bool(self.mask & flags.CREATE)

    @property
    def deleted(self) -> bool:
        return bool(self.mask & flags.DELETE)

    @property
    def moved_from(self) -> bool:
        return bool(self.mask & flags.MOVED_FROM)

    @property
    def moved_to(self) -> bool:
        return bool(self.mask & flags.MOVED_TO)


@implementer(IReadDescriptor)
class Notifier:
    """Watches directories; ``deliver(changes)`` gets each batch of events (``None``: events were
    lost), on the reactor thread.  :meth:`watch` may be called from the walk's thread."""

    def __init__(self, reactor: IReactorFDSet, deliver: Callable[[list[Event] | None], None]) -> None:
        self._reactor = reactor
        self._deliver = deliver
        self._ino = INotify(nonblocking=True)
        self._lock = threading.Lock()
        self._paths: dict[int, bytes] = {}   # watch descriptor -> directory (relative path)
        self._wds: dict[bytes, int] = {}
        self.exhausted = False
        reactor.addReader(self)

    @property
    def watches(self) -> int:
        return len(self._paths)

    # -- watches -----------------------------------------------------------------------------
    def watch(self, fd: int, rel: bytes) -> None:
        """Watch the open directory ``fd``, known as ``rel``.  Raises :class:`WatchesExhausted`
        when the kernel allows no more watches; other errors (the directory went) are ignored."""
        try:
            wd = self._ino.add_watch(f"/proc/self/fd/{fd}", MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self.exhausted = True
                raise WatchesExhausted() from None
            log.debug("no watch on %r: %s", rel, e.strerror)
            return
        with self._lock:
            old = self._paths.get(wd)
            if old is not None and old != rel and self._wds.get(old) == wd:
                del self._wds[old]  # the same directory, moved: one watch per inode
            self._paths[wd] = rel
            self._wds[rel] = wd

    def forget(self, rel: bytes) -> None:
        """Drop the watches of ``rel`` and everything below it (it left the tree)."""
        prefix = rel + b"/"
        with self._lock:
            gone = [(p, wd) for p, wd in self._wds.items() if p == rel or p.startswith(prefix) or not rel]
            for p, wd in gone:
                del self._wds[p]
                self._paths.pop(wd, None)
        for _, wd in gone:
            try:
                self._ino.rm_watch(wd)
            except OSError:
                pass  # already gone with its directory

    # -- IReadDescriptor -------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._ino.fileno()

    def logPrefix(self) -> str:
        return "inotify"

    def doRead(self) -> None:
        try:
            events = self._ino.read(timeout=0)
        except BlockingIOError:
            return
        out: list[Event] = []
        lost = False
        for ev in events:
            if ev.mask & flags.Q_OVERFLOW:
                lost = True
                continue
            with self._lock:
                rel = self._paths.get(ev.wd)
                if ev.mask & flags.IGNORED:  # the watch is gone (its directory was deleted)
                    if rel is not None:
                        self._paths.pop(ev.wd, None)
                        if self._wds.get(rel) == ev.wd:
                            del self._wds[rel]
                    continue
            if rel is None:
                continue
            name = os.fsencode(ev.name) if ev.name else b""
            out.append(Event(rel, name, ev.mask))
        if lost:
            log.info("the kernel's inotify queue overflowed: events were lost")
            self._deliver(None)
        if out:
            self._deliver(out)

    def connectionLost(self, reason: Failure) -> None:
        pass

    def close(self) -> None:
        self._reactor.removeReader(self)
        self._ino.close()
