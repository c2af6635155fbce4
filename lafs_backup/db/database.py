"""The local database's sqlite file: opened (created 0600) in WAL mode, its schema made or migrated, its commits
batched into short write transactions, so that several runs write one file side by side."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
import types
from typing import Any, Callable, Concatenate, Iterator, ParamSpec, Protocol, TypeVar

from ..errors import CacheBusyError, CacheError

SCHEMA_VERSION = 11
#: How long to wait for another process's write to finish before calling the cache busy.  Every
#: write transaction is short (one batch of rows), so a wait this long means something is wrong.
BUSY_TIMEOUT_MS = 10000

# Every table, and the schema version (``meta.schema_version``) that added each column.  A file
# of any older version is migrated (``Database._migrate``); a newer one is refused.
#
# meta(key, value)  -- 1
#   schema_version (1); grid (8): the grid the caps belong to, by its id (``system/grids.py``);
#   destination (1, unused since 8): the gateway URL, which named the grid before; synced: the
#   time of the last durable commit.
#
# Held by the object cache (objects.py):
# generations  -- one row per backup run
#   gen, source, started (1): the generation, the source it backs up, when it began
#   base (6): for an incremental backup (``watch``), the generation whose snapshot it builds on.
#       It keeps whole subtrees of that snapshot without looking up their rows, so those rows
#       still carry older generations; cleanup keeps every row a kept backup's base chain may use.
# objects  -- a file-state, content or directory-body key -> the cap the gateway returned
#   key, cap, sha256 (1); generation (1): the newest generation that used the row
#   enc (2): how the stored bytes are encoded (null, "lz4", "xz")
#   pack_offset, pack_length (2): set when the content is a slice of the pack named by ``cap``
#   first_gen (3): the generation that first stored the row.  A row may be used by any backup
#       whose generation lies in [first_gen, generation]; cleanup deletes a row only when no kept
#       backup does.  (Rows older than version 3 got first_gen 1.)  Since 8, with runs of
#       several sources at once: a use widens the range (first_gen only lowers, generation only
#       rises) only while the row still holds the cap that run used, and a row stored again
#       with another cap starts a new range (see objects.py).
# paths (2)  -- key (a hash of source and path), generation: the source paths whose content was
#   ever read, to tell a changed file from a new one
#
# Held by the local history (local_history.py):
# backups  -- the backups this machine made
#   id, generation, cap, source, name, ts, link_dir, link_name, result_file (1); ts_check (1, unused
#       since 5: see checked)
#   host (4): the host name the backup was made on (retention and ``latest`` group by host and
#       source); ts_lease (4, unused since 5)
#   tags (5, JSON list), summary (5, JSON counters); writer, record (5): where the repository
#       records it, null until it does (so the next run records it)
# checked (5)  -- cap, ts_check, ts_lease: the checks of any backup (this machine's or another's,
#   from the repository), by snapshot cap; filled from backups.ts_check and ts_lease on migration
# copies (7)  -- cap, dest, dst, ts: the snapshots copied to another grid (its gateway URL), for
#   ``list``
# runs (9)  -- command, ts, seconds, code, details, ts_ok: the last run of each command that changes
#   state (and of ``verify``): when it ended, how long it took, its exit code, what it found (JSON:
#   check's unhealthy objects, verify's problems), and when a run of it last succeeded; for
#   ``status`` and the metrics file
#
# proofs (10)  -- key, recipe, generation: each derived file's recipe proven by a backup (its rule, its
#   program's hash and the states of its inputs and of itself are the key), so a backup whose files
#   and program did not change since does not run the program again (``proofs.py``)
#
# Held by the copy map (copy_map.py):
# copied (7)  -- dest, src, dst: for ``copy``, each object or directory the destination grid
#   confirmed, by its cap here and there
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    gen INTEGER PRIMARY KEY, source BLOB NOT NULL, started REAL NOT NULL, base INTEGER);
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY, cap TEXT NOT NULL, sha256 BLOB, generation INTEGER NOT NULL,
    enc TEXT, pack_offset INTEGER, pack_length INTEGER, first_gen INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_generation ON objects (generation);
CREATE TABLE IF NOT EXISTS backups (
    id INTEGER PRIMARY KEY, generation INTEGER NOT NULL, cap TEXT NOT NULL,
    source BLOB NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL, ts_check REAL,
    link_dir TEXT, link_name TEXT, result_file TEXT, host TEXT, ts_lease REAL,
    tags TEXT, summary TEXT, writer TEXT, record TEXT, sealed TEXT, sent INTEGER);
CREATE INDEX IF NOT EXISTS backups_generation ON backups (generation);
CREATE TABLE IF NOT EXISTS checked (cap TEXT PRIMARY KEY, ts_check REAL, ts_lease REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paths (key BLOB PRIMARY KEY, generation INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copied (dest TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    PRIMARY KEY (dest, src)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copies (cap TEXT NOT NULL, dest TEXT NOT NULL, dst TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (cap, dest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (command TEXT PRIMARY KEY, ts REAL NOT NULL, seconds REAL, code INTEGER NOT NULL,
    details TEXT, ts_ok REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS proofs (key BLOB PRIMARY KEY, recipe TEXT NOT NULL, generation INTEGER NOT NULL)
    WITHOUT ROWID;
"""


