"""The resource opener: from the configuration, it opens what a command works with (the grid and its
gateway, the entry cache under its lock, the repository and its key) and hands each down; the
engine never reaches back into it.

The entry cache and the recovery key are one per grid, named by the grid's id
(``system/grids.py``), not by the gateway's URL: any URL or port of a grid's
gateway finds them, and a command on another grid never opens them.  Those
named by URL before (and ``source.entry_cache.path`` itself, which now names a
directory or a prefix) are moved to their grid's name on first use."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from . import history
from .config import Config
from .db.database import move_aside, move_cache, owner
from .db.local import LocalDB
from .engine.runtime import Runtime
from .errors import GridError
from .grid import ratelimit
from .grid.gateway import Gateway, make_http_client
from .history import Backup
from .protocols import GatewayLike
from .system import grids
from .system.lock import CacheLock
from .system.places import data_dir, state_dir

if TYPE_CHECKING:
    from .grid.local import LocalGrid
    from .report import Reporter
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
    _grid_id: str | None = None
    _cache_path: str | None = None
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

    # -- which grid --------------------------------------------------------------------------
    async def grid_id(self) -> str:
        """The id of the grid this command's gateway is on (see ``system/grids.py``), asked of the
        gateway once.  Raises :class:`GridError` if it cannot tell."""
        if self._grid_id is None:
            self._grid_id = await self.identify(await self.gateway())
        return self._grid_id

    async def identify(self, gw: Gateway) -> str:
        """The id of the grid behind ``gw``, from the storage servers it knows (``GET /?t=json``),
        recorded in this machine's registry of grids."""
        info = await gw.welcome()
        servers = [str(s["nodeid"]) for s in (info.get("servers") or []) if isinstance(s, dict) and s.get("nodeid")]
        try:
            grid = await self.rt.in_thread(grids.record, registry_path(), servers, gw.base)
        except ValueError:
            raise GridError(problem=f"the gateway at {gw.base} knows no storage server yet, so which grid it is "
                                    "on (and which entry cache is its) cannot be told; run again once it is "
                                    "connected") from None
        return grid.id

    def known_grid(self) -> str | None:
        """The grid this command's gateway URL led to last time, found without asking the gateway
        anything (None: not known)."""
        from .config import gateway_base

        if self._grid_id is not None:
            return self._grid_id
        url = self.config.destination.url
        if url:
            url = gateway_base(url)
        else:
            state = self.grid().load()
            url = state.get("url") if state else None
        if not url:
            return None
        found = grids.by_url(grids.load(registry_path()), url)
        return found.id if found is not None else None

    # -- the entry cache ----------------------------------------------------------------------
    async def cache_path(self) -> str:
        """The entry cache of this command's grid (see :func:`cache_file`); a cache of this grid
        named before caches were named by grid is moved there first."""
        if self._cache_path is None:
            gid = await self.grid_id()
            path = cache_file(self.config.source.cache_path, gid)
            if not os.path.exists(path):
                await self._adopt_cache(path, gid)
            self._cache_path = path
        return self._cache_path

    async def _adopt_cache(self, path: str, gid: str) -> None:
        """Move the cache of grid ``gid`` made before caches were named by grid to ``path``
        (with its files beside it), if there is one: the file ``source.entry_cache.path`` named
        (if it was used with this gateway URL), or the one named by this gateway's URL (or the
        embedded grid's).  Under the old file's lock, so that no run writes it meanwhile."""
        url = await self.url()
        for old, by_name in self._legacy_caches(url):
            if not os.path.isfile(old):
                continue
            grid, used_with = await self.rt.in_thread(owner, old)
            if not (grid == gid or (grid is None and (by_name or used_with == url))):
                continue  # another grid's (or one this URL never used)
            lock = CacheLock(old + ".lock", self.rt.reporter)
            await lock.acquire_waiting(self.config.operation.lock_wait, self.rt.reactor)
            try:
                if os.path.exists(path) or not os.path.isfile(old):
                    return  # another command moved it meanwhile
                os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
                move_cache(old, path)
                for trees in glob.glob(glob.escape(old) + ".trees.*"):
                    os.replace(trees, path + trees[len(old):])
            finally:
                lock.release()
            self.rt.reporter.note_once("cache-moved", f"the entry cache {old} is now {path}: each grid has its "
                                                      "own cache, named by the grid rather than the gateway's URL")
            return

    def _legacy_caches(self, url: str) -> list[tuple[str, bool]]:
        """The caches an earlier version may have made for this gateway: each path, and whether its
        name says it is this gateway's (else the URL it was used with must)."""
        out = []
        configured = self.config.source.cache_path
        if configured:
            out.append((configured, False))
        name = ("entry-cache." + hashlib.sha256(url.encode()).hexdigest()[:12] + ".sqlite"
                if self.config.destination.url else "entry-cache.local.sqlite")
        out.append((os.path.join(state_dir(), name), True))
        return out

    async def cache_place(self) -> tuple[str, str | None] | None:
        """Where the entry cache is, and its grid, found without asking the gateway anything
        (None: the grid is not known, or it has no cache yet)."""
        gid = self.known_grid()
        if gid is None:
            return None
        path = cache_file(self.config.source.cache_path, gid)
        return (path, gid) if os.path.exists(path) else None

    def known_cache_path(self) -> str | None:
        """Where the entry cache of the grid this gateway URL led to last time is (or would be),
        found without asking the gateway anything (None: the grid is not known)."""
        gid = self.known_grid()
        return cache_file(self.config.source.cache_path, gid) if gid is not None else None

    async def cache(self, reader: bool = False) -> LocalDB:
        """The local database in the entry cache file: a writer (the caller holds :meth:`lock`), or
        a reader, which works while runs write."""
        s = self.config.source
        return LocalDB(await self.cache_path(), await self.grid_id(), s.commit_rows, s.commit_seconds,
                       reader=reader)

    async def lock(self, scope: str | None = None) -> CacheLock:
        """Take the entry cache's lock, waiting up to ``operation.lock_wait`` seconds for a holder:
        with ``scope`` (``system.lock.source_scope``, ``copy_scope``), the scope's alone, beside
        runs of other scopes; without, the whole cache's (no other run at all)."""
        path = await self.cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        lock = CacheLock(path + ".lock", self.rt.reporter, scope)
        await lock.acquire_waiting(self.config.operation.lock_wait, self.rt.reactor)
        return lock

    @contextlib.asynccontextmanager
    async def locked_cache(self, fresh: bool = False, scope: str | None = None) -> AsyncIterator[LocalDB]:
        """The local database (the entry cache file) as a writer: its lock taken (see :meth:`lock`;
        ``scope``: the run's own), it opened, and both given back however the block ends (a
        reactor shutdown closes it too).
        ``fresh``: the cache there is moved aside (under the whole cache's lock, whatever
        ``scope`` says) and a new one started."""
        lock = await self.lock(None if fresh else scope)
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
        """Where this machine keeps the recovery key of the repository on this grid (mode 0600):
        named by the grid (known from an earlier command if it is, so that printing the key needs
        no gateway); one named by this gateway's URL before is moved there."""
        if self.config.repository.key_file:
            return self.config.repository.key_file
        gid = self.known_grid() or await self.grid_id()
        legacy = (hashlib.sha256((await self.url()).encode()).hexdigest()[:12] if self.config.destination.url
                  else "local")
        return adopt_key(key_path_for(gid), key_path_for(legacy), self.rt.reporter)

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
            if key is None and create:
                # Runs of other sources may start their first backup on this grid at the same time:
                # one makes the repository, the others then find its key.
                kpath = await self.key_path()
                os.makedirs(os.path.dirname(os.path.abspath(kpath)), mode=0o700, exist_ok=True)
                lock = CacheLock(kpath + ".lock", self.rt.reporter)
                await lock.acquire_waiting(max(self.config.operation.lock_wait, KEY_LOCK_WAIT), self.rt.reactor)
                try:
                    key = await self.repo_key()
                    if key is None:
                        self._repo = await self.create_repository()
                finally:
                    lock.release()
            if key is not None:
                self._repo = Repository(await self.gateway(), key)
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
        dst_grid = await self.identify(dst_gw)
        if dst_grid == await self.grid_id():
            raise UsageError(f"--to-url {dest} is the grid the backups are on already (another gateway of it)")
        key = read_key_arg(to_repo, "--to-repo") if to_repo else None
        path = adopt_key(key_path_for(dst_grid), key_path_for(hashlib.sha256(dest.encode()).hexdigest()[:12]),
                         self.rt.reporter)
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
        local: list[Backup] = []
        checks: dict[str, tuple[float | None, float | None]] = {}
        copies: dict[str, list[str]] = {}
        if os.path.exists(await self.cache_path()):  # (a reader makes no cache: this grid has none yet)
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

