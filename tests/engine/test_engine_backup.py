"""The backup run's orchestration over recording fakes: what it asks of its target (the entry cache
under its lock, the repository, the history) and in which order, for a first backup, an unchanged
rerun that keeps the whole tree, a queue-only walk, and a grid that refuses an upload."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import FakeGateway

from lafs_backup import config as cfg
from lafs_backup.backup.subtrees import trees_path
from lafs_backup.db.local import LocalDB
from lafs_backup.engine.backup import BackupRun, Job, SelectArgs, local_source, selection
from lafs_backup.engine.runtime import Runtime
from lafs_backup.errors import GridError
from lafs_backup.report import Reporter
from lafs_backup.repository import RepoKey
from lafs_backup.system.lock import source_scope


class RecordingRepository:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.records: list[Any] = []
        self.key = RepoKey("URI:DIR2:no-inbox")  # (a repository with no custodian's inbox)

    async def add(self, rec: Any) -> Any:
        import dataclasses

        self.events.append(("repository.add", rec.generation))
        placed = dataclasses.replace(rec, writer="w", name=f"r{len(self.records)}")
        self.records.append(placed)
        return placed


class RecordingTarget:
    """What the resource opener gives a backup, recording each call."""

    def __init__(self, home: Path) -> None:
        self.events: list[Any] = []
        self.scopes: list[str | None] = []
        self.path = str(home / "cache.sqlite")
        self.repo = RecordingRepository(self.events)

    @contextlib.asynccontextmanager
    async def locked_cache(self, fresh: bool = False, scope: str | None = None):
        self.events.append(("lock", fresh))
        self.scopes.append(scope)
        db = LocalDB(self.path, "fake")
        try:
            yield db
        finally:
            db.close()
            self.events.append("unlock")

    async def wait_for_lock(self, scope: str | None = None) -> None:
        self.events.append(("free?", scope is None))

    async def cache_path(self) -> str:
        return self.path

    async def repository(self, create: bool = False) -> Any:
        self.events.append(("repository", create))
        return self.repo

    async def backups(self) -> list[Any]:
        self.events.append("backups")
        return []

    def forget_backups(self) -> None:
        self.events.append("forget_backups")

    async def happy(self, gw: Any = None) -> int:
        self.events.append("happy")
        return 3


class Gateway(FakeGateway):
    async def preflight(self) -> None:
        self.counts["preflight"] += 1

    async def connected_servers(self) -> list[str]:
        return ["s1"]


def tree(root: Path) -> Path:
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(4):
            (root / f"d{d}" / f"f{f}.txt").write_text(f"file {d}/{f} " * 40)
    return root


def backup(tmp_path: Path, gw: Any, target: RecordingTarget, **job: Any) -> BackupRun:
    from twisted.internet import reactor

    conf = cfg.load([], [])
    rep = Reporter(out=open(os.devnull, "w"), err=open(os.devnull, "w"))
    source = local_source(conf, rep, str(tmp_path / "src"))
    sel = selection(conf, SelectArgs(), source.label)
    return BackupRun(Runtime(reactor, rep), conf, gw, target, source, Job("host", ("t",), **job), sel,
                     str(tmp_path / "queue"), trees_path(target.path, source.label))


@pytest_twisted.ensureDeferred
async def test_a_first_backup_asks_in_this_order(tmp_path):
    tree(tmp_path / "src")
    gw, target = Gateway(), RecordingTarget(tmp_path)
    made = await backup(tmp_path, gw, target).run()
    # (a run the source's lock would refuse is refused before the walk: asked first; the history is
    # listed for the cache's rebuild alone, not again after the record: see the next test)
    assert target.events == [("free?", False), ("lock", False), ("repository", True), "backups",
                             ("repository.add", made.generation), "forget_backups", "unlock"]
    assert made.backup.cap == made.cap and made.backup.tags == ("t",)
    assert gw.counts["preflight"] == 1 and gw.dirs
    # The source's own lock: a backup of another source may write the cache at the same time.
    assert target.scopes == [source_scope(os.fsencode(str(tmp_path / "src")))]


@pytest_twisted.ensureDeferred
async def test_an_unchanged_rerun_keeps_the_tree_and_stores_nothing(tmp_path):
    tree(tmp_path / "src")
    gw, target = Gateway(), RecordingTarget(tmp_path)
    first = await backup(tmp_path, gw, target).run()
    stored = (len(gw.objects), len(gw.dirs))
    target.events.clear()
    second = await backup(tmp_path, gw, target).run()
    assert second.cap == first.cap
    assert (len(gw.objects), len(gw.dirs)) == stored
    # The cache is asked whether the last backup is still kept (under the lock); no rebuild.  The
    # repository's history is never listed: a backup does not pay for every backup before it.
    assert target.events == [("free?", False), ("lock", False), ("repository", True),
                             ("repository.add", second.generation), "forget_backups", "unlock"]


@pytest_twisted.ensureDeferred
async def test_queue_only_touches_neither_grid_nor_cache(tmp_path):
    tree(tmp_path / "src")
    target = RecordingTarget(tmp_path)
    queued = await backup(tmp_path, None, target).queue_only()
    assert queued.entries == 16 and os.path.exists(queued.path)
    assert target.events == []


@pytest_twisted.ensureDeferred
async def test_an_unhappy_grid_is_a_grid_error_and_nothing_is_recorded(tmp_path):
    tree(tmp_path / "src")
    gw, target = Gateway(attempts=1), RecordingTarget(tmp_path)
    for n in range(1, 40):
        gw.fail[("mkdir", n)] = "unhappy"
    with pytest.raises(GridError) as e:
        await backup(tmp_path, gw, target).run()
    assert "Nothing was recorded" in e.value.message
    assert ("repository.add", 1) not in target.events and target.events[-1] == "unlock"
    assert not target.repo.records


@pytest_twisted.ensureDeferred
async def test_rebuild_cache_asks_for_a_fresh_cache(tmp_path):
    tree(tmp_path / "src")
    gw, target = Gateway(), RecordingTarget(tmp_path)
    await backup(tmp_path, gw, target, rebuild_cache=True).run()
    assert target.events[:2] == [("free?", True), ("lock", True)]  # (the whole cache's lock)


@pytest_twisted.ensureDeferred
async def test_the_operation_counts_the_walk_for_the_manhole(tmp_path):
    from twisted.internet import reactor

    from lafs_backup.report import Operation

    tree(tmp_path / "src")
    target = RecordingTarget(tmp_path)
    run = backup(tmp_path, None, target)
    op = Operation("backup", run.rt.reporter)
    run.rt = Runtime(reactor, run.rt.reporter, op)
    run2 = BackupRun(run.rt, run.conf, None, target, run.source, run.job, run.sel, run.qpath, run.trees_at)
    await run2.queue_only()
    assert op.totals is run2.totals and op.totals[0] == 16 and op.totals[1] > 0


class KnowingTarget(RecordingTarget):
    """A target whose history is the entry cache's (the backups made through it)."""

    async def backups(self) -> list[Any]:
        self.events.append("backups")
        db = LocalDB(self.path, "fake")
        try:
            return db.history.backups()
        finally:
            db.close()


