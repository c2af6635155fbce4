"""The copy map: for ``copy``, each object or directory another grid confirmed, by its cap here and there."""

from __future__ import annotations

from .database import Database, guarded


@guarded
class CopyMap:
    """The table ``copied`` of ``db`` (see ``database.py``), per destination (``dest``: a gateway URL
    and the repository there, as ``engine/copy.py`` names it)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path

    def copied(self, dest: str, src: str) -> str | None:
        """The cap on grid ``dest`` of the object or directory ``src`` copied there (None: not yet)."""
        row = self._db.conn.execute("SELECT dst FROM copied WHERE dest=? AND src=?", (dest, src)).fetchone()
        return row[0] if row else None

    def set_copied(self, dest: str, src: str, dst: str) -> None:
        """Grid ``dest`` confirmed ``src`` as ``dst``: committed at once, so a killed copy never sends it again."""
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO copied VALUES (?, ?, ?)", (dest, src, dst))
