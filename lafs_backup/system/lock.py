"""The entry-cache locks: a run of one source (or one copy destination) at a time, runs of different ones
side by side, a whole-cache run (cleanup, check, a rebuild) alone; a stale lock taken over."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import time
from typing import TYPE_CHECKING, Protocol

from ..errors import LockedError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime


class _Warner(Protocol):
    def note_once(self, key: str, message: str) -> None: ...


def source_scope(label: bytes) -> str:
    """The lock scope of backups of the source recorded as ``label``."""
    return "source-" + hashlib.sha256(label).hexdigest()[:16]


def copy_scope(dest: str) -> str:
    """The lock scope of copies to the grid behind ``dest``."""
    return "copy-" + hashlib.sha256(dest.encode()).hexdigest()[:16]


def scope_path(path: str, scope: str) -> str:
    """The lock file of ``scope`` beside the cache's lock file ``path`` (``<cache>.lock``)."""
    return f"{path.removesuffix('.lock')}.{scope}.lock"


class CacheLock:
    """``flock`` locks on the cache's lock file ``path`` and, with ``scope``, on the scope's own file.

    Without a scope the cache's lock is taken exclusively: no other run
    writes the cache meanwhile (``cleanup`` forgets rows every run may use,
    ``check``, a rebuild moves the file aside).  With a scope (``source-…``
    for a backup, ``copy-…`` for a copy) the cache's lock is shared and the
    scope's exclusive: runs of other scopes go on at the same time (sqlite
    keeps their writes apart, see ``db/database.py``), a second run of the
    same scope, or a whole-cache run, is refused.

    An exclusive holder writes its pid and start time into its file (a
    shared holder cannot: it is not alone).  The kernel drops a lock when
    its holder dies, so a file left by a dead run is simply taken over
    (with a note); a live holder makes :meth:`acquire` raise
    :class:`LockedError` at once, naming it.
    """

    def __init__(self, path: str, reporter: _Warner | None, scope: str | None = None) -> None:
        self.path = path
        self.scope = scope
        self._rep = reporter
        #: The files locked: each descriptor, and whether its lock is shared.
        self._fds: list[tuple[int, bool]] = []
        self._said_waiting = False

    async def acquire_waiting(self, wait: float, clock: IReactorTime, poll: float = 0.5) -> None:
        """:meth:`acquire`, waiting up to ``wait`` seconds (on ``clock``) for a live holder to finish."""
        from twisted.internet.task import deferLater

        deadline = clock.seconds() + wait
        while True:
            try:
                self.acquire()
                return
            except LockedError as e:
                if clock.seconds() >= deadline:
                    raise
                if not self._said_waiting and self._rep is not None:
                    self._said_waiting = True
                    self._rep.note_once("lock-wait", f"waiting for pid {e.details.get('pid')} to release the "
                                        f"lock (up to {wait:.0f}s)")
            await deferLater(clock, min(poll, max(0.0, deadline - clock.seconds())), lambda: None)

    def acquire(self) -> None:
        """Take the locks (both or neither), or raise :class:`LockedError` naming a live holder."""
        if self._fds:
            return
        # The cache's lock first, then the scope's: every run takes them in this order.
        shared = self.scope is not None
        self._fds.append((self._take(self.path, shared), shared))
        if self.scope is not None:
            try:
                self._fds.append((self._take(scope_path(self.path, self.scope), shared=False), False))
            except BaseException:
                self.release()
                raise

    def _take(self, path: str, shared: bool) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if holder is None and not shared:  # shared holders: each run of a scope names itself in its file
                holder = next((h for h in map(_scope_holder, sorted(glob.glob(
                    glob.escape(path.removesuffix(".lock")) + ".*.lock"))) if h is not None), None)
            pid, started = holder or ("?", "?")
            raise LockedError(pid=pid, started=started, path=path)
        old = _holder(fd)
        if old is not None and self._rep is not None:
            # Held now (shared or not): whoever wrote that is gone, since the writer held it exclusively.
            self._rep.note_once("stale-lock", f"taking over the lock left by pid {old[0]} "
                                f"(started {old[1]}), which is no longer running")
        os.ftruncate(fd, 0)
        if not shared:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.pwrite(fd, f"{os.getpid()} {stamp}\n".encode(), 0)
        return fd

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def release(self) -> None:
        """Let go of every lock held (an exclusive holder's record is emptied first)."""
        for fd, shared in reversed(self._fds):
            if not shared:  # (a shared holder wrote nothing there)
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._fds = []


def _holder(fd: int) -> tuple[str, str] | None:
    """The pid and start time an exclusive holder wrote into its lock file (None: none)."""
    words = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    if not words:
        return None
    return words[0], words[1] if len(words) > 1 else "?"


def _scope_holder(path: str) -> tuple[str, str] | None:
    """The holder a scope's lock file names, if it is still running (looked at without locking, so
    that asking never gets in the way of a run taking it)."""
    try:
        with open(path, "rb") as f:
            words = f.read(200).decode("utf-8", "replace").split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    try:
        os.kill(int(words[0]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # running, as another user
    return words[0], words[1] if len(words) > 1 else "?"
