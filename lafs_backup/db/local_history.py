"""The local history: the backups this machine made, the checks of any backup, the snapshots copied to other
grids, and the last run of each command that changes state."""

from __future__ import annotations

import json
from typing import Any

from ..history import Backup, Run
from .database import Database, guarded
from .objects import ObjectCache


@guarded
class LocalHistory:
    """The tables ``backups``, ``checked``, ``copies`` and ``runs`` of ``db`` (see ``database.py``).

    :meth:`forget` also drops the rows of ``objects`` (the object cache) that no kept backup
    uses any more: what a backup keeps alive is this record's to say.
    """

    _COLUMNS = ("id, generation, cap, source, name, ts, link_dir, link_name, result_file, host, tags, summary, "
                "writer, record, sealed, sent")

    def __init__(self, db: Database, objects: ObjectCache) -> None:
        self._db = db
        self._objects = objects
        self.path = db.path

    # -- backups -------------------------------------------------------------
    def record_backup(self, generation: int, cap: str, source: bytes, name: str, ts: float,
                      link_dir: str | None = None, link_name: str | None = None,
                      result_file: str | None = None, host: str | None = None, tags: tuple[str, ...] = (),
                      summary: dict[str, Any] | None = None) -> Backup:
        """Record a finished backup, made durable at once (with every row stored before it)."""
        with self._db.transaction() as db:  # (it writes the rows held first)
            cur = db.execute(
                "INSERT INTO backups (generation, cap, source, name, ts, link_dir, link_name, result_file, host, "
                "tags, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (generation, cap, source, name, ts, link_dir, link_name, result_file, host, json.dumps(list(tags)),
                 json.dumps(summary or {})))
        self._db.commit(durable=True)  # the record of a finished backup must survive a power cut
        return self._backup_row(int(cur.lastrowid or 0))

    def set_sealed(self, row: int, box: str) -> None:
        """A sealed repository's record of backup ``row`` (its place and box, JSON), sealed once before it
        is first written: every attempt to record it writes the same (made durable at once)."""
        with self._db.transaction() as db:
            db.execute("UPDATE backups SET sealed=? WHERE id=?", (box, row))
        self._db.commit(durable=True)

    def set_sent(self, row: int) -> None:
        """The custodian's inbox holds backup ``row``'s manifest and record (or there is no inbox)."""
        with self._db.transaction() as db:
            db.execute("UPDATE backups SET sent=1 WHERE id=?", (row,))
        self._db.commit(durable=True)

    def unsent(self, source: bytes) -> list[Backup]:
        """The backups of ``source`` the repository records whose record the custodian does not have yet, oldest
        first (a sealed repository's; see :meth:`set_sent`)."""
        rows = self._db.conn.execute(f"SELECT {self._COLUMNS} FROM backups WHERE record IS NOT NULL AND sealed IS "
                                     "NOT NULL AND sent IS NULL AND source=? ORDER BY ts, id", (source,)).fetchall()
        checks = self._checks_of([r[2] for r in rows])
        return [self._backup(r, checks) for r in rows]

    def set_recorded(self, row: int, writer: str, record: str) -> None:
        """The repository now records backup ``row`` as ``writer/record``."""
        with self._db.transaction() as db:
            db.execute("UPDATE backups SET writer=?, record=? WHERE id=?", (writer, record, row))

    def backups(self) -> list[Backup]:
        """The backups this cache made, oldest first, with their checks."""
        checks = self.checks()
        return [self._backup(r, checks) for r in self._db.conn.execute(
            f"SELECT {self._COLUMNS} FROM backups ORDER BY ts, id").fetchall()]

    def unrecorded(self, source: bytes) -> list[Backup]:
        """The backups of ``source`` this cache made that the repository does not record yet, oldest
        first (a lookup: the cost does not grow with the backups that are recorded)."""
        rows = self._db.conn.execute(f"SELECT {self._COLUMNS} FROM backups WHERE record IS NULL AND source=? "
                                     "ORDER BY ts, id", (source,)).fetchall()
        checks = self._checks_of([r[2] for r in rows])
        return [self._backup(r, checks) for r in rows]

    def with_cap(self, cap: str) -> list[Backup]:
        """The backups this cache made whose snapshot is ``cap``."""
        rows = self._db.conn.execute(f"SELECT {self._COLUMNS} FROM backups WHERE cap=? ORDER BY ts, id",
                                     (cap,)).fetchall()
        return [self._backup(r, self._checks_of([cap])) for r in rows]

    def held(self, writer: str) -> dict[str, int]:
        """Directory -> how many of this cache's backups the repository records there, for the
        directories of ``writer`` and its volumes (``repository.volume_for`` picks the next one)."""
        like = writer.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".v%"
        return {w: n for w, n in self._db.conn.execute(
            "SELECT writer, COUNT(*) FROM backups WHERE record IS NOT NULL AND (writer=? OR writer LIKE ? "
            "ESCAPE '\\') GROUP BY writer", (writer, like))}

    def forget(self, rows: list[int]) -> int:
        """Remove this cache's backups from the record, and every object row no remaining backup can use.

        Returns the number of object rows deleted.  Rows of interrupted runs
        newer than every backup are kept: the next run resumes with them.
        The caller holds the whole cache's lock (no run is under way).
        """
        with self._db.transaction() as db:
            top = db.execute("SELECT MAX(generation) FROM backups").fetchone()[0] or 0
            for i in rows:
                db.execute("DELETE FROM backups WHERE id=?", (i,))
            kept = {r[0] for r in db.execute("SELECT DISTINCT generation FROM backups")}
            deleted = self._objects.drop_unused(kept, top)
        return deleted

    def set_tags(self, row: int, tags: tuple[str, ...]) -> None:
        """A backup's tags as this machine changed them (a sealed repository's host cannot read its tag
        changes back from the repository)."""
        with self._db.transaction() as db:
            db.execute("UPDATE backups SET tags=? WHERE id=?", (json.dumps(list(tags)), row))
        self._db.commit(durable=True)

    def seal(self, rows: list[int], keep_caps: set[str]) -> int:
        """A sealed repository's host lets go of what it no longer needs (``engine/sealing.py``): the
        snapshot caps of its backups ``rows`` (each becomes ``history.sealed_cap``) with their checks
        and copies, and every object row (and copy-map row) whose cap ``keep_caps`` (every cap the
        backups still in a window reach) lacks, but those a run under way may use (the rows of a
        generation newer than every finished backup of its source).  Returns the rows deleted (sqlite overwrites them:
        ``secure_delete``).  The caller holds a source's lock."""
        from ..history import sealed_cap

        with self._db.transaction() as db:
            for row in rows:
                b = self._backup_row(row)
                if b.sealed:
                    continue
                db.execute("UPDATE backups SET cap=? WHERE id=?", (sealed_cap(b), row))
                db.execute("DELETE FROM checked WHERE cap=?", (b.cap,))
                db.execute("DELETE FROM copies WHERE cap=?", (b.cap,))
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep_caps (cap TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM keep_caps")
            db.executemany("INSERT OR IGNORE INTO keep_caps VALUES (?)", [(c,) for c in keep_caps])
            db.execute("CREATE TEMP TABLE IF NOT EXISTS running (g INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM running")
            # (a run under way: a generation newer than every finished backup of its source; one a run left
            # unfinished before a later backup of its source finished holds nothing that backup needs)
            db.execute("INSERT OR IGNORE INTO running SELECT g.gen FROM generations g WHERE g.gen > COALESCE("
                       "(SELECT MAX(b.generation) FROM backups b WHERE b.source = g.source), 0)")
            cur = db.execute(
                "DELETE FROM objects WHERE cap NOT IN (SELECT cap FROM keep_caps) AND NOT EXISTS "
                "(SELECT 1 FROM running WHERE g BETWEEN COALESCE(objects.first_gen, 1) AND objects.generation)")
            deleted = cur.rowcount
            db.execute("DELETE FROM copied WHERE src NOT IN (SELECT cap FROM keep_caps)")
        self._db.commit(durable=True)
        return deleted

    def _backup_row(self, row: int) -> Backup:
        r = self._db.conn.execute(f"SELECT {self._COLUMNS} FROM backups WHERE id=?", (row,)).fetchone()
        return self._backup(r, self._checks_of([r[2]]))

    @staticmethod
    def _backup(r: tuple[Any, ...], checks: dict[str, tuple[float | None, float | None]]) -> Backup:
        (row, gen, cap, source, name, ts, link_dir, link_name, result_file, host, tags, summary, writer,
         record, box, sent) = r
        ts_check, ts_lease = checks.get(cap, (None, None))
        return Backup(f"local:{row}", gen, cap, source, name, ts, ts_check, link_dir, link_name, result_file,
                      host, ts_lease, tuple(json.loads(tags or "[]")), json.loads(summary or "{}"), row,
                      writer, record, box=box, sent=bool(sent))

    # -- checks --------------------------------------------------------------
    def set_checked(self, caps: list[str], ts: float, leases: bool) -> None:
        """Record a completed check of these backups (``leases``: it renewed every object's lease)."""
        with self._db.transaction() as db:
            for cap in caps:
                db.execute("INSERT INTO checked VALUES (?, ?, NULL) ON CONFLICT(cap) DO UPDATE SET "
                           "ts_check=excluded.ts_check", (cap, ts))
                if leases:
                    db.execute("UPDATE checked SET ts_lease=? WHERE cap=?", (ts, cap))

    def _checks_of(self, caps: list[str]) -> dict[str, tuple[float | None, float | None]]:
        """:meth:`checks` of these caps alone."""
        out: dict[str, tuple[float | None, float | None]] = {}
        for cap in set(caps):
            r = self._db.conn.execute("SELECT ts_check, ts_lease FROM checked WHERE cap=?", (cap,)).fetchone()
            if r is not None:
                out[cap] = (r[0], r[1])
        return out

    def checks(self) -> dict[str, tuple[float | None, float | None]]:
        """cap -> (last check, last lease renewal) of every backup ever checked from here."""
        return {r[0]: (r[1], r[2]) for r in self._db.conn.execute("SELECT cap, ts_check, ts_lease FROM checked")}

    # -- copies on other grids -------------------------------------------------
    def record_copy(self, cap: str, dest: str, dst: str, ts: float) -> None:
        """Snapshot ``cap`` is held by grid ``dest`` too, as ``dst`` (made durable at once)."""
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?)", (cap, dest, dst, ts))
        self._db.commit(durable=True)

    def copies(self) -> dict[str, list[str]]:
        """Snapshot cap -> the other grids (gateway URLs) known to hold a copy of it."""
        out: dict[str, list[str]] = {}
        for cap, dest in self._db.conn.execute("SELECT cap, dest FROM copies ORDER BY dest"):
            out.setdefault(cap, []).append(dest)
        return out

    # -- the last run of each command ------------------------------------------
    def record_run(self, run: Run) -> None:
        """Record how the last run of ``run.command`` ended (replacing the one before; when it failed, the time
        of the last success stays), made durable at once: it is what ``status`` and the metrics say."""
        with self._db.transaction() as db:
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(command) DO UPDATE SET "
                       "ts=excluded.ts, seconds=excluded.seconds, code=excluded.code, details=excluded.details, "
                       "ts_ok=COALESCE(excluded.ts_ok, runs.ts_ok)",
                       (run.command, run.ts, run.seconds, run.code, json.dumps(run.details, sort_keys=True),
                        run.ts if run.ok else None))
        self._db.commit(durable=True)

    def runs(self) -> dict[str, Run]:
        """Command name -> its last run recorded here (see :meth:`record_run`)."""
        return {r[0]: Run(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5]) for r in self._db.conn.execute(
            "SELECT command, ts, seconds, code, details, ts_ok FROM runs")}
