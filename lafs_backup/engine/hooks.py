"""Hooks: the user's commands run before a backup, after it, and when it fails (``source.hooks``).

A hook is an argument list run without a shell, in a process group of its own (so that a time
limit stops a shell and everything it started), through Twisted's process API: the reactor is
never blocked while it runs.  Its output is shown line by line through the reporter, and its
time limit runs on the injected clock.

``watch`` runs no hooks: its rounds come every few seconds from changes in a live tree, and a
``before`` hook that writes into the source (a dump) would itself make the changes that start the
next round.  Interrupted backups (Ctrl-C, SIGTERM) run no ``on_failure`` hook either: the process
has two seconds to end, and a hook running at that moment is stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Sequence, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ..config import HooksConfig
from ..errors import ExitCode, HookError, LafsBackupError
from ..log import redact
from ..report import Reporter, outcome

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProcessTransport

    from .backup import Made
    from .runtime import Runtime

log = logging.getLogger(__name__)

#: Seconds between the SIGTERM that ends a hook's time and the SIGKILL that follows if it is still there.
KILL_GRACE = 5.0
#: Seconds a hook's output pipes may stay open once the hook itself has exited (a process it left
#: behind in the background holds them): then they are closed, and the hook is over.
PIPES_GRACE = 2.0
#: A line of a hook's output is cut at this many characters (a hook that writes no newline).
LINE_MAX = 4096
#: Environment variables a hook is not given: the recovery key is a secret.
WITHHELD = (b"LAFS_BACKUP_REPO",)

#: Runs the hook in a new session (its own process group), then becomes it; 127/126 as a shell
#: says when the program is not found or cannot be run.
_EXEC = ("import os, sys\n"
         "os.setsid()\n"
         "try:\n"
         "    os.execvp(sys.argv[1], sys.argv[1:])\n"
         "except OSError as e:\n"
         "    sys.stderr.write(f'{sys.argv[1]}: {e.strerror}\\n')\n"
         "    os._exit(127 if isinstance(e, FileNotFoundError) else 126)\n")


@dataclass(frozen=True)
class Ran:
    """How one hook ended: its exit ``code``, or the ``signal`` that ended it; ``timed_out``: its
    time ran out and it was stopped; ``last_line``: its last line of output, for the message."""

    hook: str
    program: str
    code: int | None
    signal: int | None = None
    timed_out: bool = False
    last_line: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    def problem(self, timeout: float) -> str:
        """What went wrong, as the end of a sentence that starts with the hook's name."""
        if self.timed_out:
            what = f"ran longer than source.hooks.timeout ({timeout:g}s) and was stopped"
        elif self.signal is not None:
            what = f"was ended by signal {_signal_name(self.signal)}"
        elif self.code is None:
            what = "could not be started"
        else:
            what = f"exited with code {self.code}"
        return what + (f" ({self.last_line})" if self.last_line else "")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def environment(base: Mapping[bytes, bytes], hook: str, source: bytes, result: str | None = None,
                code: int | None = None, snapshot: str | None = None, error: str | None = None) -> dict[bytes, bytes]:
    """The environment a hook runs in (pure): ``base`` without :data:`WITHHELD`, and

    - ``LAFS_BACKUP_HOOK``: ``before``, ``after`` or ``on_failure``;
    - ``LAFS_BACKUP_SOURCE``: the source's path, as its backups are recorded;
    - ``LAFS_BACKUP_RESULT``: ``success``, ``partial`` or ``skipped`` (``after``), ``failed`` (``on_failure``);
    - ``LAFS_BACKUP_EXIT_CODE``: the exit code the backup ends with (``after``, ``on_failure``);
    - ``LAFS_BACKUP_SNAPSHOT``: the backup's id as ``list`` shows it, never a cap (``after``);
    - ``LAFS_BACKUP_ERROR``: why the backup failed, caps hidden (``on_failure``).
    """
    # (A backup run from another backup's hook: its hooks see only their own values.)
    env = {k: v for k, v in base.items() if k not in WITHHELD and k not in _OURS}
    env[b"LAFS_BACKUP_HOOK"] = hook.encode()
    env[b"LAFS_BACKUP_SOURCE"] = source
    if result is not None:
        env[b"LAFS_BACKUP_RESULT"] = result.encode()
    if code is not None:
        env[b"LAFS_BACKUP_EXIT_CODE"] = str(int(code)).encode()
    if snapshot is not None:
        env[b"LAFS_BACKUP_SNAPSHOT"] = snapshot.encode()
    if error is not None:
        env[b"LAFS_BACKUP_ERROR"] = os.fsencode(redact(error))
    return env


