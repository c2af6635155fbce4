"""The local database as one object: the object cache, the local history and the copy map over one connection."""

from __future__ import annotations

import time
from typing import Callable

from .copy_map import CopyMap
from .proofs import ProofCache
from .database import Database
from .local_history import LocalHistory
from .objects import ObjectCache


class LocalDB:
    """Open the local database at ``path`` (see :class:`~.database.Database` for the arguments and
    what it raises) and hand out its parts, which share its one connection and its commits:
    ``objects`` for the store and the uploader, ``history`` for recording, listing, checking and
    forgetting backups, ``copy_map`` for ``copy``.

    Like every sqlite object, it is used in the thread that opened it only.
    """

    def __init__(self, path: str, grid: str | None, commit_rows: int = 500,
                 commit_seconds: float = 2.0, now: Callable[[], float] = time.time,
                 reader: bool = False) -> None:
        self.db = Database(path, grid, commit_rows, commit_seconds, now, reader)
        self.path = path
        self.reader = reader
        self.objects = ObjectCache(self.db)
        self.history = LocalHistory(self.db, self.objects)
        self.copy_map = CopyMap(self.db)
        self.proofs = ProofCache(self.db)

    def commit(self, durable: bool = False) -> None:
        """Commit every part's writes; ``durable``: also sync, so that the commit survives a power cut."""
        self.db.commit(durable)

    def close(self) -> None:
        """Commit and close; safe to call twice (a signal's shutdown trigger, then the normal path)."""
        self.db.close()