def db_error(path: str, e: Exception) -> CacheError | CacheBusyError:
    """The error for sqlite's ``e``: a full disk or a busy file is not damage, and has another way out."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return CacheBusyError(path=path)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(e):
        return CacheError(path=path, problem=(
            f"{e}: the disk holding it is full. Free some space and run again: sqlite rolled back "
            "the unfinished transaction, so the cache is intact and nothing it recorded is lost"))
    if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
        return CacheError(path=path, problem=f"{e}: the disk holding it failed to read or write")
    return CacheError(path=path, problem=(
        f"{e}. Run 'lafs-backup backup --rebuild-cache' (it moves the file aside and starts a new "
        "cache), or move it aside yourself: content already on the grid is found again through "
        "convergence, and the moved file still lists the old backups"))


def move_aside(path: str, now: Callable[[], float] = time.time) -> str:
    """Rename a cache (and its -wal and -shm files) out of the way; return the new name."""
    dest = f"{path}.moved-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now()))}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, dest + suffix)
    return dest


def move_cache(path: str, dest: str) -> None:
    """Rename a cache (and its -wal and -shm files) to ``dest``.  The caller holds its lock, so no
    run writes it; a reader that has it open reads on through its open files, which stay the same."""
    for suffix in ("-wal", "-shm", ""):  # (the database last: a -wal never waits beside no database)
        if os.path.exists(path + suffix):
            os.replace(path + suffix, dest + suffix)


def owner(path: str) -> tuple[str | None, str | None]:
    """The grid the cache at ``path`` records, and the gateway URL an earlier version recorded
    (each None when absent; both when it cannot be read as a cache).  Reads the file alone, as it
    is (a row still in its -wal is not seen), and leaves nothing beside it (no -wal, no -shm): it
    may be another grid's."""
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro&immutable=1", uri=True)
        try:
            found = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('grid', 'destination')"))
        finally:
            conn.close()
    except sqlite3.Error:
        return None, None
    return found.get("grid"), found.get("destination")


