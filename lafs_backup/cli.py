"""The command line: parse arguments, load the configuration, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from types import FrameType
from typing import IO, TYPE_CHECKING, Callable, Sequence

from . import arguments
from . import config as cfg
from . import log as logsetup
from .errors import ExitCode, LafsBackupError, UsageError
from .system.memory import limit_arenas

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .protocols import Reactor
    from .resources import Opener

#: Says one line to the user (on stderr).
SayFn = Callable[[str], None]

log = logging.getLogger(__name__)


def _level(ns: argparse.Namespace, configured: str) -> str:
    """The log level: --noise, --debug or -vv, -v, -q, else ``logging.level``."""
    verbose = getattr(ns, "verbose", 0)
    if getattr(ns, "noise", False):
        return "noise"
    if getattr(ns, "debug", False) or verbose >= 2:
        return "debug"
    if verbose == 1:
        return "info"
    if getattr(ns, "quiet", False):
        return "error"
    return configured


def _remote_source(ns: argparse.Namespace, config: cfg.Config) -> bool:
    """Does the command read a source over the network (an fsspec URL as SOURCE or ``source.path``)?"""
    from .names import is_url

    given = getattr(ns, "source", None)
    sources = [given] if isinstance(given, str) else [s for s in given or [] if isinstance(s, str)]
    return any(is_url(s) for s in sources or [config.source.path or ""])


def _overrides(ns: argparse.Namespace) -> list[tuple[str, cfg.YAMLValue]]:
    out = [cfg.parse_override(item) for item in getattr(ns, "set", [])]
    if getattr(ns, "url", None):
        out.append(("destination.url", ns.url))
    if getattr(ns, "jobs", None) is not None:
        out.append(("operation.jobs", ns.jobs))
    for opt in ("nodes", "needed", "happy"):
        if getattr(ns, opt, None) is not None:
            out.append((f"grid.{opt}", getattr(ns, opt)))
    if getattr(ns, "dir", None):
        out.append(("grid.dir", ns.dir))
    if getattr(ns, "wait_lock", None) is not None:
        out.append(("operation.lock_wait", ns.wait_lock))
    return out


class Stopper:
    """SIGINT and SIGTERM: say so in one line, cancel the running command (it unwinds, keeping
    what is done, so the next run goes on from there), and make sure the process is gone within
    two seconds whatever it was doing.  A second signal ends it at once."""

    GRACE = 1.8

    def __init__(self, say: SayFn) -> None:
        self._say = say
        self.signum: int | None = None
        self._reactor: Reactor | None = None
        self._command: Deferred[int] | None = None

    @property
    def exit_code(self) -> int:
        import signal

        return int(ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED)

    def watch(self, reactor: Reactor, command: Deferred[int]) -> None:
        """Take over SIGINT and SIGTERM once ``reactor`` runs; ``command`` is the Deferred to cancel."""
        self._reactor, self._command = reactor, command
        reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._caught)

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        assert self._reactor is not None  # (installed once the reactor runs)
        self._reactor.callFromThread(self._stop, signum)

    def _stop(self, signum: int) -> None:
        import signal
        import threading

        if self.signum is not None:
            _hard_exit(self.exit_code)
        self.signum = signum
        name = signal.Signals(signum).name
        self._say(f"lafs-backup: {'interrupted' if signum == signal.SIGINT else 'terminated'} ({name}): "
                  "stopping; what is finished is kept and the next run goes on from there")
        timer = threading.Timer(self.GRACE, _hard_exit, (self.exit_code,))
        timer.daemon = True
        timer.start()
        if self._command is not None and not self._command.called:
            self._command.cancel()


def _hard_exit(code: int) -> None:
    """End the process now (a thread stuck in a system call would otherwise hold it)."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


