"""Backing up a stream (``--stdin``, ``--stdin-from-command``): the request, and the command, run by Twisted.

``--stdin-from-command -- CMD ARGS`` runs CMD without a shell, its standard
output into a pipe that the stream source (``backup.stream``) reads to its
end, its standard error straight to ours, its standard input ours.  The
walk then waits for the command's end: a non-zero exit or a signal fails the
backup before anything is queued or uploaded, with an error naming the
program and how it ended (never its arguments: they may hold a password).
A backup that fails or is stopped for any other reason ends the command
(SIGTERM) if it is still running.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Sequence, cast

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ..backup.stream import DEFAULT_NAME, StreamSource, checked_name
from ..errors import StreamCommandError, UsageError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProcessTransport

    from .runtime import Runtime

log = logging.getLogger(__name__)

#: Environment variables the command is not given: the recovery key is a secret.
WITHHELD = ("LAFS_BACKUP_REPO",)


@dataclass(frozen=True)
class StreamRequest:
    """A backup of a stream: the file's ``name``, and the ``command`` whose output it is (empty:
    standard input)."""

    name: bytes
    command: tuple[str, ...] = ()


def stream_request(stdin: bool, from_command: bool, filename: str | None, words: Sequence[str],
                   others: Sequence[str] = (), stdin_is_tty: bool = False) -> StreamRequest | None:
    """What ``backup``'s arguments ask of a stream (pure): None for a directory's backup.

    ``words``: the positional arguments (the command, with ``--stdin-from-command``); ``others``:
    the options given that make no sense for a stream (selection, queue).  Raises
    :class:`UsageError` for a stream asked wrongly: with a SOURCE, without a command, from a
    terminal, with such options, or under a name that cannot be a file's.
    """
    if not (stdin or from_command):
        if filename is not None:
            raise UsageError("--stdin-filename names the file a stream is stored as: give it with --stdin or "
                             "--stdin-from-command")
        return None
    flag = "--stdin" if stdin else "--stdin-from-command"
    if stdin and words:
        raise UsageError(f"--stdin backs up what is piped into lafs-backup, not a directory: drop the SOURCE "
                         f"({' '.join(words)}), or drop --stdin")
    if from_command and not words:
        raise UsageError("--stdin-from-command needs the command to run after '--': "
                         "lafs-backup backup --stdin-from-command -- pg_dump mydb")
    if others:
        raise UsageError(f"{others[0]} cannot be given with {flag}: a stream is one file, read once")
    if stdin and stdin_is_tty:
        raise UsageError("--stdin reads the stream to back up from standard input, which is a terminal here: "
                         "pipe it in (pg_dump mydb | lafs-backup backup --stdin), or use --stdin-from-command")
    name = checked_name(filename if filename is not None else DEFAULT_NAME)
    return StreamRequest(name, tuple(words) if from_command else ())


def how_it_ended(code: int | None, sig: int | None) -> str | None:
    """What went wrong with a command that ended with exit ``code`` or by signal ``sig`` (pure):
    None when it succeeded, else the end of a sentence that starts with its name."""
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was ended by signal {name}"
    if code != 0:
        return f"exited with code {code}"
    return None


class _Command(ProcessProtocol):
    """The running command: its end, told to the walk's thread (which waits for it there)."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.status: tuple[int | None, int | None] | None = None
        self.done = threading.Event()

    def processEnded(self, reason: Failure) -> None:
        v = reason.value
        self.status = (0, None) if isinstance(v, ProcessDone) else (
            (v.exitCode, v.signal) if isinstance(v, ProcessTerminated) else (None, None))
        log.info("the command %s ended: code %s, signal %s", self.program, *self.status)
        self.done.set()

    def wait(self) -> None:
        """Block (in the walk's thread) until the command has ended; raise
        :class:`StreamCommandError` if it failed."""
        self.done.wait()
        assert self.status is not None
        problem = how_it_ended(*self.status)
        if problem is not None:
            raise StreamCommandError(program=self.program, problem=problem)


def _program(argv0: str) -> str:
    """The program's path: as given when it holds a '/', else found on PATH; raises
    :class:`StreamCommandError` when there is none to run."""
    found = argv0 if "/" in argv0 else shutil.which(argv0)
    if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise StreamCommandError(program=argv0, problem="cannot be run: no such program"
                                 + ("" if "/" in argv0 else " on PATH"))
    return found


@asynccontextmanager
async def stream_source(rt: Runtime, req: StreamRequest) -> AsyncIterator[StreamSource]:
    """The source of ``req``, for the length of the backup: standard input, or the output of its
    command, started now.  On the way out the command is ended if it still runs (the backup failed
    or was stopped), and the stream's copy is let go."""
    if not req.command:
        source = StreamSource(req.name, 0)
        try:
            yield source
        finally:
            source.close()
        return
    argv = list(req.command)
    path = _program(argv[0])
    if not IReactorProcess.providedBy(rt.reactor):
        raise StreamCommandError(program=argv[0], problem="cannot be run: this reactor runs no processes")
    procs = cast(IReactorProcess, rt.reactor)
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD}
    rfd, wfd = os.pipe()
    proto = _Command(argv[0])
    try:
        # No shell; stdin and stderr are ours, stdout the pipe read by the walk.
        log.info("running %s for --stdin-from-command", argv[0])
        transport: IProcessTransport = procs.spawnProcess(proto, path, argv, env=env,
                                                          childFDs={0: 0, 1: wfd, 2: 2})
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)  # (the child holds its own: the pipe ends when it does)
    source = StreamSource(req.name, rfd, finished=proto.wait, owns_fd=True, what=f"the output of {argv[0]}")
    try:
        yield source
    finally:
        if not proto.done.is_set():
            log.info("ending the command %s: the backup did not finish", argv[0])
            try:
                transport.signalProcess("TERM")
            except ProcessExitedAlready:
                pass
        source.close()
