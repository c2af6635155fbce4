"""The entry cache: sqlite record of uploaded objects, generations and finished backups.

This is the only module that talks to sqlite.  Schema history (``meta.schema_version``):

* 1: ``meta``; ``generations(gen, source, started)``; ``objects(key, cap, sha256,
  generation)`` mapping a file-state, content or directory-body key to the
  cap the gateway returned; ``backups(id, generation, cap, source, name, ts,
  ts_check, link_dir, link_name, result_file)``.
* 2: ``objects.enc`` (how the stored bytes are encoded: null, "lz4", "xz"),
  ``objects.pack_offset`` and ``objects.pack_length`` (set when the content
  is a slice of the pack named by ``cap``); ``paths(key, generation)``, the
  source paths whose content was ever read, to tell a changed file from a
  new one.
* 3: ``objects.first_gen``, the generation that first stored the row.  A row
  may be used by any backup whose generation lies in ``[first_gen,
  generation]``; cleanup deletes a row only when no kept backup does.
* 4: ``backups.host`` (the host name the backup was made on; retention and
  ``latest`` group by host and source) and ``backups.ts_lease``, the time
  of the last check that renewed the leases of every object of the backup.
* 5: ``backups.tags`` (JSON list), ``backups.summary`` (JSON counters),
  ``backups.writer`` and ``backups.record`` (where the repository records it;
  null until it does, so the next run records it); ``checked(cap, ts_check,
  ts_lease)``, the checks of any backup (this machine's or another's, from
  the repository), by snapshot cap, replacing the backups columns.
* 6: ``generations.base``: for an incremental backup (``watch``), the
  generation whose snapshot it builds on.  It keeps whole subtrees of that
  snapshot without looking up their rows, so those rows still carry older
  generations; cleanup keeps every row a kept backup's base chain may use.
* 7: ``copied(dest, src, dst)``: for ``copy``, each object or directory the
  destination grid (its gateway URL) confirmed, by its cap here and there;
  ``copies(cap, dest, dst, ts)``: the snapshots copied, for ``list``.

Rows are written only after the gateway confirmed a cap.  The uploader
commits rows that record an upload at once; other writes are batched (rows or
seconds, whichever first).  In WAL mode with synchronous=NORMAL a killed
process loses no committed row, and a power cut may roll back the last
commits but never leaves a damaged file.  A recorded backup is made durable
at once (a commit at synchronous=FULL).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
import types
from typing import Any, Callable

from .errors import CacheBusyError, CacheError
from .history import Backup
from .store.snapshot import Hit

SCHEMA_VERSION = 7
#: How long to wait for another process's write to finish before calling the cache busy.
BUSY_TIMEOUT_MS = 10000
#: Keys asked for in one query by :meth:`EntryCache.lookup_many` (sqlite before 3.32 takes 999
#: parameters at most).
LOOKUP_BATCH = 500
#: Rows marked as used, held until they are written together (their keys: about 7 MB at most).
BUMP_BATCH = 100000

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
    tags TEXT, summary TEXT, writer TEXT, record TEXT);
CREATE INDEX IF NOT EXISTS backups_generation ON backups (generation);
CREATE TABLE IF NOT EXISTS checked (cap TEXT PRIMARY KEY, ts_check REAL, ts_lease REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paths (key BLOB PRIMARY KEY, generation INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copied (dest TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    PRIMARY KEY (dest, src)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copies (cap TEXT NOT NULL, dest TEXT NOT NULL, dst TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (cap, dest)) WITHOUT ROWID;
"""


@functools.lru_cache(maxsize=64)
def _select_many(n: int) -> str:
    return ("SELECT key, cap, sha256, generation, enc, pack_offset, pack_length FROM objects WHERE key IN "
            f"({','.join('?' * n)})")


