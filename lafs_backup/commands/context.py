"""What every command is given: the configuration, the reactor, the reporter, and the shared plumbing
(the grid, the gateway, the entry cache and its lock, threads, the record of backups)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import platformdirs

from .. import history
from ..cache import EntryCache
from ..config import Config
from ..errors import ExitCode
from ..grid import ratelimit
from ..grid.gateway import Gateway, make_http_client
from ..history import Backup
from ..report import Operation, Reporter
from ..system.lock import CacheLock

if TYPE_CHECKING:
    from ..grid.local import LocalGrid

APP = "lafs-backup"


def state_dir() -> str:
    return platformdirs.user_state_dir(APP)


def data_dir() -> str:
    return platformdirs.user_data_dir(APP)


def this_host() -> str:
    return socket.gethostname() or "localhost"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def outcome(rep: Reporter) -> int:
    """The exit code of a finished run: damage found, entries skipped, or success."""
    if rep.stats.problems:
        return ExitCode.PROBLEMS
    return ExitCode.PARTIAL if rep.stats.warnings else ExitCode.OK


@dataclass
class Context:
    """Everything a command needs, injected by the CLI (or a test)."""

    config: Config
    reactor: Any
    reporter: Reporter
    #: The running operation, as the manhole shows it.
    op: Operation | None = None
    #: The recovery key as given (--repo: a key, a file, or - for stdin); else LAFS_BACKUP_REPO.
    repo_arg: str | None = None
    _gateway: Gateway | None = None
    _url: str | None = None
    _key: Any = None
    _key_read: bool = False
    _repo: Any = None
    _history: list[Backup] | None = None

    # -- the grid -----------------------------------------------------------------------------
    def grid(self, directory: str | None = None, listen: str | None = None) -> "LocalGrid":
        from ..grid.local import GridSpec, LocalGrid

        g = self.config.grid
        d = directory or g.dir or os.path.join(data_dir(), "grid")
        return LocalGrid(GridSpec(d, g.nodes, g.needed, g.happy, listen=listen))

    def make_gateway(self, url: str, jobs: int | None = None, attempts: int | None = None) -> Gateway:
        op = self.config.operation
        policy = op.retry if attempts is None else dataclasses.replace(op.retry, attempts=attempts)
        j = jobs or op.jobs
        return Gateway(url, make_http_client(self.reactor, j + 2), self.reactor, policy, j,
                       self.config.debug_requests,
                       limit_bytes=ratelimit.make(op.rate_bytes, self.reactor),
                       limit_objects=ratelimit.make(op.rate_objects, self.reactor))

    async def url(self) -> str:
        """The gateway base URL: the configured one; else, when the recovery key says how to reach a
        grid, a gateway node of this machine's that joins it; else the embedded grid."""
        if self._url is None:
            from ..config import gateway_base

            configured = self.config.destination.url
            if configured:
                self._url = gateway_base(configured)
            else:
                key = self.explicit_key()
                if key is not None and key.furl is not None and key.furl != self.grid().furl():
                    self._url = await self.ensure_grid(self.joined_gateway(key))
                else:
                    self._url = await self.ensure_grid(self.grid())
        return self._url

    def joined_gateway(self, key: Any) -> "LocalGrid":
        """This machine's gateway node for the grid a recovery key names (made on first use)."""
        from ..grid.local import GridSpec, LocalGrid

        d = os.path.join(data_dir(), "gateways", hashlib.sha256(key.furl.encode()).hexdigest()[:12])
        g = self.config.grid
        return LocalGrid(GridSpec(d, key.total or g.nodes, key.needed or g.needed, key.happy or g.happy,
                                  join=key.furl))

    async def ensure_grid(self, grid: "LocalGrid") -> str:
        """Start the embedded grid if needed (off the reactor thread) and wait for its servers."""
        from ..grid.local import wait_connected

        try:
            state, started = await self.in_thread(grid.start_processes)
        except BaseException:
            grid.cancel()  # interrupted: stop the thread's subprocess now
            raise
        if started:
            what = "a gateway for the grid of the recovery key" if state.get("join") else "the embedded local grid"
            self.reporter.say(f"lafs-backup: started {what} in {grid.dir}")
        if state.get("url") is None:  # a storage node of a grid made elsewhere: nothing to wait for here
            return ""
        gw = self.make_gateway(state["url"], jobs=2, attempts=1)
        await wait_connected(gw.connected_servers, state["happy"], self.config.grid.start_timeout,
                             self.sleep, self.reactor.seconds)
        return str(state["url"])

    async def sleep(self, seconds: float) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, seconds, lambda: None)

    async def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = self.make_gateway(await self.url())
            if self.op is not None:
                self.op.gateway = self._gateway
        return self._gateway

    def forget_gateway(self) -> None:
        """Find the gateway again on next use (a long-running command whose embedded grid died)."""
        self._url = None
        self._gateway = None

    async def happy(self, gw: Gateway | None = None) -> int:
        """The happiness the grid asks of an upload: ``destination.happy``; the embedded grid's own;
        else, for another gateway, the number of storage servers it is connected to now (Tahoe's
        web API does not tell a client its ``shares.happy``)."""
        configured = self.config.destination.happy
        if configured is not None:
            return int(configured)
        if not self.config.destination.url:
            state = self.grid().load()
            return int(state["happy"]) if state else self.config.grid.happy
        gw = gw or await self.gateway()
        return max(1, len(await gw.connected_servers()))

    # -- the entry cache ----------------------------------------------------------------------
    async def cache_path(self) -> str:
        path = self.config.source.cache_path
        if not path:
            name = "entry-cache.local.sqlite" if not self.config.destination.url else (
                "entry-cache." + hashlib.sha256((await self.url()).encode()).hexdigest()[:12] + ".sqlite")
            path = os.path.join(state_dir(), name)
        return path

    async def cache(self, reader: bool = False) -> EntryCache:
        """The entry cache: a writer (the caller holds :meth:`lock`), or a reader, which works
        while another run writes."""
        url = await self.url()
        s = self.config.source
        return EntryCache(await self.cache_path(), url, s.commit_rows, s.commit_seconds, reader=reader)

    async def lock(self) -> CacheLock:
        """Take the entry cache's lock, waiting up to ``operation.lock_wait`` seconds for a holder."""
        path = await self.cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = CacheLock(path + ".lock", self.reporter)
        await lock.acquire_waiting(self.config.operation.lock_wait, self.reactor)
        return lock

    # -- the repository -------------------------------------------------------------------------
    def explicit_key(self) -> Any:
        """The recovery key given by --repo, LAFS_BACKUP_REPO or ``repository.key_file`` (None: none)."""
        from ..errors import UsageError
        from ..repository import RepoKey

        if self._key_read:
            return self._key
        self._key_read = True
        arg = self.repo_arg or os.environ.get("LAFS_BACKUP_REPO")
        text = None
        if arg:
            self._key = read_key_arg(arg, "--repo / LAFS_BACKUP_REPO")
            return self._key
        elif self.config.repository.key_file and os.path.exists(self.config.repository.key_file):
            text = _read_key(self.config.repository.key_file, "repository.key_file")
        elif self.config.repository.key_file:
            raise UsageError(f"repository.key_file {self.config.repository.key_file} does not exist "
                             "(run 'lafs-backup init', or give the recovery key with --repo)")
        self._key = RepoKey.decode(text) if text else None
        return self._key

    async def key_path(self) -> str:
        """Where this machine keeps its recovery key (mode 0600)."""
        if self.config.repository.key_file:
            return self.config.repository.key_file
        return key_path_for(await self.url() if self.config.destination.url else None)

    async def repo_key(self) -> Any:
        """The recovery key: given, or this machine's own (None: there is no repository yet)."""
        from ..repository import RepoKey

        key = self.explicit_key()
        if key is None:
            path = await self.key_path()
            if os.path.exists(path):
                key = self._key = RepoKey.decode(_read_key(path, path))
        return key

    async def repository(self, create: bool = False) -> Any:
        """The repository (None: none is configured, and ``create`` is False)."""
        from ..repository import Repository

        if self._repo is None:
            key = await self.repo_key()
            if key is not None:
                self._repo = Repository(await self.gateway(), key)
            elif create:
                self._repo = await self.create_repository()
        return self._repo

    async def create_repository(self) -> Any:
        """Make a repository on the grid and keep its key, mode 0600; say where, once."""
        from ..errors import UsageError
        from ..repository import Repository

        path = await self.key_path()
        if os.path.exists(path):
            raise UsageError(f"a repository is already configured (its key is in {path})")
        furl = self.config.repository.introducer_furl
        needed = happy = total = None
        if not self.config.destination.url:
            grid = self.grid()
            state = grid.load() or {}
            furl = furl or grid.furl()
            needed, happy, total = state.get("needed"), state.get("happy"), state.get("nodes")
        repo = await Repository.create(await self.gateway(), furl, needed, happy, total)
        save_key(path, repo.key)
        self._key = repo.key
        self.reporter.say(f"lafs-backup: made a repository on the grid; its recovery key is in {path}. Keep a "
                          "copy of it off this machine ('lafs-backup key' prints it): with it alone a new "
                          "machine lists and restores every backup")
        return repo

    async def backups(self) -> list[Backup]:
        """Every finished backup: those the repository records (every machine's), and this cache's
        own that it does not record yet (read without the lock)."""
        if self._history is not None:
            return self._history
        cache = await self.cache(reader=True)
        try:
            local, checks, copies = cache.backups(), cache.checks(), cache.copies()
        finally:
            cache.close()
        repo = await self.repository()
        if repo is None:
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        from ..repository import Record

        try:
            records: list[Record] = await repo.records()
        except Exception as e:
            from ..errors import GatewayError, GridError

            if not isinstance(e, (GatewayError, GridError)):
                raise
            self.reporter.advise("repository", f"{getattr(e, 'message', e)}; listing this machine's own "
                                               "backups only")
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        self._history = history.merge(local, records, checks, copies)
        return self._history

    # -- which backups a command means ------------------------------------------------------------
    def source_filter(self, source: str | None) -> bytes | None:
        from ..backup.source import is_url

        if source and is_url(source):  # recorded as its label: the URL without credentials or query
            from ..system.remotefs import label_of

            return label_of(source)
        return os.fsencode(os.path.abspath(os.path.expanduser(source))) if source else None

    def snapshot_source(self, source: str | None) -> bytes | None:
        """The source a ``latest`` refers to: the one given, else ``source.path``, else any."""
        return self.source_filter(source or self.config.source.path)

    async def resolve(self, ref: str, source: str | None = None, host: str | None = None,
                      tags: list[str] | None = None) -> str:
        """The cap a SNAPSHOT argument names (a cap needs no record)."""
        if ref.startswith("URI:"):
            return ref
        return history.resolve(await self.backups(), ref, self.snapshot_source(source), host, tags or ()).cap

    def select(self, everything: list[Backup], refs: list[str], source: str | None = None,
               host: str | None = None, tags: list[str] | None = None) -> list[Backup]:
        """Backups named by cap, id, generation number or 'latest'; all of them (of ``source``,
        ``host`` and ``tags``, if given) when ``refs`` is empty."""
        if not refs:
            return history.matching(everything, self.source_filter(source), host, tags or ())
        out: list[Backup] = []
        for ref in refs:
            b = history.resolve(everything, ref, self.snapshot_source(source), host, tags or ())
            if b not in out:
                out.append(b)
        return out

    def warn_expiring(self, backups: list[Backup]) -> None:
        """Warn about kept backups some of whose leases may end within a week."""
        days = self.config.destination.lease_days
        if days is None or not backups:
            return
        soon = history.expiring(backups, time.time(), days)
        if soon:
            first = min(when for _, when in soon)
            gens = ", ".join(str(b.generation) for b, _ in soon[:10]) + (" ..." if len(soon) > 10 else "")
            self.reporter.advise("leases", f"{len(soon)} kept backup(s) (generation {gens}) may lose objects "
                                           f"whose leases end from {iso(first)} on; run 'lafs-backup check' to "
                                           "renew them")

    def warn_copies(self, backups: list[Backup]) -> None:
        """Warn about backups fewer grids hold than ``destination.copies`` asks (copies of another
        grid's backups count as held)."""
        want = self.config.destination.copies
        short = [b for b in backups if b.original is None and 1 + len(b.copies) < want]
        if short:
            gens = ", ".join(str(b.generation) for b in short[:10]) + (" ..." if len(short) > 10 else "")
            self.reporter.advise("copies", f"{len(short)} backup(s) (generation {gens}) are held by fewer than "
                                           f"{want} grids (destination.copies); run 'lafs-backup copy --to-url URL'")

    # -- threads --------------------------------------------------------------------------------
    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work off the reactor thread, so signals, timers and the manhole stay live
        (inline when the injected reactor has no threads, as a test's memory reactor)."""
        from twisted.internet.interfaces import IReactorThreads
        from twisted.internet.threads import deferToThreadPool

        if not IReactorThreads.providedBy(self.reactor):
            return fn(*args)
        return await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn``, called on the reactor thread whoever calls it (a reporter method, from a thread)."""
        from twisted.internet.interfaces import IReactorThreads

        if not IReactorThreads.providedBy(self.reactor):
            return fn

        def call(*args: Any) -> None:
            self.reactor.callFromThread(fn, *args)
        return call


def key_path_for(url: str | None) -> str:
    """Where this machine keeps the recovery key of the repository on the grid behind gateway ``url``
    (None: the embedded grid)."""
    name = "local" if url is None else hashlib.sha256(url.encode()).hexdigest()[:12]
    return os.path.join(state_dir(), "repositories", f"{name}.key")


def save_key(path: str, key: Any) -> None:
    """Keep a recovery key in a new file of mode 0600, synced."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.encode() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_key_arg(arg: str, what: str) -> Any:
    """A recovery key given as the key itself, a file holding it, or - (stdin)."""
    import sys

    from ..repository import KEY_PREFIX, RepoKey

    if arg == "-":
        text = sys.stdin.readline()
    elif arg.strip().startswith(KEY_PREFIX):
        text = arg
    else:
        text = _read_key(arg, what)
    return RepoKey.decode(text)


def _read_key(path: str, what: str) -> str:
    from ..errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            return f.readline()
    except OSError as e:
        raise UsageError(f"cannot read the recovery key from {what} ({path}): {e.strerror}") from None


def backup_json(b: Backup, floors: dict[str, float] | None = None) -> dict[str, Any]:
    """A backup as ``list --json`` and the reports show it."""
    floor = (floors or {}).get(b.id)
    return {"id": b.short_id, "generation": b.generation, "time": iso(b.ts), "timestamp": b.ts,
            "host": b.host, "source": b.source_text, "name": b.name, "cap": b.cap, "tags": list(b.tags),
            "last_check": iso(b.ts_check) if b.ts_check else None,
            "leases_renewed": iso(b.ts_lease) if b.ts_lease else None,
            "leases_end": iso(floor + history.LEASE_DAYS * 86400) if floor is not None else None,
            "copies": list(b.copies), "original": b.original}
