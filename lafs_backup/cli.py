"""The command line: parse arguments, load the configuration, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Sequence

from . import __version__
from . import config as cfg
from . import log as logsetup
from .errors import ExitCode, LafsBackupError, UsageError

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a subcommand's
    # absent option from resetting one given before it.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-c", "--config", action="append", metavar="FILE", default=argparse.SUPPRESS,
                   help="YAML file layered over the base config (repeatable; later files win)")
    p.add_argument("-o", "--set", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                   help="override one config key, e.g. -o operation.jobs=4 (wins over files)")
    p.add_argument("--url", default=argparse.SUPPRESS, metavar="URL",
                   help="gateway URL (destination.url); default: the embedded local grid")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log at DEBUG level")
    p.add_argument("--noise", action="store_true", default=argparse.SUPPRESS,
                   help="log every path (below DEBUG)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output (JSON lines)")
    p.add_argument("--repo", metavar="KEY|FILE|-", default=argparse.SUPPRESS,
                   help="the repository's recovery key: the key itself, a file holding it, or - to read it "
                        "from stdin (also LAFS_BACKUP_REPO, or repository.key_file; default: this machine's)")
    p.add_argument("--wait-lock", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="wait up to SECONDS for another run holding the entry cache's lock "
                        "(operation.lock_wait; default: exit at once with code 5)")
    return p


def _which(p: argparse.ArgumentParser, what: str = "backups") -> None:
    """--source and --host: which source's backups a 'latest' (or a listing) means."""
    p.add_argument("--source", metavar="PATH",
                   help=f"only {what} of this source directory (default for 'latest': source.path)")
    p.add_argument("--host", metavar="NAME", help=f"only {what} made on this host")
    p.add_argument("--tag", action="append", metavar="TAG", help=f"only {what} with this tag (repeatable: all of them)")


