"""Proofs: the recipes of derived files a backup proved, so that the next one need not run them again."""

from __future__ import annotations

import json
from typing import Any, Iterable

from .database import Database, guarded


@guarded
class ProofCache:
    """The table ``proofs`` of ``db`` (see ``database.py``): a recipe (as its edge records it, with the
    output's ``sha256`` and ``size``) by the key ``backup/derive.py`` makes of what it depends on."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path

    def lookup(self, keys: Iterable[bytes]) -> dict[bytes, dict[str, Any]]:
        """The proofs known of ``keys``."""
        found: dict[bytes, dict[str, Any]] = {}
        for key, recipe in self._db.rows_in("SELECT key, recipe FROM proofs WHERE key IN ({})", list(keys), 500):
            try:
                found[bytes(key)] = json.loads(recipe)
            except ValueError:
                continue  # (a damaged row: proven again)
        return found

    def remember(self, proofs: Iterable[tuple[bytes, dict[str, Any]]], generation: int) -> None:
        """Record proofs just made, at once (a later backup may rely on them even if this one fails)."""
        rows = [(key, json.dumps(recipe, sort_keys=True), generation) for key, recipe in proofs]
        if rows:
            with self._db.transaction() as db:
                db.executemany("INSERT OR REPLACE INTO proofs VALUES (?, ?, ?)", rows)