_OURS = frozenset({b"LAFS_BACKUP_HOOK", b"LAFS_BACKUP_SOURCE", b"LAFS_BACKUP_RESULT", b"LAFS_BACKUP_EXIT_CODE",
                   b"LAFS_BACKUP_SNAPSHOT", b"LAFS_BACKUP_ERROR"})


def result_of(made: Made, code: int) -> tuple[str, str | None]:
    """What the ``after`` hook is told of a finished backup (pure): ``skipped`` when
    ``--skip-if-unchanged`` recorded nothing, else ``success`` or ``partial`` by the exit ``code``;
    and the id of the backup that holds the source now (the new one, or the last one it equals)."""
    b = made.backup or made.kept
    if made.backup is None:
        return "skipped", b.short_id if b is not None else None
    return ("success" if code == ExitCode.OK else "partial"), b.short_id if b is not None else None


class _HookProcess(ProcessProtocol):
    """One running hook: its output, line by line, to ``say``; ``ended`` fires with (code, signal)."""

    def __init__(self, clock: IReactorTime, say: Callable[[str, str], None]) -> None:
        self.clock = clock
        self.say = say
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.last_line = ""
        self._partial = {1: b"", 2: b""}
        self._pipes_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()  # (a hook reads nothing from us)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buf = self._partial.get(childFD, b"") + data
        *lines, rest = buf.split(b"\n")
        while len(rest) > LINE_MAX:
            lines.append(rest[:LINE_MAX])
            rest = rest[LINE_MAX:]
        self._partial[childFD] = rest
        for line in lines:
            self._line(childFD, line)

    def _line(self, fd: int, raw: bytes) -> None:
        text = redact(raw[:LINE_MAX].rstrip(b"\r").decode("utf-8", "replace"))
        if text.strip():
            self.last_line = text.strip()
        self.say("stderr" if fd == 2 else "stdout", text)

    def processExited(self, reason: Failure) -> None:
        # Pipes a background child still holds would keep processEnded away: close them after a while.
        def close() -> None:
            if self.transport is not None:
                self.transport.loseConnection()
        self._pipes_timer = self.clock.callLater(PIPES_GRACE, close)

    def processEnded(self, reason: Failure) -> None:
        if self._pipes_timer is not None and self._pipes_timer.active():
            self._pipes_timer.cancel()
        for fd, rest in self._partial.items():
            if rest:
                self._line(fd, rest)
        self._partial = {}
        v = reason.value
        status = (0, None) if isinstance(v, ProcessDone) else (
            (v.exitCode, v.signal) if isinstance(v, ProcessTerminated) else (None, None))
        if not self.ended.called:
            self.ended.callback(status)


async def run_hook(procs: IReactorProcess, clock: IReactorTime, hook: str, argv: Sequence[str],
                   env: Mapping[bytes, bytes], timeout: float, say: Callable[[str, str], None]) -> Ran:
    """Run one hook to its end and say how it ended (a failure is a result, not an exception).

    Its time limit runs on ``clock``: when ``timeout`` seconds have passed, its process group is
    sent SIGTERM, and SIGKILL :data:`KILL_GRACE` seconds later.  Cancelled (the command is
    interrupted), it is killed at once.  ``say(stream, line)``: each line of its output.
    """
    proto = _HookProcess(clock, say)
    args = [sys.executable, "-I", "-S", "-c", _EXEC, *argv]
    log.info("running the %s hook (%s)", hook, argv[0])
    try:
        transport: IProcessTransport = procs.spawnProcess(proto, sys.executable, args, env=dict(env))
    except OSError as e:  # (no process could be made: out of memory or processes)
        return Ran(hook, argv[0], None, last_line=e.strerror or str(e))
    timed_out = False
    kill_timer: IDelayedCall | None = None

    def kill(sig: int) -> None:
        pid = transport.pid
        if pid is None:
            return  # (it has ended)
        try:
            os.killpg(pid, sig)
        except OSError:  # (not its own group yet: the process alone)
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def expire() -> None:
        nonlocal timed_out, kill_timer
        timed_out = True
        log.info("the %s hook (%s) ran out of time (%gs): stopping it", hook, argv[0], timeout)
        kill(signal.SIGTERM)
        kill_timer = clock.callLater(KILL_GRACE, kill, signal.SIGKILL)

    timer = clock.callLater(timeout, expire)
    try:
        code, sig = await proto.ended
    except CancelledError:
        kill(signal.SIGKILL)
        raise
    finally:
        for t in (timer, kill_timer):
            if t is not None and t.active():
                t.cancel()
    ran = Ran(hook, argv[0], code, sig, timed_out, proto.last_line)
    log.info("the %s hook (%s) ended: code %s, signal %s%s", hook, argv[0], code, sig,
             ", out of time" if timed_out else "")
    return ran


