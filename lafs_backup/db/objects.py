"""The object cache, what deduplication needs: each object the gateway confirmed, by its key; the generations that
used it; the source paths read before."""

from __future__ import annotations

import hashlib
from typing import Any

from ..store.snapshot import Hit
from .database import Database, guarded

#: Keys asked for in one query by :meth:`ObjectCache.lookup_many` (sqlite before 3.32 takes 999
#: parameters at most).
LOOKUP_BATCH = 500
#: Rows marked as used, held until they are written together (their keys and caps: about 6 MB at most).
BUMP_BATCH = 20000


#: The query of :meth:`ObjectCache.lookup_many` (its ``{}`` takes the keys).
_SELECT_MANY = ("SELECT key, cap, sha256, generation, enc, pack_offset, pack_length, first_gen FROM objects "
                "WHERE key IN ({})")


@guarded
class ObjectCache:
    """The tables ``objects``, ``generations`` and ``paths`` of ``db`` (see ``database.py``): what the
    store and the uploader look up and record (``lookup``, ``store``, ``commit``...).

    Rows stored and marks of rows used are held in memory and written at the
    next commit of ``db`` (whoever makes it), in key order.

    Several runs (of different sources) may write the file at once, each
    with its own generation.  So a row's range of generations only widens
    (``first_gen`` only lowers, ``generation`` only rises), and only while
    the row holds the cap the run used: a run that stores a key another
    stored meanwhile under another cap starts the row's range anew, with its
    own generation.  The range then never claims a generation whose backup
    does not use the row's cap, and cleanup never keeps a row alive for a
    backup that does not renew its object's lease.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path
        self.reader = db.reader
        #: Rows looked up, to be marked as used: (key, the cap found, the generation that used it).
        self._bumps: list[tuple[bytes, str, int]] = []
        # Rows stored but not yet written to the file (see _flush_writes): key -> row.
        self._new_objects: dict[bytes, tuple[Any, ...]] = {}
        # The same for the rows of files' states (:meth:`store_state`), and paths seen.
        self._new_states: dict[bytes, tuple[Any, ...]] = {}
        self._new_paths: dict[bytes, int] = {}
        #: The commit under way is the store's, after a confirmed upload (see :meth:`commit`).
        self._uploads_only = False
        #: The generation each incremental generation begun here builds on (see :meth:`_unmarked`).
        self._base: dict[int, int] = {}
        db.on_flush(self._flush_writes)

    def commit(self, durable: bool = False) -> None:
        """Commit the database (the store does after each confirmed upload); ``durable``: also sync.

        A commit that is not durable writes the rows of uploads (contents, directories...) but
        leaves the rows of files' states and of paths seen to the database's next batch
        (``Database.wrote``: every few thousand rows or seconds) or any other transaction: a
        kill loses only the uploads in flight, and costs at most re-reading some files.  Those
        rows land at random places of the file (their keys are hashes), so each commit that
        carries some rewrites pages all over it: written one commit in a hundred, a first
        backup's cache costs a fraction of it."""
        if durable:
            self._db.commit(durable)
            return
        self._uploads_only = True
        try:
            self._db.commit()
        finally:
            self._uploads_only = False

    # -- generations ---------------------------------------------------------
    def begin_generation(self, source: bytes, base: int | None = None) -> int:
        """The generation for a new backup of ``source``; ``base``: the generation whose snapshot
        an incremental backup builds on (None: a backup that looks at every entry).

        An interrupted run's generation (the newest for this source, with no
        finished backup, and no newer generation of any source since) is
        reused, so a resumed run doesn't leave a gap.  The caller holds the
        source's lock, so no run of it is under way: a generation without a
        backup is an interrupted one.  Allocated in one write transaction:
        runs of other sources starting at the same time get generations of
        their own.
        """
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT gen FROM generations WHERE source=? ORDER BY gen DESC LIMIT 1", (source,)).fetchone()
            if row is not None:
                # Finished: the local history recorded a backup of it.
                done = db.execute("SELECT 1 FROM backups WHERE generation=?", (row[0],)).fetchone()
                newest = db.execute("SELECT MAX(gen) FROM generations").fetchone()[0]
                if not done and row[0] == newest:
                    db.execute("UPDATE generations SET base=? WHERE gen=?", (base, row[0]))
                    self._note_base(int(row[0]), base)
                    return int(row[0])
            top = db.execute(
                "SELECT MAX(g) FROM (SELECT MAX(gen) AS g FROM generations "
                "UNION ALL SELECT MAX(generation) FROM objects)").fetchone()[0]
            gen = int(top or 0) + 1
            db.execute("INSERT INTO generations VALUES (?, ?, ?, ?)", (gen, source, self._db.now(), base))
        self._note_base(gen, base)
        return gen

    def _note_base(self, gen: int, base: int | None) -> None:
        if base is None:
            self._base.pop(gen, None)
        else:
            self._base[gen] = base

    def _unmarked(self, first: int | None, gen: int, generation: int) -> bool:
        """Must a row used by ``generation`` (its range: ``first``..``gen``) be marked as used by it?
        Not when ``generation`` builds on a generation within the range: the generations a kept one
        builds on are kept with it (:meth:`_with_bases`), and so is the row.  So a backup that walks
        again only the directories that changed marks none of the unchanged files it finds there
        (tens of thousands of row updates, a tenth of such a backup)."""
        if gen == generation:
            return False
        base = self._base.get(generation)
        return base is None or not (first or 1) <= base <= gen
    def drop_unused(self, kept: set[int], top: int) -> int:
        """Delete the rows and generations up to ``top`` that no generation in ``kept`` can use,
        nor any generation an incremental one among them builds on; returns the rows deleted.

        In one write transaction (the local history's ``forget`` calls it inside its own).  The
        caller holds the whole cache's lock: no run is under way, whose rows it could take.
        """
        with self._db.transaction() as db:
            kept = self._with_bases(kept)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS kept (g INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM kept")
            db.executemany("INSERT INTO kept VALUES (?)", [(g,) for g in kept])
            cur = db.execute(
                "DELETE FROM objects WHERE generation <= ? AND NOT EXISTS "
                "(SELECT 1 FROM kept WHERE g BETWEEN COALESCE(objects.first_gen, 1) AND objects.generation)",
                (top,))
            deleted = cur.rowcount
            db.execute("DELETE FROM generations WHERE gen <= ? AND gen NOT IN (SELECT g FROM kept)", (top,))
        return deleted

    def _with_bases(self, kept: set[int]) -> set[int]:
        """``kept`` and every generation an incremental one among them builds on (its rows may
        still carry that generation)."""
        base = {g: b for g, b in self._db.conn.execute("SELECT gen, base FROM generations WHERE base IS NOT NULL")}
        out = set(kept)
        todo = [g for g in kept if g in base]
        while todo:
            b = base[todo.pop()]
            if b not in out:
                out.add(b)
                if b in base:
                    todo.append(b)
        return out

    # -- objects -------------------------------------------------------------
    def lookup(self, key: bytes, generation: int) -> Hit | None:
        """The cached cap for ``key``; marks it as used by ``generation``."""
        new = self._new_objects.get(key)
        if new is not None:
            return self._new_hit(self._new_objects, key, new, generation)
        new = self._new_states.get(key)
        if new is not None:
            return self._new_hit(self._new_states, key, new, generation)
        row = self._db.conn.execute(
            "SELECT cap, sha256, generation, enc, pack_offset, pack_length, first_gen FROM objects WHERE key=?",
            (key,)).fetchone()
        if row is None:
            return None
        if not self.reader and self._unmarked(row[6], row[2], generation):
            self._bump(key, row[0], generation)
        return Hit(row[0], row[1], row[3], row[4], row[5])

    def lookup_many(self, keys: list[bytes], generation: int) -> dict[bytes, Hit]:
        """:meth:`lookup` for many keys at once: the cached cap of each key that has one.

        One query per :data:`LOOKUP_BATCH` keys: sqlite walks the keys in order
        inside one statement, at about half the cost per key of one query each
        (phase two asks for a batch of files together, see ``saver.py``).
        """
        found: dict[bytes, Hit] = {}
        for new in (self._new_objects, self._new_states):
            if new:
                found.update((k, self._new_hit(new, k, new[k], generation)) for k in keys if k in new)
                keys = [k for k in keys if k not in found]
        bumps, marks, unmarked = self._bumps, not self.reader, self._unmarked
        for key, cap, sha256, gen, enc, offset, length, first in self._db.rows_in(_SELECT_MANY, keys, LOOKUP_BATCH):
            if marks and unmarked(first, gen, generation):
                bumps.append((key, cap, generation))
            found[key] = Hit(cap, sha256, enc, offset, length)
        if len(bumps) >= BUMP_BATCH:
            self._db.commit()
        return found

    def known_keys(self, keys: list[bytes]) -> set[bytes]:
        """Which of ``keys`` have a row, without marking any as used (one query per
        :data:`LOOKUP_BATCH`): whether a state is worth a second look, before :meth:`lookup_many`."""
        held = self._new_objects, self._new_states
        found = {k for k in keys if k in held[0] or k in held[1]}
        todo = [k for k in keys if k not in found]
        found.update(row[0] for row in self._db.rows_in("SELECT key FROM objects WHERE key IN ({})", todo,
                                                         LOOKUP_BATCH))
        return found

    def _bump(self, key: bytes, cap: str, generation: int) -> None:
        # Marking rows as used is batched (see _flush_bumps): an unchanged rerun touches every row.
        self._bumps.append((key, cap, generation))
        if len(self._bumps) >= BUMP_BATCH:
            self._db.commit()

    @staticmethod
    def _new_hit(held: dict[bytes, tuple[Any, ...]], key: bytes, row: tuple[Any, ...], generation: int) -> Hit:
        if row[3] != generation:  # (a reader holds no rows)
            held[key] = row = (*row[:3], generation, *row[4:7], row[7])
        return Hit(row[1], row[2], row[4], row[5], row[6])

    def _flush_writes(self) -> None:
        """Write the rows stored since the last flush, in key order (the keys are hashes: in
        order, the inserts walk the table's pages once instead of landing on random ones), then
        the marks of rows used.  Called first in each write transaction (``Database.transaction``)."""
        everything = not self._uploads_only
        if self._new_objects or (everything and self._new_states):
            rows = sorted([*self._new_objects.values(), *(self._new_states.values() if everything else ())])
            self._new_objects = {}
            if everything:
                self._new_states = {}
            # A key stored before with the same cap: its range widens.  With another cap (another
            # run stored it meanwhile, or --mode force stored it again): the row is this one,
            # whose range starts here.
            self._db.conn.executemany(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "first_gen=CASE WHEN objects.cap=excluded.cap "
                "THEN MIN(COALESCE(objects.first_gen, 1), excluded.first_gen) ELSE excluded.first_gen END, "
                "generation=CASE WHEN objects.cap=excluded.cap "
                "THEN MAX(objects.generation, excluded.generation) ELSE excluded.generation END, "
                "cap=excluded.cap, sha256=excluded.sha256, enc=excluded.enc, "
                "pack_offset=excluded.pack_offset, pack_length=excluded.pack_length", rows)
        if self._new_paths and everything:
            paths = sorted(self._new_paths.items())
            self._new_paths = {}
            self._db.conn.executemany("INSERT OR REPLACE INTO paths VALUES (?, ?)", paths)
        self._flush_bumps()

    def _flush_bumps(self) -> None:
        if self._bumps:
            # In key order, the updates walk the table's pages once, front to back; in
            # lookup order (random: keys are hashes) each lands on a page read anew.  Only a row
            # that still holds the cap the run found: another run may have stored it anew.
            self._bumps.sort()
            self._db.conn.executemany(
                "UPDATE objects SET generation=MAX(generation, ?1), first_gen=MIN(COALESCE(first_gen, 1), ?1) "
                "WHERE key=?2 AND cap=?3", ((gen, key, cap) for key, cap, gen in self._bumps))
            self._bumps = []

    def store(self, key: bytes, cap: str, generation: int, sha256: bytes | None = None,
              enc: str | None = None, offset: int | None = None, length: int | None = None) -> None:
        """Record a cap the gateway returned (never call it with anything else).  Written to the file
        at the next commit (which the store makes in the same reactor turn as the upload's
        confirmation), with the other rows stored meanwhile."""
        self._new_objects[key] = (key, cap, sha256, generation, enc, offset, length, generation)
        self._db.wrote()

    def store_hit(self, key: bytes, hit: Hit, generation: int) -> None:
        self.store(key, hit.cap, generation, hit.sha256, hit.enc, hit.offset, hit.length)

    def store_state(self, key: bytes, hit: Hit, generation: int) -> None:
        """Record where a file's state (``plan.state_key``) is stored: as :meth:`store_hit`, but
        left out of the commits that only record uploads (see :meth:`commit`)."""
        self._new_states[key] = (key, hit.cap, hit.sha256, generation, hit.enc, hit.offset, hit.length, generation)
        self._db.wrote()

    def has_objects(self) -> bool:
        """Does the cache remember any stored object (False: new, or set aside)?"""
        return bool(self._new_objects or self._new_states) or self._db.conn.execute(
            "SELECT 1 FROM objects LIMIT 1").fetchone() is not None

    # -- paths ---------------------------------------------------------------
    @staticmethod
    def _path_key(source: bytes, path: bytes) -> bytes:
        return hashlib.sha256(source + b"\0" + path).digest()

    def saw_path(self, source: bytes, path: bytes) -> bool:
        """Was content at ``path`` of ``source`` stored before (so a file there now is 'changed')?"""
        key = self._path_key(source, path)
        if key in self._new_paths:
            return True
        return self._db.conn.execute("SELECT 1 FROM paths WHERE key=?", (key,)).fetchone() is not None

    def saw_paths(self, source: bytes, paths: list[bytes]) -> set[bytes]:
        """:meth:`saw_path` for many paths at once: those that were seen (one query per
        :data:`LOOKUP_BATCH`)."""
        keys = {self._path_key(source, p): p for p in paths}
        seen = {p for k, p in keys.items() if k in self._new_paths}
        todo = [k for k in keys if keys[k] not in seen]
        seen.update(keys[row[0]] for row in self._db.rows_in("SELECT key FROM paths WHERE key IN ({})", todo,
                                                              LOOKUP_BATCH))
        return seen

    def record_path(self, source: bytes, path: bytes, generation: int) -> None:
        self._new_paths[self._path_key(source, path)] = generation
        self._db.wrote()