def db_error(path: str, e: Exception) -> CacheError:
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


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn sqlite's errors in the middle of a run (a file damaged under us) into :class:`CacheError`."""
    @functools.wraps(method)
    def call(self: "EntryCache", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise db_error(self.path, e) from None
    return call


class EntryCache:
    """Open (creating, mode 0600) and migrate the cache at ``path``.

    Raises :class:`CacheError` if the file is not a usable cache, or was
    used with another gateway than ``destination``.  A writer holds the
    cache's lock (see ``lock.py``) before it opens it; a ``reader`` does not,
    sees every commit as it lands, and never writes (but to create or
    migrate the file, which no writer of this version needs then).
    """

    def __init__(self, path: str, destination: str | None, commit_rows: int = 500,
                 commit_seconds: float = 2.0, now: Callable[[], float] = time.time,
                 reader: bool = False) -> None:
        self.path = path
        self.reader = reader
        self._now = now
        self._commit_rows = commit_rows
        self._commit_seconds = commit_seconds
        self._dirty = 0
        #: Keys of rows looked up by generation ``_bump_gen``, to be marked as used by it.
        self._bumps: list[bytes] = []
        self._bump_gen = 0
        # Rows stored but not yet written to the file (see _flush_writes): key -> row.
        self._new_objects: dict[bytes, tuple[Any, ...]] = {}
        self._new_paths: dict[bytes, int] = {}
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
            self._db = sqlite3.connect(path, isolation_level=None)
            # A writer's commit holds the file for milliseconds: wait for it rather than fail.
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._check_destination(destination)
            if reader:
                self._db.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as e:
            raise db_error(path, e)
        except OSError as e:
            raise CacheError(path=path, problem=e.strerror)
        if not reader:
            self._db.execute("BEGIN")

    # -- schema ------------------------------------------------------------
    def _migrate(self) -> None:
        db = self._db
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
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _check_destination(self, destination: str | None) -> None:
        if destination is None:  # a reader that asks nothing of a gateway (backup --dry-run)
            return
        row = self._db.execute("SELECT value FROM meta WHERE key='destination'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('destination', ?)", (destination,))
        elif row[0] != destination:
            raise CacheError(path=self.path, problem=(
                f"it belongs to the gateway {row[0]}, not {destination}; caps from one grid "
                "mean nothing on another. Set source.entry_cache.path to a separate file"))

    # -- commits -----------------------------------------------------------
    def _wrote(self) -> None:
        self._dirty += 1
        if (self._commit_rows > 0 and self._dirty >= self._commit_rows) or (
                self._commit_seconds > 0 and self._now() - self._last_commit >= self._commit_seconds):
            self.commit()

    def commit(self, durable: bool = False) -> None:
        """Commit; ``durable``: also sync, so that the commit survives a power cut."""
        self._flush_writes()
        self._db.execute("COMMIT")
        if durable:
            # One small transaction at synchronous=FULL syncs the write-ahead
            # log, and with it every commit before it.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('synced', ?)", (repr(self._now()),))
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN")
        self._dirty = 0
        self._last_commit = self._now()

    def close(self) -> None:
        """Commit and close; safe to call twice (a signal's shutdown trigger, then the normal path)."""
        if self._db is None:
            return
        if not self.reader:
            try:
                self._flush_writes()
                self._db.execute("COMMIT")
            except sqlite3.Error:
                pass
        self._db.close()
        self._db = None  # type: ignore[assignment]

    # -- generations ---------------------------------------------------------
    def begin_generation(self, source: bytes, base: int | None = None) -> int:
        """The generation for a new backup of ``source``; ``base``: the generation whose snapshot
        an incremental backup builds on (None: a backup that looks at every entry).

        An interrupted run's generation (the newest for this source, with no
        finished backup) is reused, so a resumed run doesn't leave a gap.
        """
        db = self._db
        self._flush_writes()
        row = db.execute(
            "SELECT gen FROM generations WHERE source=? ORDER BY gen DESC LIMIT 1", (source,)).fetchone()
        if row is not None:
            done = db.execute("SELECT 1 FROM backups WHERE generation=?", (row[0],)).fetchone()
            newest = db.execute("SELECT MAX(gen) FROM generations").fetchone()[0]
            if not done and row[0] == newest:
                db.execute("UPDATE generations SET base=? WHERE gen=?", (base, row[0]))
                self.commit()
                return int(row[0])
        top = db.execute(
            "SELECT MAX(g) FROM (SELECT MAX(gen) AS g FROM generations "
            "UNION ALL SELECT MAX(generation) FROM objects)").fetchone()[0]
        gen = int(top or 0) + 1
        db.execute("INSERT INTO generations VALUES (?, ?, ?, ?)", (gen, source, self._now(), base))
        self.commit()
        return gen

    # -- objects -------------------------------------------------------------
    def lookup(self, key: bytes, generation: int) -> Hit | None:
        """The cached cap for ``key``; marks it as used by ``generation``."""
        new = self._new_objects.get(key)
        if new is not None:
            return self._new_hit(key, new, generation)
        row = self._db.execute(
            "SELECT cap, sha256, generation, enc, pack_offset, pack_length FROM objects WHERE key=?",
            (key,)).fetchone()
        if row is None:
            return None
        if row[2] != generation and not self.reader:
            self._bump(generation, key)
            if len(self._bumps) >= BUMP_BATCH:
                self._flush_bumps()
        return Hit(row[0], row[1], row[3], row[4], row[5])

    def lookup_many(self, keys: list[bytes], generation: int) -> dict[bytes, Hit]:
        """:meth:`lookup` for many keys at once: the cached cap of each key that has one.

        One query per :data:`LOOKUP_BATCH` keys: sqlite walks the keys in order
        inside one statement, at about half the cost per key of one query each
        (phase two asks for a batch of files together, see ``saver.py``).
        """
        found: dict[bytes, Hit] = {}
        new = self._new_objects
        if new:
            found.update((k, self._new_hit(k, new[k], generation)) for k in keys if k in new)
            keys = [k for k in keys if k not in found]
        db = self._db
        self._bump_generation(generation)
        bumps, marks = self._bumps, not self.reader
        for i in range(0, len(keys), LOOKUP_BATCH):
            chunk = keys[i:i + LOOKUP_BATCH]
            for key, cap, sha256, gen, enc, offset, length in db.execute(_select_many(len(chunk)), chunk):
                if gen != generation and marks:
                    bumps.append(key)
                found[key] = Hit(cap, sha256, enc, offset, length)
        if len(self._bumps) >= BUMP_BATCH:
            self._flush_bumps()
        return found

    def _bump(self, generation: int, key: bytes) -> None:
        # Marking rows as used is batched (see _flush_bumps): an unchanged rerun touches every row.
        self._bump_generation(generation)
        self._bumps.append(key)

    def _bump_generation(self, generation: int) -> None:
        if generation != self._bump_gen:
            self._flush_bumps()
            self._bump_gen = generation

    def _new_hit(self, key: bytes, row: tuple[Any, ...], generation: int) -> Hit:
        if row[3] != generation and not self.reader:
            self._new_objects[key] = row = (*row[:3], generation, *row[4:7], row[7])
        return Hit(row[1], row[2], row[4], row[5], row[6])

    def _flush_writes(self) -> None:
        """Write the rows stored since the last flush, in key order (the keys are hashes: in
        order, the inserts walk the table's pages once instead of landing on random ones), then
        the marks of rows used."""
        if self._new_objects:
            rows = sorted(self._new_objects.values())
            self._new_objects = {}
            self._db.executemany(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "cap=excluded.cap, sha256=excluded.sha256, generation=excluded.generation, enc=excluded.enc, "
                "pack_offset=excluded.pack_offset, pack_length=excluded.pack_length", rows)
        if self._new_paths:
            paths = sorted(self._new_paths.items())
            self._new_paths = {}
            self._db.executemany("INSERT OR REPLACE INTO paths VALUES (?, ?)", paths)
        self._flush_bumps()

    def _flush_bumps(self) -> None:
        if self._bumps:
            # In key order, the updates walk the table's pages once, front to back; in
            # lookup order (random: keys are hashes) each lands on a page read anew.
            self._bumps.sort()
            gen = self._bump_gen
            self._db.executemany("UPDATE objects SET generation=? WHERE key=?", ((gen, k) for k in self._bumps))
            self._bumps = []

    def store(self, key: bytes, cap: str, generation: int, sha256: bytes | None = None,
              enc: str | None = None, offset: int | None = None, length: int | None = None) -> None:
        """Record a cap the gateway returned (never call it with anything else).  Written to the file
        at the next commit (which the store makes in the same reactor turn as the upload's
        confirmation), with the other rows stored meanwhile."""
        self._new_objects[key] = (key, cap, sha256, generation, enc, offset, length, generation)
        self._wrote()

    def store_hit(self, key: bytes, hit: Hit, generation: int) -> None:
        self.store(key, hit.cap, generation, hit.sha256, hit.enc, hit.offset, hit.length)

    @staticmethod
    def _path_key(source: bytes, path: bytes) -> bytes:
        import hashlib

        return hashlib.sha256(source + b"\0" + path).digest()

    def saw_path(self, source: bytes, path: bytes) -> bool:
        """Was content at ``path`` of ``source`` stored before (so a file there now is 'changed')?"""
        key = self._path_key(source, path)
        if key in self._new_paths:
            return True
        return self._db.execute("SELECT 1 FROM paths WHERE key=?", (key,)).fetchone() is not None

    def saw_paths(self, source: bytes, paths: list[bytes]) -> set[bytes]:
        """:meth:`saw_path` for many paths at once: those that were seen (one query per
        :data:`LOOKUP_BATCH`)."""
        keys = {self._path_key(source, p): p for p in paths}
        seen = {p for k, p in keys.items() if k in self._new_paths}
        todo = [k for k in keys if keys[k] not in seen]
        for i in range(0, len(todo), LOOKUP_BATCH):
            chunk = todo[i:i + LOOKUP_BATCH]
            q = f"SELECT key FROM paths WHERE key IN ({','.join('?' * len(chunk))})"
            seen.update(keys[row[0]] for row in self._db.execute(q, chunk))
        return seen

    def record_path(self, source: bytes, path: bytes, generation: int) -> None:
        self._new_paths[self._path_key(source, path)] = generation
        self._wrote()

    # -- backups -------------------------------------------------------------
    _COLUMNS = ("id, generation, cap, source, name, ts, link_dir, link_name, result_file, host, tags, summary, "
                "writer, record")

    def record_backup(self, generation: int, cap: str, source: bytes, name: str, ts: float,
                      link_dir: str | None = None, link_name: str | None = None,
                      result_file: str | None = None, host: str | None = None, tags: tuple[str, ...] = (),
                      summary: dict[str, Any] | None = None) -> Backup:
        cur = self._db.execute(
            "INSERT INTO backups (generation, cap, source, name, ts, link_dir, link_name, result_file, host, "
            "tags, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (generation, cap, source, name, ts, link_dir, link_name, result_file, host, json.dumps(list(tags)),
             json.dumps(summary or {})))
        self.commit(durable=True)  # the record of a finished backup must survive a power cut
        return self._backup_row(int(cur.lastrowid or 0))

    def set_recorded(self, row: int, writer: str, record: str) -> None:
        """The repository now records backup ``row`` as ``writer/record``."""
        self._db.execute("UPDATE backups SET writer=?, record=? WHERE id=?", (writer, record, row))
        self.commit()

    def set_checked(self, caps: list[str], ts: float, leases: bool) -> None:
        """Record a completed check of these backups (``leases``: it renewed every object's lease)."""
        for cap in caps:
            self._db.execute("INSERT INTO checked VALUES (?, ?, NULL) ON CONFLICT(cap) DO UPDATE SET "
                             "ts_check=excluded.ts_check", (cap, ts))
            if leases:
                self._db.execute("UPDATE checked SET ts_lease=? WHERE cap=?", (ts, cap))
        self.commit()

    def checks(self) -> dict[str, tuple[float | None, float | None]]:
        """cap -> (last check, last lease renewal) of every backup ever checked from here."""
        return {r[0]: (r[1], r[2]) for r in self._db.execute("SELECT cap, ts_check, ts_lease FROM checked")}

    def forget(self, rows: list[int]) -> int:
        """Remove this cache's backups from the record, and every cache row no remaining backup can use.

        Returns the number of cache rows deleted.  Rows of interrupted runs
        newer than every backup are kept: the next run resumes with them.
        """
        db = self._db
        self._flush_writes()
        top = db.execute("SELECT MAX(generation) FROM backups").fetchone()[0] or 0
        for i in rows:
            db.execute("DELETE FROM backups WHERE id=?", (i,))
        kept = self._with_bases({r[0] for r in db.execute("SELECT DISTINCT generation FROM backups")})
        db.execute("CREATE TEMP TABLE IF NOT EXISTS kept (g INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM kept")
        db.executemany("INSERT INTO kept VALUES (?)", [(g,) for g in kept])
        cur = db.execute(
            "DELETE FROM objects WHERE generation <= ? AND NOT EXISTS "
            "(SELECT 1 FROM kept WHERE g BETWEEN COALESCE(objects.first_gen, 1) AND objects.generation)",
            (top,))
        deleted = cur.rowcount
        db.execute("DELETE FROM generations WHERE gen <= ? AND gen NOT IN (SELECT g FROM kept)", (top,))
        self.commit()
        return deleted

    # -- copies on other grids ------------------------------------------------------------------
    def copied(self, dest: str, src: str) -> str | None:
        """The cap on grid ``dest`` of the object or directory ``src`` copied there (None: not yet)."""
        row = self._db.execute("SELECT dst FROM copied WHERE dest=? AND src=?", (dest, src)).fetchone()
        return row[0] if row else None

    def set_copied(self, dest: str, src: str, dst: str) -> None:
        """Grid ``dest`` confirmed ``src`` as ``dst``: committed at once, so a killed copy never sends it again."""
        self._db.execute("INSERT OR REPLACE INTO copied VALUES (?, ?, ?)", (dest, src, dst))
        self.commit()

    def record_copy(self, cap: str, dest: str, dst: str, ts: float) -> None:
        """Snapshot ``cap`` is held by grid ``dest`` too, as ``dst``."""
        self._db.execute("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?)", (cap, dest, dst, ts))
        self.commit(durable=True)

    def copies(self) -> dict[str, list[str]]:
        """Snapshot cap -> the other grids (gateway URLs) known to hold a copy of it."""
        out: dict[str, list[str]] = {}
        for cap, dest in self._db.execute("SELECT cap, dest FROM copies ORDER BY dest"):
            out.setdefault(cap, []).append(dest)
        return out

    def _with_bases(self, kept: set[int]) -> set[int]:
        """``kept`` and every generation an incremental one among them builds on (its rows may
        still carry that generation)."""
        base = {g: b for g, b in self._db.execute("SELECT gen, base FROM generations WHERE base IS NOT NULL")}
        out = set(kept)
        todo = [g for g in kept if g in base]
        while todo:
            b = base[todo.pop()]
            if b not in out:
                out.add(b)
                if b in base:
                    todo.append(b)
        return out

    def backups(self) -> list[Backup]:
        """The backups this cache made, oldest first, with their checks."""
        checks = self.checks()
        return [self._backup(r, checks) for r in self._db.execute(
            f"SELECT {self._COLUMNS} FROM backups ORDER BY ts, id").fetchall()]

    def has_objects(self) -> bool:
        """Does the cache remember any stored object (False: new, or set aside)?"""
        return bool(self._new_objects) or self._db.execute("SELECT 1 FROM objects LIMIT 1").fetchone() is not None

    def _backup_row(self, row: int) -> Backup:
        r = self._db.execute(f"SELECT {self._COLUMNS} FROM backups WHERE id=?", (row,)).fetchone()
        return self._backup(r, self.checks())

    @staticmethod
    def _backup(r: Any, checks: dict[str, tuple[float | None, float | None]]) -> Backup:
        (row, gen, cap, source, name, ts, link_dir, link_name, result_file, host, tags, summary, writer,
         record) = r
        ts_check, ts_lease = checks.get(cap, (None, None))
        return Backup(f"local:{row}", gen, cap, source, name, ts, ts_check, link_dir, link_name, result_file,
                      host, ts_lease, tuple(json.loads(tags or "[]")), json.loads(summary or "{}"), row,
                      writer, record)


for _name, _fn in list(vars(EntryCache).items()):
    if isinstance(_fn, types.FunctionType) and not _name.startswith("_"):
        setattr(EntryCache, _name, _guarded(_fn))
