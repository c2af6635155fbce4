"""A local copy of the small immutable objects a snapshot is read through: index chunks and
immutable directory listings, kept on disk by the SHA-256 of their caps.

An immutable cap names the same bytes forever, so a copy never goes
stale: a second ``find``, ``ls -R`` or ``restore``, and the next backup
that builds on the last one's index, read it here instead of asking the
gateway to fetch and decode the shares again.  Each file holds the SHA-256
of its bytes before them: a copy damaged on disk is dropped and fetched
again, never used.  The copies hold caps and names, so the directory is
private (0700, files 0600), like the entry cache.  The total is bounded:
past ``limit`` bytes, the copies used least recently go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile

log = logging.getLogger(__name__)

#: Copies up to this size are kept (an index chunk is at most a few MiB).
LARGEST = 16 << 20
_DIGEST = 32


class KeptReads:
    """Copies of immutable objects under ``directory``, at most ``limit`` bytes in all.

    Never raises for its own sake: a directory that cannot be made or
    written only means nothing is kept (a warning in the log, once)."""

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self._total: int | None = None  # bytes held, counted at the first write
        self._broken = False
        #: Reads answered here, and copies written (for the log and the tests).
        self.hits = 0
        self.writes = 0

    def _path(self, cap: str) -> str:
        name = hashlib.sha256(cap.encode()).hexdigest()
        return os.path.join(self.directory, name[:2], name)

    def get(self, cap: str) -> bytes | None:
        """The bytes kept for ``cap``, or None (never kept, evicted, or damaged: then dropped)."""
        if self.limit <= 0:
            return None
        path = self._path(cap)
        try:
            with open(path, "rb") as f:
                stored = f.read()
        except OSError:
            return None
        data = stored[_DIGEST:]
        if len(stored) < _DIGEST or hashlib.sha256(data).digest() != stored[:_DIGEST]:
            log.warning("a local copy of an index object is damaged; it is fetched from the grid again")
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # (used now: evicted last)
        self.hits += 1
        return data

    def put(self, cap: str, data: bytes) -> None:
        """Keep ``data`` as the bytes of ``cap`` (an immutable cap the gateway confirmed or answered)."""
        if self.limit <= 0 or self._broken or len(data) > min(LARGEST, self.limit):
            return
        path = self._path(cap)
        try:
            if os.path.exists(path):
                return
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            if self._total is None:  # (the first write of this run: the directory made private once)
                os.chmod(self.directory, 0o700)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")  # (0600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(hashlib.sha256(data).digest())
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            self._broken = True
            log.warning("local copies of index objects cannot be kept in %s: %s", self.directory, e.strerror)
            return
        self.writes += 1
        if self._total is None:
            self._total = sum(size for _, size, _ in self._files())
        else:
            self._total += len(data) + _DIGEST
        if self._total > self.limit:
            self._evict()

    def retain(self, caps: set[str]) -> int:
        """Drop every copy but those of ``caps`` (a sealed repository's host keeps copies of what its
        window's backups reach, nothing older); returns how many were dropped."""
        keep = {hashlib.sha256(cap.encode()).hexdigest() for cap in caps}
        dropped = 0
        for _, size, path in self._files():
            if os.path.basename(path) not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    dropped += 1
                    if self._total is not None:
                        self._total -= size
        return dropped

    def _files(self) -> list[tuple[float, int, str]]:
        """(last use, size, path) of every copy."""
        out = []
        with contextlib.suppress(OSError):
            for sub in os.scandir(self.directory):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    for f in os.scandir(sub.path):
                        st = f.stat(follow_symlinks=False)
                        out.append((st.st_mtime, st.st_size, f.path))
        return out

    def _evict(self) -> None:
        """Drop the copies used least recently, down to three quarters of the limit."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.limit * 3 // 4:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
        self._total = total


__all__ = ["KeptReads", "LARGEST"]
