"""The resource opener: from the configuration, it opens what a command works with (the grid and its
gateway, the entry cache under its lock, the repository and its key) and hands each down; the
engine never reaches back into it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from . import history
from .config import Config
from .db.database import move_aside
from .db.local import LocalDB
from .engine.runtime import Runtime
from .grid import ratelimit
from .grid.gateway import Gateway, make_http_client
from .history import Backup
from .protocols import GatewayLike
from .system.lock import CacheLock
from .system.places import data_dir, state_dir

if TYPE_CHECKING:
    from .grid.local import LocalGrid
    from .repository import RepoKey, Repository


@dataclass
class Opener:
    """Opens, once each, the resources a command asks for; the command hands them down."""

    config: Config
    rt: Runtime
    #: The recovery key as given (--repo: a key, a file, or - for stdin); else LAFS_BACKUP_REPO.
    repo_arg: str | None = None
    _gateway: Gateway | None = None
    _url: str | None = None
    _key: RepoKey | None = None
    _key_read: bool = False
    _repo: Repository | None = None
    _history: list[Backup] | None = None
    #: The grids (and gateways) this command started: a read command stops them when it ends.
    started: list["LocalGrid"] = dataclasses.field(default_factory=list)

    # -- the grid -----------------------------------------------------------------------------
    def grid(self, directory: str | None = None, listen: str | None = None) -> "LocalGrid":
        from .grid.local import GridSpec, LocalGrid

        g = self.config.grid
        d = directory or g.dir or os.path.join(data_dir(), "grid")
        return LocalGrid(GridSpec(d, g.nodes, g.needed, g.happy, listen=listen))

    def make_gateway(self, url: str, jobs: int | None = None, attempts: int | None = None) -> Gateway:
        op = self.config.operation
        policy = op.retry if attempts is None else dataclasses.replace(op.retry, attempts=attempts)
        j = jobs or op.jobs
        return Gateway(url, make_http_client(self.rt.reactor, j + 2), self.rt.reactor, policy, j,
                       self.config.debug_requests,
                       limit_bytes=ratelimit.make(op.rate_bytes, self.rt.reactor),
                       limit_objects=ratelimit.make(op.rate_objects, self.rt.reactor))

    async def url(self) -> str:
        """The gateway base URL: the configured one; else, when the recovery key says how to reach a
        grid, a gateway node of this machine's that joins it; else the embedded grid."""
        if self._url is None:
            from .config import gateway_base

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

    def joined_gateway(self, key: RepoKey) -> "LocalGrid":
        """This machine's gateway node for the grid a recovery key names (made on first use)."""
        from .grid.local import GridSpec, LocalGrid

        assert key.furl is not None  # (asked only of a key that names its grid)
        d = os.path.join(data_dir(), "gateways", hashlib.sha256(key.furl.encode()).hexdigest()[:12])
        g = self.config.grid
        return LocalGrid(GridSpec(d, key.total or g.nodes, key.needed or g.needed, key.happy or g.happy,
                                  join=key.furl))

    async def ensure_grid(self, grid: "LocalGrid") -> str:
        """Start the embedded grid if needed (off the reactor thread) and wait for its servers."""
        from .grid.local import wait_connected

        new = grid.load() is None
        try:
            state, started = await self.rt.in_thread(grid.start_processes)
        except BaseException:
            grid.cancel()  # interrupted: stop the thread's subprocess now
            raise
        if started:
            self.started.append(grid)
            if state.get("join"):
                self.rt.reporter.say(f"lafs-backup: started a gateway for the grid of the recovery key in {grid.dir}")
            elif new:
                self.rt.reporter.say(
                    f"lafs-backup: made the embedded local grid in {grid.dir} and started it.  Every share of "
                    "every backup on it is on this machine's own disk: a grid to try the tool with, not to "
                    "survive this disk (the README's 'Moving to a real grid' says how).  "
                    "'lafs-backup grid down' stops it; 'grid up' starts it again")
            else:
                self.rt.reporter.say(f"lafs-backup: started the embedded local grid in {grid.dir} "
                                     "('lafs-backup grid down' stops it)")
        if state.get("url") is None:  # a storage node of a grid made elsewhere: nothing to wait for here
            return ""
        gw = self.make_gateway(state["url"], jobs=2, attempts=1)
        await wait_connected(gw.connected_servers, state["happy"], self.config.grid.start_timeout,
                             self.rt.sleep, self.rt.reactor.seconds)
        return str(state["url"])

    async def stop_started(self) -> list[str]:
        """Stop the grids this command started (a read command's, when it ends); the node names."""
        stopped: list[str] = []
        for grid in self.started:
            stopped += await self.rt.in_thread(grid.stop)
        self.started.clear()
        return stopped

    def keep_started(self) -> None:
        """Leave the grids this command started running (a backup: the next one needs them), and
        say so once per grid."""
        for grid in self.started:
            told = os.path.join(grid.dir, "told-running")
            if os.path.exists(told):
                continue
            self.rt.reporter.say("lafs-backup: the embedded grid keeps running, for the next backup "
                                 "('lafs-backup grid down' stops it; any command starts it again)")
            try:
                with open(told, "w"):
                    pass
            except OSError:
                pass
        self.started.clear()

    async def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = self.make_gateway(await self.url())
            if self.rt.op is not None:
                self.rt.op.gateway = self._gateway
        return self._gateway

    def forget_gateway(self) -> None:
        """Find the gateway again on next use (a long-running command whose embedded grid died)."""
        self._url = None
        self._gateway = None

    async def happy(self, gw: GatewayLike | None = None) -> int:
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

    def forget_backups(self) -> None:
        """List the backups again on next use (a backup was just recorded)."""
        self._history = None

    # -- the entry cache ----------------------------------------------------------------------
    async def cache_path(self) -> str:
        path = self.config.source.cache_path
        if not path:
            name = "entry-cache.local.sqlite" if not self.config.destination.url else (
                "entry-cache." + hashlib.sha256((await self.url()).encode()).hexdigest()[:12] + ".sqlite")
            path = os.path.join(state_dir(), name)
        return path

    async def cache_place(self) -> tuple[str, str | None] | None:
        """Where the entry cache is, and its gateway, found without asking the gateway anything
        (None: there is no cache yet)."""
        from .config import gateway_base

        path = await self.cache_path()
        if not os.path.exists(path):
            return None
        url = self.config.destination.url
        return path, (gateway_base(url) if url else None)

    async def cache(self, reader: bool = False) -> LocalDB:
        """The local database in the entry cache file: a writer (the caller holds :meth:`lock`), or
        a reader, which works while another run writes."""
        url = await self.url()
        s = self.config.source
        return LocalDB(await self.cache_path(), url, s.commit_rows, s.commit_seconds, reader=reader)

    async def lock(self) -> CacheLock:
        """Take the entry cache's lock, waiting up to ``operation.lock_wait`` seconds for a holder."""
        path = await self.cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = CacheLock(path + ".lock", self.rt.reporter)
        await lock.acquire_waiting(self.config.operation.lock_wait, self.rt.reactor)
        return lock

    @contextlib.asynccontextmanager
    async def locked_cache(self, fresh: bool = False) -> AsyncIterator[LocalDB]:
        """The local database (the entry cache file) as its one writer: its lock taken (see
        :meth:`lock`), it opened, and both given back however the block ends (a reactor shutdown
        closes it too).
        ``fresh``: the cache there is moved aside (under the lock) and a new one started."""
        lock = await self.lock()
        try:
            if fresh:
                cpath = await self.cache_path()
                if os.path.exists(cpath):
                    moved = move_aside(cpath)
                    self.rt.reporter.note_once("cache", f"moved the entry cache aside to {moved} (it still lists "
                                                        "the backups recorded before); starting a new one")
            cache = await self.cache()
            shutdown = self.rt.reactor.addSystemEventTrigger("before", "shutdown", cache.close)
            try:
                yield cache
            finally:
                try:
                    self.rt.reactor.removeSystemEventTrigger(shutdown)
                except ValueError:
                    pass  # the reactor is already shutting down (a signal): the trigger ran
                cache.close()
        finally:
            lock.release()

    # -- the repository -------------------------------------------------------------------------
    def explicit_key(self) -> RepoKey | None:
        """The recovery key given by --repo, LAFS_BACKUP_REPO or ``repository.key_file`` (None: none)."""
        from .errors import UsageError
        from .repository import RepoKey

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

    async def repo_key(self) -> RepoKey | None:
        """The recovery key: given, or this machine's own (None: there is no repository yet)."""
        from .repository import RepoKey

        key = self.explicit_key()
        if key is None:
            path = await self.key_path()
            if os.path.exists(path):
                key = self._key = RepoKey.decode(_read_key(path, path))
        return key

    async def repository(self, create: bool = False) -> Repository | None:
        """The repository (None: none is configured, and ``create`` is False)."""
        from .repository import Repository

        if self._repo is None:
            key = await self.repo_key()
            if key is not None:
                self._repo = Repository(await self.gateway(), key)
            elif create:
                self._repo = await self.create_repository()
        return self._repo

    async def other_grid(self, to_url: str, to_repo: str | None = None) -> tuple[str, Gateway, "Repository"]:
        """The grid backups are copied to: its gateway base URL, a gateway to it (answering), and its
        repository (the key given, this machine's for it, or a new one whose key is kept, 0600)."""
        from .config import gateway_base
        from .errors import UsageError
        from .repository import Repository

        dest = gateway_base(to_url)
        if dest == await self.url():
            raise UsageError(f"--to-url {dest} is the grid the backups are on already")
        dst_gw = self.make_gateway(dest)
        await dst_gw.preflight()
        key = read_key_arg(to_repo, "--to-repo") if to_repo else None
        path = key_path_for(dest)
        if key is None and os.path.exists(path):
            key = read_key_arg(path, path)
        if key is None:
            repo = await Repository.create(dst_gw)
            save_key(path, repo.key)
            self.rt.reporter.say(f"lafs-backup: made a repository on {dest}; its recovery key is in {path}. Keep a "
                                 "copy of it off this machine: with it a new machine lists and restores the copies")
        else:
            repo = Repository(dst_gw, key)
        return dest, dst_gw, repo

    async def create_repository(self) -> Repository:
        """Make a repository on the grid and keep its key, mode 0600; say where, once."""
        from .errors import UsageError
        from .repository import Repository

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
        self.rt.reporter.say(f"lafs-backup: made a repository on the grid; its recovery key is in {path}. Keep a "
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
            local, checks, copies = cache.history.backups(), cache.history.checks(), cache.history.copies()
        finally:
            cache.close()
        repo = await self.repository()
        if repo is None:
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        from .repository import Record

        try:
            records: list[Record] = await repo.records()
        except Exception as e:
            from .errors import GatewayError, GridError

            if not isinstance(e, (GatewayError, GridError)):
                raise
            self.rt.reporter.advise("repository", f"{getattr(e, 'message', e)}; listing this machine's own "
                                               "backups only")
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        self._history = history.merge(local, records, checks, copies)
        return self._history

def key_path_for(url: str | None) -> str:
    """Where this machine keeps the recovery key of the repository on the grid behind gateway ``url``
    (None: the embedded grid)."""
    name = "local" if url is None else hashlib.sha256(url.encode()).hexdigest()[:12]
    return os.path.join(state_dir(), "repositories", f"{name}.key")


def save_key(path: str, key: RepoKey) -> None:
    """Keep a recovery key in a new file of mode 0600, synced."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.encode() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_key_arg(arg: str, what: str) -> RepoKey:
    """A recovery key given as the key itself, a file holding it, or - (stdin)."""
    import sys

    from .repository import KEY_PREFIX, RepoKey

    if arg == "-":
        text = sys.stdin.readline()
    elif arg.strip().startswith(KEY_PREFIX):
        text = arg
    else:
        text = _read_key(arg, what)
    return RepoKey.decode(text)


def _read_key(path: str, what: str) -> str:
    from .errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            return f.readline()
    except OSError as e:
        raise UsageError(f"cannot read the recovery key from {what} ({path}): {e.strerror}") from None