class _OfFile(Protocol):
    """An object of the database file at ``path`` (a guarded class's instance)."""

    path: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(method: Callable[Concatenate[_OfFile, _P], _R]) -> Callable[Concatenate[_OfFile, _P], _R]:
    """Turn sqlite's errors in the middle of a run (a file damaged under us) into :class:`CacheError`."""
    @functools.wraps(method)
    def call(self: _OfFile, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise db_error(self.path, e) from None
    return call


_C = TypeVar("_C", bound=type)


def guarded(cls: _C) -> _C:
    """Class decorator: every public method of ``cls`` (which has a ``path``) raises
    :class:`CacheError` (see :func:`db_error`) for sqlite's errors."""
    for name, fn in list(vars(cls).items()):
        if isinstance(fn, types.FunctionType) and not name.startswith("_"):
            setattr(cls, name, _guarded(fn))
    return cls


@functools.lru_cache(maxsize=256)
def _in_query(template: str, n: int) -> str:
    return template.format(",".join("?" * n))


@guarded
class Database:
    """Open (creating, mode 0600) and migrate the database at ``path``: one connection, which the
    object cache, the local history and the copy map share.

    Raises :class:`CacheError` if the file is not a usable cache, or belongs
    to another grid than ``grid`` (an id, see ``system/grids.py``; None: a
    reader that asks nothing of a gateway).  A writer holds one of the
    cache's locks (see ``system/lock.py``) before it opens it: runs of
    different sources (or copy destinations) write the one file at the same
    time.  A ``reader`` holds none, sees every commit as it lands, and never
    writes (but to create or migrate the file, which no writer of this
    version needs then).

    No transaction stays open between writes: reads see the latest commit,
    and each write is one short ``BEGIN IMMEDIATE`` transaction
    (:meth:`transaction`), which waits up to ``BUSY_TIMEOUT_MS`` for another
    run's to end.  So two runs never fail on each other's snapshot, and
    each reads what the other committed.  Rows are written only after the
    gateway confirmed a cap.  The object cache holds its rows in memory and
    writes them in the next transaction; the uploader commits rows that
    record an upload at once, other rows are batched (``commit_rows`` rows
    or ``commit_seconds`` seconds, whichever first; see :meth:`wrote`).  In
    WAL mode with synchronous=NORMAL a killed process loses no committed
    row, and a power cut may roll back the last commits but never leaves a
    damaged file.  A recorded backup is made durable at once
    (``commit(durable=True)``, a commit at synchronous=FULL).
    """

    def __init__(self, path: str, grid: str | None, commit_rows: int = 500,
                 commit_seconds: float = 2.0, now: Callable[[], float] = time.time,
                 reader: bool = False) -> None:
        self.path = path
        self.reader = reader
        self.now = now
        self._commit_rows = commit_rows
        self._commit_seconds = commit_seconds
        self._dirty = 0
        #: Writes held in memory (the object cache's), made first in each write transaction: see :meth:`on_flush`.
        self._flushes: list[Callable[[], None]] = []
        #: Transactions open (nested ones join the outermost).
        self._depth = 0
        self._last_commit = now()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        try:
            # Create it 0600 before sqlite does: it holds caps.  sqlite gives
            # its -wal and -shm files the same mode.  Only when it does not exist: closing a
            # descriptor of a database this process has open drops the process's locks on it
            # (POSIX locks are per process), and another process's writes then fail or worse.
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            #: The connection (None once closed).  Used in the thread that opened it only.
            self.conn = sqlite3.connect(path, isolation_level=None)
            # Another run's commit holds the file for milliseconds: wait for it rather than fail.
            self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
            self.conn.execute("PRAGMA journal_mode=WAL")
            # (deleted rows' bytes are overwritten: a sealed repository's host lets go of caps it must not keep)
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._check_grid(grid)
            if reader:
                self.conn.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as e:
            raise db_error(path, e)
        except OSError as e:
            raise CacheError(path=path, problem=e.strerror)

    # -- schema ------------------------------------------------------------
    def _migrate(self) -> None:
        db = self.conn
        if self.reader:
            row = db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
            version = row and db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version and int(version[0]) == SCHEMA_VERSION:
                return  # nothing to write
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise CacheError(path=self.path, problem=(
                    f"it has schema version {version}, newer than this lafs-backup ({SCHEMA_VERSION})"))
            if version < 1:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            else:
                if version < 2:
                    for col in ("enc TEXT", "pack_offset INTEGER", "pack_length INTEGER"):
                        db.execute(f"ALTER TABLE objects ADD COLUMN {col}")
                    db.execute("CREATE TABLE IF NOT EXISTS paths (key BLOB PRIMARY KEY, "
                               "generation INTEGER NOT NULL) WITHOUT ROWID")
                if version < 3:
                    # Unknown history: assume every row may be used from generation 1 on (keeps all).
                    db.execute("ALTER TABLE objects ADD COLUMN first_gen INTEGER")
                    db.execute("UPDATE objects SET first_gen = 1")
                if version < 4:
                    db.execute("ALTER TABLE backups ADD COLUMN host TEXT")
                    db.execute("ALTER TABLE backups ADD COLUMN ts_lease REAL")
                if version < 5:
                    for col in ("tags TEXT", "summary TEXT", "writer TEXT", "record TEXT"):
                        db.execute(f"ALTER TABLE backups ADD COLUMN {col}")
                    db.execute("CREATE TABLE IF NOT EXISTS checked (cap TEXT PRIMARY KEY, ts_check REAL, "
                               "ts_lease REAL) WITHOUT ROWID")
                    db.execute("INSERT OR REPLACE INTO checked SELECT cap, MAX(ts_check), MAX(ts_lease) FROM backups "
                               "WHERE ts_check IS NOT NULL GROUP BY cap")
                if version < 6:
                    db.execute("ALTER TABLE generations ADD COLUMN base INTEGER")
                if version < 7:
                    db.execute("CREATE TABLE IF NOT EXISTS copied (dest TEXT NOT NULL, src TEXT NOT NULL, "
                               "dst TEXT NOT NULL, PRIMARY KEY (dest, src)) WITHOUT ROWID")
                    db.execute("CREATE TABLE IF NOT EXISTS copies (cap TEXT NOT NULL, dest TEXT NOT NULL, "
                               "dst TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (cap, dest)) WITHOUT ROWID")
                if version < 9:
                    db.execute("CREATE TABLE IF NOT EXISTS runs (command TEXT PRIMARY KEY, ts REAL NOT NULL, "
                               "seconds REAL, code INTEGER NOT NULL, details TEXT, ts_ok REAL) WITHOUT ROWID")
                if version < 10:
                    db.execute("CREATE TABLE IF NOT EXISTS proofs (key BLOB PRIMARY KEY, recipe TEXT NOT NULL, "
                               "generation INTEGER NOT NULL) WITHOUT ROWID")
                if version < 11:
                    # (a sealed repository's record of a backup, sealed once, and whether the custodian has it)
                    db.execute("ALTER TABLE backups ADD COLUMN sealed TEXT")
                    db.execute("ALTER TABLE backups ADD COLUMN sent INTEGER")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _check_grid(self, grid: str | None) -> None:
        if grid is None:  # a reader that asks nothing of a gateway (backup --dry-run)
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key='grid'").fetchone()
        if row is None and not self.reader:
            # (A file made before version 8 was named by its gateway's URL: the resource opener
            # found it for this grid, see resources/places.py.)
            with self.transaction():
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('grid', ?)", (grid,))
            row = self.conn.execute("SELECT value FROM meta WHERE key='grid'").fetchone()
        if row is not None and row[0] != grid:
            raise CacheError(path=self.path, problem=(
                f"it belongs to the grid {row[0]}, not {grid} (the grid of this gateway); caps from one "
                "grid mean nothing on another. Move it aside (each grid has its own cache)"))

    # -- commits -----------------------------------------------------------
    def on_flush(self, flush: Callable[[], None]) -> None:
        """Have ``flush`` write the rows its owner holds in memory first in each write
        transaction, so that they land with it."""
        self._flushes.append(flush)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: it waits for another run's to end), which
        starts by writing the rows held in memory, and commits when the block ends (rolls back
        if it raises).  Nested, it joins the one open.  Yields the connection."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            for flush in self._flushes:
                flush()
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # (sqlite may have rolled it back already)
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def rows_in(self, template: str, keys: list[Any], batch: int) -> list[tuple[Any, ...]]:
        """The rows of ``template`` (a query whose ``IN ({})`` takes the keys) for ``keys``: one query
        per ``batch`` keys (sqlite before 3.32 takes 999 parameters at most), which sqlite walks in
        order inside one statement, at about half the cost per key of one query each."""
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), batch):
            chunk = keys[i:i + batch]
            rows.extend(self.conn.execute(_in_query(template, len(chunk)), chunk))
        return rows

    def wrote(self) -> None:
        """One more row held: commit when the batch is full (rows or seconds, whichever first)."""
        self._dirty += 1
        if (self._commit_rows > 0 and self._dirty >= self._commit_rows) or (
                self._commit_seconds > 0 and self.now() - self._last_commit >= self._commit_seconds):
            self.commit()

    def commit(self, durable: bool = False) -> None:
        """Write the rows held in memory, in one transaction; ``durable``: also sync, so that the
        commit survives a power cut."""
        with self.transaction():
            pass
        if durable:
            # One small transaction at synchronous=FULL syncs the write-ahead
            # log, and with it every commit before it.
            self.conn.execute("PRAGMA synchronous=FULL")
            try:
                with self.transaction():
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('synced', ?)", (repr(self.now()),))
            finally:
                self.conn.execute("PRAGMA synchronous=NORMAL")
        self._dirty = 0
        self._last_commit = self.now()

    def close(self) -> None:
        """Commit and close; safe to call twice (a signal's shutdown trigger, then the normal path)."""
        if self.conn is None:
            return
        if not self.reader and not self._depth:
            try:
                self.commit()
            except (sqlite3.Error, CacheError, CacheBusyError):
                pass
        self.conn.close()
        self.conn = None  # type: ignore[assignment]