async def run(reactor: Reactor, argv: Sequence[str], out: IO[str] | None = None, err: IO[str] | None = None,
              stopper: Stopper | None = None) -> int:
    """Run one command with an injected reactor; return its exit code.

    Every :class:`LafsBackupError` becomes its message and exit code; any
    other exception, wherever it is raised (an import included), is a bug:
    one line names it and where its redacted traceback was written, exit 70.
    A command cancelled by a signal (see :class:`Stopper`) returns 130 or 143.
    """
    say = _Say(err or sys.stderr)
    debug = any(a in ("--debug", "--noise") for a in argv)
    try:
        from twisted.internet.defer import CancelledError

        from .report import Operation, Reporter

        rep = Reporter(out=out or sys.stdout, err=err or sys.stderr)
    except Exception:
        return crashed(say, debug)
    try:
        from .engine.runtime import Runtime
        from .resources import Opener
        from .system.places import state_dir

        ns = arguments.parse(argv)
        config = cfg.load(getattr(ns, "config", []), _overrides(ns))
        if hasattr(reactor, "suggestThreadPoolSize"):  # (a test's memory reactor has no threads)
            reactor.suggestThreadPoolSize(cfg.threads_for(config.operation.threads, _remote_source(ns, config)))
        logsetup.setup(_level(ns, config.log_level), insecure=config.debug_requests, stream=rep.err)
        rep.json_mode = getattr(ns, "json", False)
        rep.quiet = bool(getattr(ns, "quiet", False))
        op = Operation(ns.command, rep)
        from .engine.monitor import Monitor

        # (the opener made next knows the grid's entry cache once the command has asked for its gateway)
        # (a run that changes nothing, --dry-run or --queue-only, is neither recorded nor pinged)
        changes = not (getattr(ns, "dry_run", False) or getattr(ns, "queue_only", False) is not False)
        monitor = Monitor.of(config, ns.command, reactor, rep, lambda: opener.known_cache_path()) if changes else None
        opener = Opener(config, Runtime(reactor, rep, op, monitor), repo_arg=getattr(ns, "repo", None))
        if ns.command not in _WITH_MANHOLE or not config.manhole.asked:  # (off by default: not even imported)
            return await _dispatch(opener, ns)
        from . import manhole

        mh = await manhole.start(config, reactor, op, state_dir(), lambda m: rep.warn("manhole", m))
        try:
            return await _dispatch(opener, ns)
        finally:
            await manhole.stop(mh)
    except LafsBackupError as e:
        rep.error(logsetup.redact(e.message))
        return _own_code(argv, int(e.exit_code))
    except SystemExit as e:  # argparse's --help
        return int(e.code or 0)
    except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return int(ExitCode.PIPE)
    except KeyboardInterrupt:
        rep.say("lafs-backup: interrupted")
        return int(ExitCode.INTERRUPTED)
    except CancelledError:
        if stopper is not None and stopper.signum is not None:
            return stopper.exit_code
        return crashed(say, debug)
    except Exception:
        return crashed(say, debug)


