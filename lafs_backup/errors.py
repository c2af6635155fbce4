"""Error classes and exit codes: every failure a user can meet, with its message and code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    #: The run finished, but some entries were skipped with a warning.
    PARTIAL = 1
    #: Bad command-line arguments or configuration; nothing was done.
    USAGE = 2
    #: The gateway or grid could not be reached or refused the work.
    GRID = 3
    #: The operation failed (bad queue, unreadable cache, local I/O error).
    FAILED = 4
    #: Another run holds the entry cache lock.
    LOCKED = 5
    #: check or verify found damage (or backup --mode verify found silent corruption).
    PROBLEMS = 6
    #: Interrupted by the user (SIGINT).
    INTERRUPTED = 130
    #: stdout was closed by its reader (``lafs-backup ls | head``): stopped quietly.
    PIPE = 141
    #: Stopped by SIGTERM (a service manager, a shutdown).
    TERMINATED = 143
    #: A bug: an unexpected exception, reported with a traceback.
    INTERNAL = 70


class LafsBackupError(Exception):
    """lafs-backup failed."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str | None = None, **kw: object) -> None:
        self.details = kw
        if message is None:
            message = (self.__doc__ or "error").strip().format(**kw)
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(LafsBackupError):
    """Invalid arguments."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """Configuration error in {source}: {key}: {problem}"""


class FilterError(ConfigError):
    """Invalid filter rule {rule!r}: {problem}"""

    def __init__(self, rule: str, problem: str, source: str = "filter") -> None:
        super().__init__(
            f"Invalid filter rule {rule!r} (in {source}): {problem}", rule=rule, problem=problem
        )


class QueueError(LafsBackupError):
    """The queue file {path} cannot be used: {problem}"""


class CacheError(LafsBackupError):
    """The entry cache {path} cannot be used: {problem}"""


class CacheBusyError(LafsBackupError):
    """The entry cache {path} is busy: another lafs-backup process is writing it.  Nothing is wrong with it; run again when that one has finished."""

    exit_code = ExitCode.LOCKED


class LocalError(LafsBackupError):
    """Cannot write {path}: {problem}"""


class MountError(LafsBackupError):
    """Cannot mount at {path}: {problem}"""


class LockedError(LafsBackupError):
    """Another lafs-backup run (pid {pid}, started {started}) holds the lock {path}; nothing was done.  Run again when it has finished, or give --wait-lock SECONDS to wait for it."""

    exit_code = ExitCode.LOCKED


class GridError(LafsBackupError):
    """The Tahoe-LAFS grid is not usable: {problem}"""

    exit_code = ExitCode.GRID


class GatewayError(GridError):
    """A request to the gateway failed.

    Carries the HTTP status, the exception name Tahoe reported and the URL
    with every cap replaced by a placeholder, so it can be shown safely.
    """

    def __init__(self, method: str, url: str, status: int | None, body: str, reason: str = "") -> None:
        from .log import redact

        self.method = method
        self.url = redact(url)
        self.status = status
        self.body = redact(body)
        self.reason = redact(reason) or tahoe_exception_name(self.body)
        what = f"HTTP {status}" if status is not None else "no response"
        detail = f": {self.reason}" if self.reason else ""
        hint = ""
        if self.unhappy:
            hint = (" (not enough storage servers took the shares.  If they are all up, an earlier"
                    " interrupted upload of the same content may still hold its shares as 'incoming':"
                    " Tahoe releases them within 30 minutes, or when the gateway restarts)")
        super().__init__(f"{method} {self.url} failed with {what}{detail}{hint}")

    @property
    def unhappy(self) -> bool:
        """Did the grid refuse the upload for lack of servers (UploadUnhappinessError)?"""
        return self.status == 500 and "UploadUnhappinessError" in self.reason


class SnapshotError(LafsBackupError):
    """Snapshot {what} cannot be used: {problem}"""


class RestoreError(LafsBackupError):
    """Restore failed: {problem}"""


class RemakeError(LafsBackupError):
    """{count} derived file(s) could not be made again, so were not restored: {files} (the warnings above say why).  Everything else was restored; `restore --skip-derived` leaves derived files out and does not fail for them"""

    exit_code = ExitCode.PARTIAL


class StreamReadError(LafsBackupError):
    """Cannot read the stream to back up ({what}): {problem}; nothing was recorded"""


class StreamCommandError(LafsBackupError):
    """The command {program} (--stdin-from-command) {problem}; its output was not backed up and nothing was recorded"""


class HookError(LafsBackupError):
    """The {hook} hook ({program}) {problem}; the backup was not made and nothing was recorded (source.hooks.{hook})"""


def tahoe_exception_name(body: str) -> str:
    """Pull the last line of a ``text/plain`` Tahoe error body (the exception)."""
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return last[:300]
