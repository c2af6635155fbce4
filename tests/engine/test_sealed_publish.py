"""A sealed repository's record is sealed once: a run whose write landed but whose answer was lost (or
that was killed before it noted it) records the same box again on the next run, and finds it there, so
the record is not blocked, nor written twice; the recovery key reads it, the host's key does not."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest_twisted
from test_publish_volumes import MutableDirs

from lafs_backup.db.local import LocalDB
from lafs_backup.engine.publish import publish
from lafs_backup.engine.sealing import beyond
from lafs_backup.errors import GridError
from lafs_backup.report import Reporter
from lafs_backup.repository import Repository, is_sealed
from lafs_backup.sealing import OpenKey


class LostAnswer(MutableDirs):
    """Writes land, but the answer to the first write into a writer's directory is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lose: str | None = None

    async def set_children(self, dircap, children, replace=True):  # type: ignore[no-untyped-def]
        done = await super().set_children(dircap, children, replace)
        if self.lose is not None and self.lose in children:
            self.lose = None
            raise GridError(problem="the gateway's answer was lost")
        return done


@pytest_twisted.ensureDeferred
async def test_a_record_whose_answer_was_lost_is_recorded_once_by_the_next_run(tmp_path):
    gw = LostAnswer()
    whole = await Repository.create(gw, opener=OpenKey.generate())
    host = Repository(gw, whole.key.host_key())
    db = LocalDB(str(tmp_path / "cache.sqlite"), "fake")
    rep = Reporter(out=io.StringIO(), err=io.StringIO())
    b = db.history.record_backup(1, "URI:DIR2-CHK:snap1", b"/src", "src", 1_000_000.0, host="h")
    gw.lose = "19700112T134640.000000Z.g1"
    await publish(rep, host, db.history, b"/src")
    assert "not recorded in the repository yet" in rep.err.getvalue()
    row, = db.history.backups()
    assert row.record is None and row.box is not None  # (sealed once, kept before the first write)
    await publish(rep, host, db.history, b"/src")
    row, = db.history.backups()
    assert row.record == "19700112T134640.000000Z.g1" and row.box is not None
    assert json.loads(row.box)["box"] == next(
        meta["box"] for d in gw.dirs.values() for name, (_, meta) in d.items() if is_sealed(meta))
    # The recovery key reads it, once; the host's key sees a sealed entry it cannot open (its own, listed
    # from its cache).
    rec, = await whole.records()
    assert (rec.cap, rec.host, rec.source, rec.generation) == (b.cap, "h", b"/src", 1)
    listed = await host.listing()
    assert listed.records == [] and listed.unopened == [(row.writer, row.record)]
    # It leaves the window only once the custodian has it too.
    older = dataclasses.replace(row, ts=0.0)
    assert beyond([older, row], 1)[1] == [] and beyond([dataclasses.replace(older, sent=True), row], 1)[1] != []
