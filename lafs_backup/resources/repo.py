"""The recovery key (given by --repo, LAFS_BACKUP_REPO or ``repository.key_file``, else this machine's
own for the grid) and the repository it opens, made on first use; the repository of the grid backups
are copied to; and the backups the repository and the entry cache list."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING, Awaitable, Callable

from .. import history
from ..config import Config
from ..engine.runtime import Runtime
from ..grid.gateway import Gateway
from ..history import Backup
from ..system.lock import CacheLock
from .cache import EntryCache
from .nodes import Gateways, Nodes
from .places import GridPlaces, adopt_key, key_path_for

if TYPE_CHECKING:
    from ..repository import RepoKey, Repository

#: Seconds a run waits for another that is making the repository on this grid (a few requests).
KEY_LOCK_WAIT = 300.0


@dataclasses.dataclass(frozen=True)
class Sealed:
    """A sealed repository to make (``init --sealed``): where its recovery key and its custodian's key
    are written, each once, to a new file of mode 0600 that the user moves off the machine."""

    recovery_key: str
    custodian_key: str
    #: Makes the custodian's inbox, its own directory and the owner's, and writes its key file (gateway, the
    #: repository's whole key, the key file's path, the introducer's FURL); returns the read cap of its own
    #: directory and the write cap of the owner's (``engine.inbox.create_custodian``).
    make_custodian: Callable[[Gateway, "RepoKey", str, str | None], Awaitable[tuple[str, str]]]

    def check(self) -> None:
        """Raise :class:`UsageError` before anything is made when a file is there already, or the two are one."""
        from ..errors import UsageError

        if os.path.abspath(self.recovery_key) == os.path.abspath(self.custodian_key):
            raise UsageError("the recovery key and the custodian's key go to two files")
        for path in (self.recovery_key, self.custodian_key):
            if os.path.exists(path):
                raise UsageError(f"{path} exists: a key is written to a new file only")
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise UsageError(f"{parent} is not a directory: cannot write {path}")


class Repositories:
    """The recovery key and the repository on this command's grid (each read or made once), the
    repository on a grid copied to, and the backups listed (once, until a backup is recorded)."""

    def __init__(self, config: Config, rt: Runtime, repo_arg: str | None, gateways: Gateways, nodes: Nodes,
                 places: GridPlaces, cache: EntryCache) -> None:
        self.config = config
        self.rt = rt
        #: The recovery key as given (--repo: a key, a file, or - for stdin); else LAFS_BACKUP_REPO.
        self.repo_arg = repo_arg
        self._gateways = gateways
        self._nodes = nodes
        self._places = places
        self._cache = cache
        self._key: RepoKey | None = None
        self._key_read = False
        self._repo: Repository | None = None
        self._history: list[Backup] | None = None
        #: How many of a sealed repository's records the key could not open, and this machine did not make.
        self.unopened = 0

    def explicit_key(self) -> RepoKey | None:
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

    async def repo_key(self) -> RepoKey | None:
        """The recovery key: given, or this machine's own (None: there is no repository yet)."""
        from ..repository import RepoKey

        key = self.explicit_key()
        if key is None:
            path = await self._places.key_path()
            if os.path.exists(path):
                key = self._key = RepoKey.decode(_read_key(path, path))
        return key

    async def repository(self, create: bool = False) -> Repository | None:
        """The repository (None: none is configured, and ``create`` is False)."""
        from ..repository import Repository

        if self._repo is None:
            key = await self.repo_key()
            if key is None and create:
                # Runs of other sources may start their first backup on this grid at the same time:
                # one makes the repository, the others then find its key.
                kpath = await self._places.key_path()
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
                self._repo = Repository(await self._gateways.gateway(), key)
        return self._repo

    async def other_grid(self, to_url: str, to_repo: str | None = None) -> tuple[str, Gateway, "Repository"]:
        """The grid backups are copied to: its gateway base URL, a gateway to it (answering), and its
        repository (the key given, this machine's for it, or a new one whose key is kept, 0600)."""
        from ..config import gateway_base
        from ..errors import UsageError
        from ..repository import Repository

        dest = gateway_base(to_url)
        own = await self.repo_key()
        if own is not None and own.sealed:
            raise UsageError("copying a sealed repository's backups to another grid is not supported: the copies "
                             "would be recorded there in the clear")
        if dest == await self._gateways.url():
            raise UsageError(f"--to-url {dest} is the grid the backups are on already")
        dst_gw = self._gateways.make_gateway(dest)
        await dst_gw.preflight()
        dst_grid = await self._places.identify(dst_gw)
        if dst_grid == await self._places.grid_id():
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

    async def create_repository(self, sealed: Sealed | None = None) -> Repository:
        """Make a repository on the grid and keep its key, mode 0600; say where, once.  ``sealed``: its
        records are sealed, and the recovery key goes to a file of its own (see :class:`Sealed`)."""
        from ..errors import UsageError
        from ..repository import Repository
        from ..sealing import OpenKey

        if not self._key_read and not (self.repo_arg or os.environ.get("LAFS_BACKUP_REPO")):
            # (no key is given: a repository.key_file that does not exist yet is where this one's goes)
            self._key_read, self._key = True, None
        path = await self._places.key_path()
        if os.path.exists(path):
            raise UsageError(f"a repository is already configured (its key is in {path}; a repository beside it "
                             "keeps its key in another file: -o repository.key_file=FILE)")
        if sealed is not None:
            sealed.check()
        furl = self.config.repository.introducer_furl
        needed = happy = total = None
        if not self.config.destination.url:
            grid = self._nodes.grid()
            state = grid.load() or {}
            furl = furl or grid.furl()
            needed, happy, total = state.get("needed"), state.get("happy"), state.get("nodes")
        gw = await self._gateways.gateway()
        repo = await Repository.create(gw, furl, needed, happy, total, OpenKey.generate() if sealed else None)
        if sealed is None:
            save_key(path, repo.key)
            self._key = repo.key
            self.rt.reporter.say(f"lafs-backup: made a repository on the grid; its recovery key is in {path}. Keep a "
                                 "copy of it off this machine ('lafs-backup key' prints it): with it alone a new "
                                 "machine lists and restores every backup")
            return repo
        # The custodian first: the recovery key carries the read cap of its directory and the write cap of
        # the owner's (where it cancels forget requests).
        own, owner = await sealed.make_custodian(gw, repo.key, sealed.custodian_key, furl)
        recovery = dataclasses.replace(repo.key, custodian=own, owner=owner)
        save_key(sealed.recovery_key, recovery)
        host = repo.key.host_key()
        save_key(path, host)
        self._key = host
        del recovery, own, owner
        self.rt.reporter.say(
            f"lafs-backup: made a sealed repository on the grid.\n"
            f"  Its recovery key is in {sealed.recovery_key}: MOVE IT OFF THIS MACHINE NOW (to a USB stick, a "
            "password manager, paper), then delete it here. This machine will never show it again: it keeps "
            "only the public half, which seals each backup's record and opens none. With the recovery key a "
            "new machine lists and restores every backup; without it, this machine reads only its newest "
            f"backup (repository.window).\n"
            f"  The custodian's key is in {sealed.custodian_key}: move it to the machine or account that runs "
            "'lafs-backup custodian run', then delete it here.")
        return Repository(gw, host)

    async def backups(self) -> list[Backup]:
        """Every finished backup: those the repository records (every machine's), and this cache's
        own that it does not record yet (read without the lock)."""
        if self._history is not None:
            return self._history
        local: list[Backup] = []
        checks: dict[str, tuple[float | None, float | None]] = {}
        copies: dict[str, list[str]] = {}
        if os.path.exists(await self._places.cache_path()):  # (a reader makes no cache: this grid has none yet)
            cache = await self._cache.open(reader=True)
            try:
                local, checks, copies = cache.history.backups(), cache.history.checks(), cache.history.copies()
            finally:
                cache.close()
        repo = await self.repository()
        if repo is None:
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        from ..repository import Listing, retagged

        try:
            found: Listing = await repo.listing()
        except Exception as e:
            from ..errors import GatewayError, GridError

            if not isinstance(e, (GatewayError, GridError)):
                raise
            self.rt.reporter.advise("repository", f"{getattr(e, 'message', e)}; listing this machine's own "
                                               "backups only")
            return [dataclasses.replace(b, copies=tuple(copies.get(b.cap, ()))) for b in local]
        records = retagged(found.records, found.changes)
        self._history = history.merge(local, records, checks, copies, found.unopened)
        mine = {(b.writer, b.record) for b in local}
        self.unopened = sum(1 for place in found.unopened if place not in mine)
        return self._history

    def forget_backups(self) -> None:
        """List the backups again on next use (a backup was just recorded)."""
        self._history = None


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

    from ..repository import RepoKey

    if arg == "-":
        text = sys.stdin.readline()
    elif arg.strip().startswith("lafs-backup-key-"):  # (any version: decoded, never named as a path)
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
        # (what was given may be a key mistyped, or pasted whole: named only when it is plainly a path)
        shown = f" ({path})" if len(path) < 256 and ":" not in path and "key-" not in path else ""
        raise UsageError(f"cannot read the recovery key from {what}{shown}: {e.strerror}") from None