class _Say:
    """A line on a stream, with nothing of the tool's own imported (it must work when they fail)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, line: str) -> None:
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass


def crash_dir() -> str:
    """Where a bug's traceback is written: the state directory's ``crashes``."""
    import platformdirs

    return os.path.join(platformdirs.user_state_dir("lafs-backup"), "crashes")


def crashed(say: SayFn, debug: bool) -> int:
    """Report the exception being handled as a bug and return 70.

    One line names the error; its traceback, with every cap and key redacted,
    goes to a 0600 file in :func:`crash_dir` (or to the terminal with
    ``--debug``, or when no file can be written)."""
    import time

    etype, value, _ = sys.exc_info()
    text = logsetup.redact("".join(traceback.format_exc()))
    name = getattr(etype, "__name__", "error")
    first = logsetup.redact(str(value).splitlines()[0] if str(value) else "").strip()
    what = f"{name}: {first}" if first else name
    if debug:
        say(f"lafs-backup: internal error (a bug; please report it): {what}\n{text}")
        return int(ExitCode.INTERNAL)
    try:
        where = crash_dir()
        os.makedirs(where, mode=0o700, exist_ok=True)
        path = os.path.join(where, time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}.txt")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        say(f"lafs-backup: internal error (a bug; please report it): {what}\n{text}")
        return int(ExitCode.INTERNAL)
    say(f"lafs-backup: internal error (a bug; please report it): {what}; "
        f"the traceback (caps and keys redacted) is in {path}, and --debug prints it")
    return int(ExitCode.INTERNAL)


#: Commands that run long enough to be worth a manhole.
_WITH_MANHOLE = {"backup", "watch", "copy", "restore", "check", "verify", "cleanup", "diff"}


def _own_code(argv: Sequence[str], code: int) -> int:
    """The exit code of a command that failed with ``code``: the command's own for any error when it
    follows another convention (``status``: 3, unknown), else ``code``."""
    from .commands import ERROR_CODES

    found = arguments.find_verb(argv)
    return ERROR_CODES.get(found[1], code) if found is not None else code


async def _dispatch(opener: Opener, ns: argparse.Namespace) -> int:
    import importlib

    from .commands import COMMANDS, READ_ONLY

    module = importlib.import_module(f".commands.{COMMANDS[ns.command][0]}", __package__)
    monitor = opener.rt.monitor  # (a command that changes state: pings, its run recorded, the metrics file)
    if monitor is not None:
        await monitor.started()
    ended: tuple[int, str | None] | None = None
    try:
        code = int(await module.run(opener, ns))
        ended = (code, None)
        return code
    except LafsBackupError as e:
        ended = (int(e.exit_code), e.message)
        raise
    except Exception as e:  # (a bug, reported by the caller; a cancelled run is not recorded)
        from twisted.internet.defer import CancelledError

        if not isinstance(e, CancelledError):
            ended = (int(ExitCode.INTERNAL), f"internal error: {type(e).__name__}")
        raise
    finally:
        try:
            if monitor is not None and ended is not None:
                await monitor.ended(*ended)
        finally:
            gw = getattr(opener, "_gateway", None)
            if gw is not None:
                log.info("%s: gateway requests %s", ns.command, dict(sorted(gw.counts.items())))
            if opener.started and ns.command in READ_ONLY:
                # A read command leaves the machine as it found it: the grid it had to start stops.
                stopped = await opener.stop_started()
                opener.rt.reporter.say(f"lafs-backup: stopped the embedded grid this command started "
                                       f"({len(stopped)} nodes)")
            elif opener.started and ns.command in ("backup", "watch", "copy", "check", "cleanup", "init"):
                opener.keep_started()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the command under the global reactor.

    Only Ctrl-C (130) and SIGTERM (143) end it with a signal's code; an
    exception anywhere else is a bug and exits 70 (see :func:`crashed`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    say = _Say(sys.stderr)
    debug = any(a in ("--debug", "--noise") for a in args)
    try:
        return _main(args, say)
    except KeyboardInterrupt:
        say("lafs-backup: interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception:
        return crashed(say, debug)


def _main(args: list[str], say: SayFn) -> int:
    from twisted.internet import defer, task

    if not args:
        say(arguments.top_parser().format_help() + "\nlafs-backup: error: a command is required")
        return int(ExitCode.USAGE)
    if arguments.find_verb(args) is None:  # --help, --version or a mistake: no reactor needed
        try:
            arguments.parse(args)
        except SystemExit as e:
            return int(e.code or 0)
        except UsageError as e:
            say(f"lafs-backup: error: {e.message}")
            return int(ExitCode.USAGE)
    limit_arenas()  # (before the reactor's threads start)
    stopper = Stopper(say)
    # Stays INTERRUPTED only if the reactor stopped before the command returned.
    code: list[int] = [int(ExitCode.INTERRUPTED)]

    async def go(reactor: Reactor) -> None:
        command = defer.Deferred.fromCoroutine(run(reactor, args, stopper=stopper))
        stopper.watch(reactor, command)
        try:
            code[0] = await command
        except defer.CancelledError:
            code[0] = stopper.exit_code if stopper.signum is not None else int(ExitCode.INTERNAL)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit:
        pass
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