#: Seconds a run waits for another that is making the repository on this grid (a few requests).
KEY_LOCK_WAIT = 300.0


def registry_path() -> str:
    """This machine's registry of grids (``system/grids.py``)."""
    return os.path.join(state_dir(), "grids.json")


def cache_file(configured: str | None, grid: str) -> str:
    """The entry cache of ``grid``: ``entry-cache.<grid>.sqlite`` in the state directory, or in the
    directory ``source.entry_cache.path`` names (one that exists, or a path ending in ``/``); any
    other path is a prefix: ``/x/cache.sqlite`` gives ``/x/cache.<grid>.sqlite``."""
    name = f"entry-cache.{grid}.sqlite"
    if not configured:
        return os.path.join(state_dir(), name)
    if configured.endswith(os.sep) or os.path.isdir(configured):
        return os.path.join(configured, name)
    stem, ext = os.path.splitext(configured)
    return f"{stem}.{grid}{ext or '.sqlite'}"


def key_path_for(name: str) -> str:
    """Where this machine keeps the recovery key of the repository on grid ``name`` (an id of
    ``system/grids.py``; before, a digest of the gateway's URL, or ``local`` for the embedded grid)."""
    return os.path.join(state_dir(), "repositories", f"{name}.key")


def adopt_key(path: str, legacy: str, reporter: "Reporter") -> str:
    """``path``, the grid's key file; the key file named the earlier way (``legacy``) is moved there
    first if the grid has none (never replacing one).  Returns ``path``."""
    if os.path.exists(path) or not os.path.exists(legacy):
        return path
    try:
        os.link(legacy, path)  # (fails if another command made one meanwhile)
    except FileExistsError:
        return path
    except OSError:
        return legacy  # (a file system without links: leave it where it is)
    os.unlink(legacy)
    reporter.note_once("key-moved", f"the recovery key {legacy} is now {path}: keys are named by the grid, "
                                    "not the gateway's URL")
    return path


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