@pytest_twisted.ensureDeferred
async def test_skip_if_unchanged_records_nothing_while_the_snapshot_is_the_last_ones(tmp_path):
    tree(tmp_path / "src")
    gw, target = Gateway(), KnowingTarget(tmp_path)
    first = await backup(tmp_path, gw, target, skip_if_unchanged=True).run()
    assert first.backup is not None and first.kept is None  # (none before it)
    target.events.clear()
    second = await backup(tmp_path, gw, target, skip_if_unchanged=True).run()
    assert second.cap == first.cap and second.backup is None
    assert second.kept is not None and second.kept.short_id == first.backup.short_id
    assert not [e for e in target.events if isinstance(e, tuple) and e[0] == "repository.add"]
    assert "forget_backups" not in target.events and len(target.repo.records) == 1
    (tmp_path / "src" / "d1" / "f2.txt").write_text("changed")
    third = await backup(tmp_path, gw, target, skip_if_unchanged=True).run()
    assert third.backup is not None and third.cap != first.cap and len(target.repo.records) == 2
    # Another host's backups are not this one's last: host "other" records although the snapshot is the same.
    run = backup(tmp_path, gw, target, skip_if_unchanged=True)
    run.job = Job("other", (), skip_if_unchanged=True)
    assert (await run.run()).backup is not None