def _selection(p: argparse.ArgumentParser) -> None:
    """The selection options of ``backup`` and ``watch``."""
    sel = p.add_argument_group("what to back up (each adds to its source.* configuration key)")
    sel.add_argument("-x", "--one-file-system", action="store_true", default=None,
                     help="never cross a mount point (the mount point directory itself is recorded)")
    sel.add_argument("--exclude-caches", action="store_true", default=None,
                     help="skip the contents of directories holding a valid CACHEDIR.TAG (keeping the tag)")
    sel.add_argument("--exclude-if-present", action="append", metavar="NAME[:HEADER]",
                     help="skip directories holding a file NAME (that starts with HEADER) (repeatable)")
    sel.add_argument("--exclude-larger-than", metavar="SIZE", help="skip files larger than SIZE ('500M', '2G')")
    sel.add_argument("--files-from", action="append", metavar="FILE",
                     help="back up exactly the paths listed in FILE, one a line ('#' comments, globs) (repeatable)")
    sel.add_argument("--files-from-verbatim", action="append", metavar="FILE",
                     help="the same, each line taken exactly (repeatable)")
    sel.add_argument("--files-from-raw", action="append", metavar="FILE",
                     help="the same, NUL-separated, each path taken exactly (repeatable)")
    sel.add_argument("--git-ignore", action="store_true", default=None,
                     help="honour .gitignore files as well as .lafsbackupignore")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = _Parser(prog="lafs-backup", parents=[common],
                description="Incremental, deduplicated backups to a Tahoe-LAFS grid.")
    p.add_argument("--version", action="version", version=f"lafs-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    b = sub.add_parser("backup", parents=[common], help="back up a directory (phase one, then phase two)")
    b.add_argument("source", nargs="?", help="directory to back up (default: source.path)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--queue-only", nargs="?", const=True, default=False, metavar="PATH",
                   help="only build the queue (phase one), optionally at PATH")
    g.add_argument("--reuse-queue", nargs="?", const=True, default=False, metavar="PATH",
                   help="skip phase one and upload an existing complete queue for this source")
    b.add_argument("-j", "--jobs", type=int, metavar="N", help="requests in flight (operation.jobs)")
    b.add_argument("--mode", choices=["stat", "checksum", "verify", "force"], default="stat",
                   help="stat: trust unchanged size/mtime/ctime/inode (default); checksum: re-hash every "
                        "file; verify: re-hash and report content changed under unchanged stat data; "
                        "force: upload everything again")
    b.add_argument("--rebuild-cache", action="store_true",
                   help="move the entry cache aside (e.g. a damaged one) and start a new one; content "
                        "already on the grid is found again through convergence")
    b.add_argument("--host", metavar="NAME", help="record the backup as made on this host (default: the "
                                                 "host name)")
    b.add_argument("--tag", action="append", metavar="TAG", help="record this tag with the backup (repeatable)")
    g.add_argument("--dry-run", action="store_true",
                   help="walk and plan only: say what would be uploaded (files and bytes, after dedup against "
                        "the cache); nothing is written to the grid or the cache")
    _selection(b)

    w = sub.add_parser("watch", parents=[common], help="back up, then snapshot every settled burst of changes "
                                                      "(inotify), until Ctrl-C or SIGTERM")
    w.add_argument("source", nargs="?", help="directory to watch and back up (default: source.path)")
    w.add_argument("--settle", type=float, metavar="SECONDS",
                   help="quiet time before a round backs up what changed (watch.settle; default 10)")
    w.add_argument("--rescan-interval", type=float, metavar="SECONDS",
                   help="seconds between full rescans of the tree (watch.rescan_interval; default 21600)")
    w.add_argument("--min-interval", type=float, metavar="SECONDS",
                   help="seconds at least between two rounds (watch.min_interval; default 30)")
    w.add_argument("-j", "--jobs", type=int, metavar="N", help="requests in flight (operation.jobs)")
    w.add_argument("--host", metavar="NAME", help="record the backups as made on this host (default: the host name)")
    w.add_argument("--tag", action="append", metavar="TAG", help="record this tag with every backup (repeatable)")
    _selection(w)

    cp = sub.add_parser("copy", parents=[common], help="copy backups to a second grid (every one it lacks, newest "
                                                      "first), recorded in that grid's repository")
    cp.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="only these backups (default: all)")
    cp.add_argument("--to-url", required=True, metavar="URL", help="the second grid's gateway")
    cp.add_argument("-j", "--jobs", type=int, metavar="N", help="objects copied at once (operation.jobs)")
    cp.add_argument("--to-repo", metavar="KEY|FILE|-", help="the second grid's repository (its recovery key, a file "
                    "holding it, or - for stdin; default: this machine's for that grid, made on first use)")
    _which(cp)

    r = sub.add_parser("restore", parents=[common], help="restore a snapshot into a directory")
    r.add_argument("snapshot", help="a snapshot cap, a generation number, or 'latest'")
    r.add_argument("paths", nargs="*", metavar="PATH", help="restore only these subtrees")
    r.add_argument("-t", "--target", required=True, metavar="DIR", help="directory to restore into")
    r.add_argument("--no-owner", action="store_true", help="don't restore ownership (as tar --no-same-owner)")
    r.add_argument("--numeric-owner", action="store_true",
                   help="restore the recorded uid/gid, not the user and group names (as tar)")
    _which(r)

    ls = sub.add_parser("list", parents=[common], help="list finished backups")
    _which(ls)

    lsp = sub.add_parser("ls", parents=[common], help="list the entries of a snapshot, without restoring it")
    lsp.add_argument("snapshot", help="a snapshot cap, a generation number, an id, or 'latest'")
    lsp.add_argument("path", nargs="?", default="", help="a directory (or file) in the snapshot (default: its root)")
    lsp.add_argument("-l", "--long", action="store_true", help="mode, owner, group, size and mtime too")
    lsp.add_argument("-R", "--recursive", action="store_true", help="every entry below, not only the children")
    _which(lsp)

    fd = sub.add_parser("find", parents=[common], help="find paths in every backup (or the ones given)")
    fd.add_argument("pattern", help="a glob matched against names (against whole paths if it has a '/')")
    fd.add_argument("--regex", action="store_true", help="PATTERN is a regular expression searched in paths")
    fd.add_argument("--snapshot", action="append", metavar="S", help="only this backup (repeatable)")
    _which(fd)

    dp = sub.add_parser("dump", parents=[common], help="write a file's bytes, or a directory as a tar stream, "
                                                      "to stdout")
    dp.add_argument("snapshot", help="a snapshot cap, a generation number, an id, or 'latest'")
    dp.add_argument("path", help="the file or directory in the snapshot ('.' for all of it)")
    dp.add_argument("--force", action="store_true", help="write to stdout even when it is a terminal")
    _which(dp)

    mt = sub.add_parser("mount", parents=[common], help="mount every backup as a read-only FUSE file system "
                                                       "(in the foreground, until Ctrl-C or SIGTERM)")
    mt.add_argument("mountpoint", help="an empty directory")
    mt.add_argument("--allow-other", action="store_true", help="let other users see the mount (FUSE's "
                                                              "allow_other; file modes still apply)")
    _which(mt)

    cl = sub.add_parser("cleanup", parents=[common],
                        help="forget backups: named ones, or those a retention policy does not keep")
    cl.add_argument("backups", nargs="*", metavar="BACKUP", help="caps or generation numbers to forget")
    cl.add_argument("-g", "--generation", type=int, action="append", default=[], metavar="N",
                    help="forget this generation (repeatable)")
    cl.add_argument("--up-to", action="store_true", help="also forget every older backup")
    periods = {"hourly": "hours", "daily": "days", "weekly": "weeks", "monthly": "months", "yearly": "years"}
    cl.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the N newest backups")
    for unit, plural in periods.items():
        cl.add_argument(f"--keep-{unit}", type=int, default=0, metavar="N",
                        help=f"keep the newest backup of each of the last N {plural} that have one")
    cl.add_argument("--keep-within", metavar="DURATION", help="keep all within DURATION (e.g. 30d, 1y6m) of the newest")
    cl.add_argument("--dry-run", action="store_true", help="only list what would be forgotten and kept, and why")
    cl.add_argument("-e", "--enumerate-shares", nargs="?", const="-", default=None, metavar="FILE|-",
                    help="list the storage indexes reachable only from the forgotten backups")
    cl.add_argument("-n", "--enumerate-only", action="store_true", help="with -e: list, forget nothing")
    cl.add_argument("--group-by", default="host,source", metavar="KEYS",
                    help="apply the policy to each group of backups with the same host and source "
                         "(default 'host,source'; also 'source', 'host', or 'none' for all together)")
    _which(cl)

    d = sub.add_parser("diff", parents=[common],
                       help="what changed between two snapshots, or a snapshot and the live source (exit 1 if any)")
    d.add_argument("a", metavar="SNAPSHOT", help="a cap, a generation number, or 'latest'")
    d.add_argument("b", nargs="?", metavar="OTHER", help="the snapshot to compare with")
    d.add_argument("--live", action="store_true", help="compare with the source directory as it is now")
    _which(d)

    v = sub.add_parser("verify", parents=[common],
                       help="verify every share and read contents back against their SHA-256; exit 6 on damage")
    v.add_argument("snapshot", help="a snapshot cap, a generation number, or 'latest'")
    v.add_argument("--sample", type=float, default=100.0, metavar="PERCENT",
                   help="read back only this percentage of the files, chosen at random (default 100)")
    _which(v)

    c = sub.add_parser("check", parents=[common],
                       help="deep-check backups: renew leases, optionally repair; exit 6 if anything is unhealthy")
    c.add_argument("backups", nargs="*", metavar="BACKUP", help="caps or generation numbers (default: all)")
    c.add_argument("-a", "--least-recently-checked", action="store_true",
                   help="check only the backup checked least recently (round-robin from cron)")
    c.add_argument("-r", "--repair", action="store_true", help="repair what is not healthy")
    c.add_argument("-n", "--no-lease", action="store_true", help="don't renew leases")
    c.add_argument("-f", "--format", default="{backup[name]} gen {backup[generation]}: {0[path]} ({0[type]}): "
                   "{0[summary]}", help="line for each unhealthy object")
    c.add_argument("--healthy-format", default=None, help="line for each healthy object (default: none)")
    c.add_argument("-e", "--error-output", action="store_true", help="write the lines to stderr")
    _which(c)

    sub.add_parser("init", parents=[common], help="make a repository on the grid (the first backup does it too)")
    sub.add_parser("key", parents=[common], help="print the repository's recovery key (a secret: keep a copy "
                                                "off this machine)")

    gr = sub.add_parser("grid", parents=[common], help="manage the embedded local Tahoe-LAFS grid, or join one")
    gr.add_argument("action", choices=["up", "down", "status", "furl", "join"],
                    help="up/down/status: this machine's grid; furl: print its introducer's FURL (a secret); "
                         "join FURL: run a node of a grid made elsewhere")
    gr.add_argument("furl", nargs="?", metavar="FURL|FILE|-", help="for join: the grid's introducer FURL, a file "
                    "holding it, or - for stdin (default: LAFS_BACKUP_FURL, then repository.introducer_furl)")
    gr.add_argument("--storage", action="store_true", help="for join: run a storage node (default: a gateway)")
    gr.add_argument("--listen", metavar="HOST", help="for up (when the grid is made) and join --storage: listen "
                                                    "on every interface, reachable as HOST by other machines")
    gr.add_argument("--dir", help="grid directory (default: grid.dir, or the user data directory)")
    gr.add_argument("--nodes", type=int, help="storage nodes (grid.nodes; used when creating)")
    gr.add_argument("--needed", type=int, help="shares needed, k (grid.needed)")
    gr.add_argument("--happy", type=int, help="servers of happiness (grid.happy)")

    sub.add_parser("dump-config", parents=[common], help="print the merged configuration")
    return p


