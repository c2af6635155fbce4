"""The entry-cache lock: one run per cache at a time, with a stale lock taken over."""

from __future__ import annotations

import fcntl
import os
import time
from typing import TYPE_CHECKING, Protocol

from ..errors import LockedError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime


class _Warner(Protocol):
    def note_once(self, key: str, message: str) -> None: ...


class CacheLock:
    """An exclusive ``flock`` on ``path``, which records the holder's pid and start time.

    The kernel drops the lock when its holder dies, so a lock file left by a
    dead run is simply taken over (with a note); a live holder makes
    :meth:`acquire` raise :class:`LockedError` at once.
    """

    def __init__(self, path: str, reporter: _Warner) -> None:
        self.path = path
        self._rep = reporter
        self._fd: int | None = None
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
                if not self._said_waiting:
                    self._said_waiting = True
                    self._rep.note_once("lock-wait", f"waiting for pid {e.details.get('pid')} to release the "
                                        f"lock (up to {wait:.0f}s)")
            await deferLater(clock, min(poll, max(0.0, deadline - clock.seconds())), lambda: None)

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            started = holder[1] if len(holder) > 1 else "?"
            raise LockedError(pid=pid, started=started, path=self.path)
        old = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if old:
            self._rep.note_once("stale-lock", f"taking over the lock left by pid {old[0]} "
                                f"(started {old[1] if len(old) > 1 else '?'}), which is no longer running")
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"{os.getpid()} {stamp}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
