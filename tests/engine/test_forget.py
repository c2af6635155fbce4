"""Forgetting: which backups a policy or names choose, per group, and what forgetting asks of the
repository, the gateway, the result files and the cache (recording fakes)."""

from __future__ import annotations

import pytest
import pytest_twisted

from lafs_backup.engine.forget import by_name, by_policy, forget, only_theirs
from lafs_backup.errors import SnapshotError, UsageError
from lafs_backup.history import Backup
from lafs_backup.repository import RepoKey
from lafs_backup.upkeep.retention import Policy

DAY = 86400.0


def b(i: int, ts: float, source: bytes = b"/src", host: str = "h", **kw) -> Backup:
    return Backup(f"w/r{i}", i, f"URI:DIR2-CHK:{i}", source, "src", ts, host=host, row=i, writer="w",
                  record=f"r{i}", **kw)


def test_a_policy_keeps_each_groups_own_newest():
    everything = [b(1, 1 * DAY), b(2, 2 * DAY), b(3, 3 * DAY), b(4, 2.5 * DAY, source=b"/other")]
    future: list[Backup] = []
    v = by_policy(everything, Policy(last=1), ("host", "source"), everything, None, 10 * DAY, future.append)
    forget_, keep = v.split(everything)
    assert [x.generation for x in forget_] == [1, 2]
    assert [x.generation for x in keep] == [3, 4]  # /other's only backup is its newest: kept
    assert set(v.reasons.values()) == {"not kept by the policy for /src on h"}
    assert future == []


def test_a_backup_stamped_in_the_future_is_kept_and_said():
    everything = [b(1, 1 * DAY), b(2, 20 * DAY)]
    future: list[Backup] = []
    v = by_policy(everything, Policy(last=1), ("host", "source"), everything, None, 10 * DAY, future.append)
    assert [x.generation for x in future] == [2]
    assert "w/r2" not in v.reasons


def test_names_and_up_to():
    everything = [b(1, 1 * DAY), b(2, 2 * DAY), b(3, 3 * DAY), b(4, 1.5 * DAY, source=b"/other")]
    v = by_name(everything, [everything[1]], [], True, ("host", "source"))
    assert v.reasons == {"w/r2": "named", "w/r1": "older than a named backup (--up-to)"}
    v = by_name(everything, [], [3], False, ("host", "source"))
    assert v.reasons == {"w/r3": "named"}
    with pytest.raises(SnapshotError):
        by_name(everything, [], [9], False, ())
    with pytest.raises(UsageError):
        by_name(everything, [], [], False, ())


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        # (a repository with no custodian's inbox: nothing is asked of one)
        self.key = RepoKey("URI:DIR2:no-inbox")
        self.gw = self

    async def forget(self, records, host=None):
        self.events.append(("repository.forget", sorted(r.generation for r in records)))

    async def unlink(self, d, name):
        self.events.append(("unlink", d, name))

    def forget_rows(self, rows):
        self.events.append(("cache.forget", sorted(rows)))
        return 7


class Cache:
    def __init__(self, rec: Recorder) -> None:
        self.forget = rec.forget_rows


@pytest_twisted.ensureDeferred
async def test_forgetting_asks_each_place_once(tmp_path):
    result = tmp_path / "results"
    result.write_text("t /src URI:DIR2-CHK:1\nt /src URI:DIR2-CHK:2\n")
    rec = Recorder()
    gone = [b(1, DAY, link_dir="URI:DIR2:d", link_name="n1", result_file=str(result)), b(2, 2 * DAY)]
    rows = await forget(gone, Cache(rec), rec, rec)
    assert rows == 7
    assert rec.events == [("repository.forget", [1, 2]), ("unlink", "URI:DIR2:d", "n1"), ("cache.forget", [1, 2])]
    assert result.read_text() == "t /src URI:DIR2-CHK:2\n"


@pytest_twisted.ensureDeferred
async def test_only_the_forgotten_backups_storage_indexes():
    manifests = {"URI:DIR2-CHK:1": [b'{"storage-index": "a"}', b'{"storage-index": "b"}'],
                 "URI:DIR2-CHK:2": [b'{"storage-index": "b"}', b'{"storage-index": "c"}']}

    class Gateway:
        async def stream_manifest(self, cap, sink):
            for line in manifests[cap]:
                sink(line + b"\n")

    assert await only_theirs(Gateway(), [b(1, DAY)], [b(2, 2 * DAY)]) == ["a"]