def _overrides(ns: argparse.Namespace) -> list[tuple[str, Any]]:
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

    def __init__(self, say: Any) -> None:
        self._say = say
        self.signum: int | None = None
        self._reactor: Any = None
        self._command: Any = None

    @property
    def exit_code(self) -> int:
        import signal

        return int(ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED)

    def watch(self, reactor: Any, command: Any) -> None:
        """Take over SIGINT and SIGTERM once ``reactor`` runs; ``command`` is the Deferred to cancel."""
        self._reactor, self._command = reactor, command
        reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._caught)

    def _caught(self, signum: int, frame: Any) -> None:
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


async def run(reactor: Any, argv: Sequence[str], out: Any = None, err: Any = None,
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
        from .commands.context import Context, state_dir

        ns = build_parser().parse_args(list(argv))
        if not ns.command:
            raise UsageError("lafs-backup: a command is required (backup, restore, list, check, verify, grid, "
                             "dump-config); see --help")
        config = cfg.load(getattr(ns, "config", []), _overrides(ns))
        level = "noise" if getattr(ns, "noise", False) else "debug" if getattr(ns, "debug", False) else (
            config.log_level)
        logsetup.setup(level, insecure=config.debug_requests, stream=rep.err)
        rep.json_mode = getattr(ns, "json", False)
        ctx = Context(config, reactor, rep, op=Operation(ns.command, rep), repo_arg=getattr(ns, "repo", None))
        if ns.command not in _WITH_MANHOLE:
            return await _dispatch(ctx, ns)
        from . import manhole

        mh = await manhole.start(config, reactor, ctx.op, state_dir(), lambda m: rep.warn("manhole", m))
        try:
            return await _dispatch(ctx, ns)
        finally:
            await manhole.stop(mh)
    except LafsBackupError as e:
        rep.error(logsetup.redact(e.message))
        return int(e.exit_code)
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

    def __init__(self, stream: Any) -> None:
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


def crashed(say: Any, debug: bool) -> int:
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


async def _dispatch(ctx: Any, ns: argparse.Namespace) -> int:
    import importlib

    from .commands import COMMANDS

    module = importlib.import_module(f".commands.{COMMANDS[ns.command]}", __package__)
    try:
        return int(await module.run(ctx, ns))
    finally:
        gw = getattr(ctx, "_gateway", None)
        if gw is not None:
            log.info("%s: gateway requests %s", ns.command, dict(sorted(gw.counts.items())))


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


def _main(args: list[str], say: Any) -> int:
    from twisted.internet import defer, task

    if not args:
        say(build_parser().format_help() + "\nlafs-backup: a command is required")
        return int(ExitCode.USAGE)
    if args in (["-h"], ["--help"]) or "--version" in args:
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            return int(e.code or 0)
        except UsageError as e:
            say(e.message)
            return int(ExitCode.USAGE)
    stopper = Stopper(say)
    # Stays INTERRUPTED only if the reactor stopped before the command returned.
    code: list[int] = [int(ExitCode.INTERRUPTED)]

    async def go(reactor: Any) -> None:
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
