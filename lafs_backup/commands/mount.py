"""``mount``: every backup as a read-only FUSE file system, in the foreground until a signal."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads

from ..errors import ExitCode, MountError, UsageError
from ..read import remake
from ..read.browse import Browser
from ..read.reader import Reader
from ..resources import Opener
from .which import choose
from . import options

if TYPE_CHECKING:  # (imported once libfuse is known to be there)
    from ..read.mount import SnapshotFS


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup mount /mnt/backups'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``mount``."""
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount (FUSE's "
                                                              "allow_other; file modes still apply)")
    options.which(p)


class _Loop:
    """libfuse's loop, in a thread of its own; ``wait()`` fires (in the reactor) when it has ended."""

    def __init__(self, reactor: IReactorFromThreads, fs: SnapshotFS, mountpoint: str, options: dict[str, Any]) -> None:
        self.reactor = reactor
        self.error: BaseException | None = None
        self.ended = False
        self._waiters: list[Deferred] = []
        self._thread = threading.Thread(target=self._run, args=(fs, mountpoint, options), daemon=True,
                                        name="fuse")

    def start(self) -> None:
        self._thread.start()

    def _run(self, fs: SnapshotFS, mountpoint: str, options: dict[str, Any]) -> None:
        try:
            import mfusepy

            mfusepy.FUSE(fs, mountpoint, foreground=True, **options)
        except BaseException as e:  # reported by the command, in the reactor
            self.error = e
        finally:
            self.reactor.callFromThread(self._end)

    def _end(self) -> None:
        self.ended = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        if self.ended:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d


def unmount(mountpoint: str) -> None:
    """Ask the kernel to unmount (lazily if something still uses it): libfuse's loop then ends."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmds = [[tool, "-u", mountpoint], [tool, "-u", "-z", mountpoint]] if tool else [["umount", mountpoint],
                                                                                   ["umount", "-l", mountpoint]]
    for cmd in cmds:
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    mountpoint = os.path.abspath(ns.mountpoint)
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    try:
        import mfusepy  # noqa: F401  (finds libfuse when imported)
    except (ImportError, OSError, EnvironmentError) as e:
        raise UsageError(f"mount needs libfuse 3 and its fusermount3 (Debian: apt-get install fuse3): {e}")
    from ..read.mount import SnapshotFS

    everything = await o.backups()
    chosen = choose(o, everything, [], ns.source, ns.host, ns.tag)
    gw = await o.gateway()
    reader = Reader(gw)
    tmpdir = tempfile.mkdtemp(prefix="lafs-backup-mount-")  # mode 0700: the spools hold file contents
    browser = Browser(reader, ahead=max(4, o.config.operation.jobs), remember=256)
    # Derived files are made again on their first read, from their inputs in the same backup.
    fs = SnapshotFS(o.rt.reactor, browser, chosen, tmpdir, remake.make(reader, o.config.derive, o.rt.in_thread))
    options: dict[str, Any] = {"ro": True, "default_permissions": True, "fsname": "lafs-backup", "use_ino": True}
    if ns.allow_other:
        options["allow_other"] = True
    loop = _Loop(o.rt.reactor, fs, mountpoint, options)
    loop.start()
    rep.say(f"lafs-backup: {len(chosen)} backups mounted at {mountpoint} (read-only); Ctrl-C or SIGTERM "
            "unmounts")
    stopped = False
    try:
        await loop.wait()
    except CancelledError:
        stopped = True
        await o.rt.in_thread(unmount, mountpoint)
        await loop.wait()
    finally:
        fs.contents.close()
        reader.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    if loop.error is not None and not stopped:
        raise MountError(path=mountpoint, problem=str(loop.error) or type(loop.error).__name__)
    rep.say(f"lafs-backup: unmounted {mountpoint}")
    return ExitCode.OK
