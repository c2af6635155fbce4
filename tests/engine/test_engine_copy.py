"""The copy orchestration over recording fakes: what a destination already holds is not copied
again, copies a killed run recorded there are noted here, and the cache is used under its lock."""

from __future__ import annotations

import contextlib
import io

import pytest_twisted
from fakes import FakeGateway

from lafs_backup.db.local import LocalDB
from lafs_backup.engine.copy import copy_backups
from lafs_backup.engine.runtime import Runtime
from lafs_backup.history import Backup
from lafs_backup.report import Reporter
from lafs_backup.repository import Record, RepoKey


class Repository:
    def __init__(self, records: list[Record]) -> None:
        self.key = RepoKey("URI:DIR2:" + "a" * 26 + ":" + "b" * 52)
        self._records = records
        self.added: list[Record] = []

    async def records(self) -> list[Record]:
        return list(self._records)

    async def add(self, rec: Record) -> Record:
        self.added.append(rec)
        return rec


def backup(i: int) -> Backup:
    return Backup(f"w/r{i}", i, f"URI:DIR2-CHK:{i}", b"/src", "src", float(i), host="h")


@pytest_twisted.ensureDeferred
async def test_what_the_destination_holds_is_noted_and_not_copied_again(tmp_path):
    from twisted.internet import reactor

    events: list[str] = []
    path = str(tmp_path / "c.sqlite")

    @contextlib.asynccontextmanager
    async def locked():
        events.append("lock")
        db = LocalDB(path, "src")
        try:
            yield db
        finally:
            db.close()
            events.append("unlock")

    held = Record("URI:DIR2-CHK:copy1", "h", b"/src", 1.0, 1, original="URI:DIR2-CHK:1")
    repo = Repository([held])
    rep = Reporter(out=io.StringIO(), err=io.StringIO())
    summary = await copy_backups(Runtime(reactor, rep), 2, FakeGateway(), FakeGateway(), "http://dest/", repo,
                                 locked, [backup(1)])
    assert events == ["lock", "unlock"]
    assert summary["snapshots_copied"] == 0 and summary["snapshots_held_already"] == 1
    assert repo.added == []
    db = LocalDB(path, "src", reader=True)
    assert db.history.copies() == {"URI:DIR2-CHK:1": ["http://dest/"]}  # the killed run's copy, noted here
    db.close()
