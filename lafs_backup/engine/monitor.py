"""Around each command that changes state: the ``notify.url`` ping when it starts, and when it ends (or a round
of ``watch`` does) its run recorded in the local history, the metrics file written from that history (no grid
request), and the success or failure ping.  Nothing here fails a command: a problem is a warning."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from ..config import Config, MonitorConfig
from ..errors import CacheError, LafsBackupError
from ..history import Run
from ..log import redact
from ..report import Reporter
from ..system.places import state_dir, this_host

if TYPE_CHECKING:
    from ..grid.notify import Notifier
    from ..protocols import Reactor

log = logging.getLogger(__name__)

#: The commands that change state: each records its last run and writes the metrics file.  ``verify``
#: changes nothing, but its result is recorded (``status`` shows it) and so in the metrics too.
RECORDED = frozenset({"backup", "watch", "copy", "check", "cleanup", "rewrite", "tag", "init", "verify"})
#: The metrics file's name in the state directory, unless ``metrics.textfile`` names another.
METRICS_FILE = "lafs-backup.prom"


def metrics_path(conf: MonitorConfig) -> str:
    return conf.textfile or os.path.join(state_dir(), METRICS_FILE)


def write_metrics(path: str, text: str) -> None:
    """Replace the file at ``path`` with ``text`` at once (a temp file renamed over it, which the
    textfile collector, reading ``*.prom`` alone, never sees half written); mode 0644: it holds
    counts and times, no cap, no path of the grid, and node_exporter runs as another user."""
    from ..system.paths import replacing

    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with replacing(path) as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(text)


class Monitor:
    """The monitoring of one run of ``command`` (see the module docstring).  ``cache_path()`` says where
    the entry cache of the command's grid is (None: not known, nothing is recorded); ``notifier``
    pings ``notify.url`` (None: not configured, or not for this command); ``now`` is the wall clock."""

    def __init__(self, command: str, conf: MonitorConfig, lease_days: float | None, reactor: Reactor,
                 reporter: Reporter, cache_path: Callable[[], str | None], notifier: Notifier | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.command = command
        self.conf = conf
        self.lease_days = lease_days
        self.reactor = reactor
        self.rep = reporter
        self.cache_path = cache_path
        self.notifier = notifier
        self.now = now
        self._started = now()
        self._round_started = self._started

    @classmethod
    def of(cls, config: Config, command: str, reactor: Reactor, reporter: Reporter,
           cache_path: Callable[[], str | None]) -> "Monitor | None":
        """The monitor of a run of ``command`` (None: it changes no state)."""
        if command not in RECORDED:
            return None
        conf = config.monitor
        notifier = None
        if conf.notify_url and command in conf.notify_commands:
            from ..grid.notify import Notifier, make_client

            notifier = Notifier(conf.notify_url, make_client(reactor), reactor, conf.notify_timeout)
        return cls(command, conf, config.destination.lease_days, reactor, reporter, cache_path, notifier)

    async def started(self) -> None:
        """The run starts: ping ``URL/start``."""
        await self._ping("start", f"lafs-backup {self.command} started on {this_host()}")

    async def round_done(self) -> None:
        """A round of ``watch`` recorded a snapshot: record it as a run that succeeded, write the
        metrics, and ping ``URL`` (each round is a heartbeat)."""
        now = self.now()
        seconds, self._round_started = now - self._round_started, now
        await self._record(Run(self.command, now, round(seconds, 3), 0, {"round": True}))
        await self._ping("success", f"lafs-backup {self.command} on {this_host()}: a round recorded a snapshot "
                                    f"in {seconds:.1f}s")

    async def ended(self, code: int, error: str | None = None) -> None:
        """The run ended with exit ``code`` (``error``: the message it ended with): record it, write the
        metrics, and ping ``URL`` (exit 0 or 1) or ``URL/fail``."""
        now = self.now()
        seconds = now - self._started
        details = dict(self.rep.found)
        if error is not None:
            details["error"] = redact(error)[:500]
        run = Run(self.command, now, round(seconds, 3), code, details)
        await self._record(run)
        text = f"lafs-backup {self.command} on {this_host()}: exit code {code} after {seconds:.1f}s"
        if error is not None:
            text += f"\n{details['error']}"
        if self.rep.stats.warnings:
            text += f"\n{self.rep.stats.warnings} warning(s)"
        await self._ping("success" if run.ok else "fail", text)

    async def _ping(self, event: str, body: str) -> None:
        if self.notifier is None:
            return
        problem = await self.notifier.ping(event, body)
        if problem is not None:
            self.rep.advise("notify", f"{problem} (notify.url); the {self.command} itself is not affected")

    async def _record(self, run: Run) -> None:
        """Record ``run`` in the local history and write the metrics file from it, off the reactor thread."""
        path = self.cache_path()
        if path is None or not os.path.exists(path):
            return  # no grid reached yet, so no history to record in
        from .runtime import Runtime

        target = metrics_path(self.conf) if self.conf.metrics else None
        try:
            await Runtime(self.reactor, self.rep).in_thread(self._record_now, path, run, target)
        except CacheError:
            # (its advice is the command's own error's to give: on a full disk, sqlite may fail to
            # open the file at all, which reads like damage, and moving the cache aside would be wrong)
            self.rep.advise("metrics", f"the run of {self.command} was not recorded for status and metrics: "
                                       "its entry cache could not be written")
        except (LafsBackupError, OSError) as e:
            why = e.message if isinstance(e, LafsBackupError) else f"{e.strerror or e}"
            self.rep.advise("metrics", f"the run of {self.command} was not recorded for status and metrics: {why}")

    def _record_now(self, path: str, run: Run, target: str | None) -> None:
        from ..db.local import LocalDB
        from .metrics import render

        # A writer without the cache's lock: the one short transaction sqlite keeps apart from any
        # run's, and the rows it writes are this table's alone.
        cache = LocalDB(path, None)
        try:
            cache.history.record_run(run)
            if target is not None:
                text = render(cache.history.backups(), cache.history.runs(), self.now(), self.lease_days)
        finally:
            cache.close()
        if target is not None:
            write_metrics(target, text)
            log.debug("metrics written to %s", target)