async def around(rt: Runtime, conf: HooksConfig, source: bytes, backup: Callable[[], Awaitable[Made]]) -> Made:
    """Run ``backup`` within the hooks of ``conf``:

    - ``before`` first: if it fails, ``on_failure`` runs and :class:`HookError` is raised (nothing
      was backed up);
    - ``backup``: if it raises, ``on_failure`` runs and the error goes on (an interruption runs
      no hook);
    - ``after`` once it is recorded (or found unchanged): a failure is a warning on the reporter,
      which makes the exit code the partial one; the backup stays.
    """
    if not conf.any:
        return await backup()
    rep = rt.reporter
    if not IReactorProcess.providedBy(rt.reactor):
        raise HookError(hook="before", program=(conf.before or conf.after or conf.on_failure)[0],
                        problem="cannot be run: this reactor runs no processes")
    runner = Hooks(cast(IReactorProcess, rt.reactor), rt.reactor, rep, conf, source)
    if conf.before:
        ran = await runner.run("before", conf.before, environment(os.environb, "before", source))
        if not ran.ok:
            err = HookError(hook="before", program=ran.program, problem=ran.problem(conf.timeout))
            await runner.on_failure(err)
            raise err
    try:
        made = await backup()
    except CancelledError:  # (interrupted: see the module docstring)
        raise
    except Exception as e:  # (a bug too: the hook is told exit code 70)
        await runner.on_failure(e)
        raise
    if conf.after:
        code = outcome(rep)
        result, sid = result_of(made, code)
        ran = await runner.run("after", conf.after, environment(os.environb, "after", source, result, code, sid))
        if not ran.ok:
            kept = f"the backup {sid}" if sid else "the backup"
            rep.warn("hook after", f"the after hook ({ran.program}) {ran.problem(conf.timeout)}; {kept} "
                                   "stays as it is")
    return made


class Hooks:
    """The hooks of one backup of ``source``, run through ``procs`` within their time on ``clock``."""

    def __init__(self, procs: IReactorProcess, clock: IReactorTime, rep: Reporter, conf: HooksConfig,
                 source: bytes) -> None:
        self.procs, self.clock, self.rep, self.conf, self.source = procs, clock, rep, conf, source

    async def run(self, hook: str, argv: Sequence[str], env: Mapping[bytes, bytes]) -> Ran:
        return await run_hook(self.procs, self.clock, hook, argv, env, self.conf.timeout,
                              lambda stream, line: self.rep.hook_output(hook, stream, line))

    async def on_failure(self, e: BaseException) -> None:
        """Run ``on_failure`` for a backup that failed with ``e``; its own failure is a warning."""
        if not self.conf.on_failure:
            return
        if isinstance(e, LafsBackupError):
            code, why = int(e.exit_code), e.message
        else:
            code, why = int(ExitCode.INTERNAL), f"internal error ({type(e).__name__})"
        env = environment(os.environb, "on_failure", self.source, "failed", code, error=why)
        ran = await self.run("on_failure", self.conf.on_failure, env)
        if not ran.ok:
            self.rep.warn("hook on_failure", f"the on_failure hook ({ran.program}) {ran.problem(self.conf.timeout)}")
