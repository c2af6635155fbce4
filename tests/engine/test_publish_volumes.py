"""Recording a backup in the repository costs the same after many backups as after a few: each
writer's records go to volumes of at most ``VOLUME_RECORDS`` (a Tahoe mutable directory is read and
written whole), and every volume is read back by a new machine from the key alone."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any, Mapping, Sequence

import pytest
import pytest_twisted

from lafs_backup import repository
from lafs_backup.db.local import LocalDB
from lafs_backup.engine.publish import publish
from lafs_backup.report import Reporter
from lafs_backup.repository import Repository, volume_for, writer_name


class MutableDirs:
    """Tahoe's mutable directories as the repository uses them, counting what each request costs:
    ``read`` and ``written`` add up the children of every directory read or rewritten (Tahoe reads
    and writes a mutable directory whole, whatever the request names)."""

    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, tuple[str, Any]]] = {}
        self.counts: Counter[str] = Counter()

    async def mkdir_mutable(self) -> str:
        cap = f"URI:DIR2:{len(self.dirs):04d}"
        self.dirs[cap] = {}
        self.counts["mkdir"] += 1
        return cap

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, Any]], replace: bool = True) -> bool:
        d = self.dirs[dircap]
        self.counts["link"] += 1
        self.counts["read"] += len(d)
        if not replace and any(name in d for name in children):
            return False
        d.update({name: (cap, json.loads(json.dumps(meta))) for name, (cap, meta) in children.items()})
        self.counts["written"] += len(d)
        return True

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> Any:
        assert not path
        d = self.dirs[cap]
        self.counts["get"] += 1
        self.counts["read"] += len(d)
        kids = {}
        for name, (ccap, meta) in d.items():
            mutable = ccap.startswith("URI:DIR2:")
            info = {"rw_uri" if mutable else "ro_uri": ccap, "metadata": meta or {}}
            kids[name] = ["dirnode" if ccap.startswith("URI:DIR2") else "filenode", info]
        return ["dirnode", {"rw_uri": cap, "children": kids}]

    async def unlink(self, dircap: str, name: str) -> bool:
        self.counts["unlink"] += 1
        self.counts["read"] += len(self.dirs[dircap])
        return self.dirs[dircap].pop(name, None) is not None


async def backups(n: int, tmp_path, limit: int, monkeypatch) -> tuple[MutableDirs, Repository, LocalDB, Counter[str]]:
    """``n`` backups of one source recorded and published; returns the gateway, the repository, the
    cache, and what the last one's publication cost."""
    monkeypatch.setattr(repository, "VOLUME_RECORDS", limit)
    gw = MutableDirs()
    repo = await Repository.create(gw)
    db = LocalDB(str(tmp_path / "cache.sqlite"), "fake")
    rep = Reporter(out=io.StringIO(), err=io.StringIO())
    last: Counter[str] = Counter()
    for i in range(n):
        db.history.record_backup(i + 1, f"URI:DIR2-CHK:snap{i}", b"/src", "src", 1_000_000.0 + i, host="h",
                                 summary={"files": i})
        before = Counter(gw.counts)
        await publish(rep, repo, db.history, b"/src")
        last = gw.counts - before
    assert "repository" not in rep.err.getvalue()
    return gw, repo, db, last


@pytest_twisted.ensureDeferred
async def test_recording_a_backup_costs_no_more_after_many(tmp_path, monkeypatch):
    gw, _, db, few = await backups(12, tmp_path / "a", 10, monkeypatch)
    db.close()
    (tmp_path / "b").mkdir()
    gw, _, db, many = await backups(95, tmp_path / "b", 10, monkeypatch)
    db.close()
    # The same requests with eight times the history, and the children read or rewritten bounded by
    # a volume's (the writers' directory alone grows: one entry per volume).
    assert {k: many[k] for k in ("get", "link", "mkdir")} == {k: few[k] for k in ("get", "link", "mkdir")}
    # (one directory of every record would have read 2 x 94 and rewritten 95)
    assert many["read"] <= 95 // 10 + 2 * 10 and many["written"] <= 10
    # The largest directory holds one volume's records, the writers (and the repository's root).
    assert max(len(d) for d in gw.dirs.values()) == 10


@pytest_twisted.ensureDeferred
async def test_every_volume_is_read_from_the_key_alone(tmp_path, monkeypatch):
    gw, repo, db, _ = await backups(25, tmp_path, 10, monkeypatch)
    # A new machine: the key alone (no cache) lists every backup, oldest first, each once.
    records = await Repository(gw, repo.key).records()
    assert [r.cap for r in records] == [f"URI:DIR2-CHK:snap{i}" for i in range(25)]
    base = writer_name("h", b"/src")
    assert Counter(r.writer for r in records) == {base: 10, f"{base}.v2": 10, f"{base}.v3": 5}
    # The cache knows where each went (the next record's volume is decided from it).
    assert db.history.held(base) == {base: 10, f"{base}.v2": 10, f"{base}.v3": 5}
    assert not db.history.unrecorded(b"/src")
    # Forgetting reaches records in any volume.
    await repo.forget([r for r in records if r.writer == f"{base}.v2"][:3])
    assert len(await repo.records()) == 22
    db.close()


@pytest.mark.parametrize("held, expected", [
    ({}, "w.0123"),
    ({"w.0123": 3}, "w.0123"),
    ({"w.0123": 10}, "w.0123.v2"),
    ({"w.0123": 10, "w.0123.v2": 4}, "w.0123.v2"),
    ({"w.0123": 10, "w.0123.v2": 10}, "w.0123.v3"),
    # A lost cache: the volumes made since are not known, and the newest known one is filled.
    ({"w.0123.v7": 2}, "w.0123.v7"),
    # Other writers' directories (another source, another host) are not this writer's volumes.
    ({"w.0123x": 10, "w.0123.vx": 10, "x.w.0123.v9": 1, "w.0123.v2.v5": 1}, "w.0123"),
])
def test_the_volume_a_record_goes_to(held, expected):
    assert volume_for("w.0123", held, 10) == expected
