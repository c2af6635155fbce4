"""The host's side of the custodian when something goes wrong (engine/inbox.py, over an in-memory
gateway): publishing a manifest never fails a backup that is recorded already, and a forget request that
could not be linked says that nothing was forgotten."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from inboxfake import InboxGateway, verify_cap

from lafs_backup.custodian.manifest import Manifest, folder_name
from lafs_backup.engine import inbox
from lafs_backup.engine.forget import forget
from lafs_backup.errors import LafsBackupError
from lafs_backup.history import Backup
from lafs_backup.report import Reporter
from lafs_backup.repository import RepoKey, writer_name

REPO = RepoKey("URI:DIR2:repository-write-cap")
T0 = 1_800_000_000.0


@pytest.fixture
def host(tmp_path, monkeypatch) -> InboxGateway:
    monkeypatch.setattr(inbox, "state_dir", lambda: str(tmp_path / "host-state"))
    return InboxGateway()


def backup(gw: InboxGateway, gen: int, objects: set[int]) -> Backup:
    snap = f"snapshot-{gen}"
    gw.snapshots[snap] = [verify_cap(i) for i in sorted(objects)]
    return Backup(f"w/{gen}", gen, snap, b"/src", "src", T0 + gen, host="host")


@pytest_twisted.ensureDeferred
async def test_a_damaged_inbox_file_is_a_warning_once_the_backup_is_recorded(host, tmp_path, capsys):
    await inbox.create(host, REPO, str(tmp_path / "custodian.key"), "pb://tubid@tcp:127.0.0.1:1/introducer")
    path = inbox.inbox_file(REPO.writecap)
    Path(path).write_text("{ not json")
    assert await inbox.publish_manifest(Reporter(), host, REPO.writecap, backup(host, 1, {1, 2})) is None
    err = capsys.readouterr().err
    assert "warning: the lease manifest of this backup is not in the custodian's inbox" in err
    assert "is damaged" in err and path in err


@pytest_twisted.ensureDeferred
async def test_a_memory_that_cannot_be_written_is_a_warning_and_the_manifest_stands(host, tmp_path, capsys):
    await inbox.create(host, REPO, str(tmp_path / "custodian.key"), "pb://tubid@tcp:127.0.0.1:1/introducer")
    folder = folder_name(REPO.writecap, writer_name("host", b"/src"))
    memory = inbox._last_path(REPO.writecap, folder)
    os.makedirs(memory)  # (in its place, something this host cannot replace)
    b = backup(host, 1, {1, 2})
    m = await inbox.publish_manifest(Reporter(), host, REPO.writecap, b)
    assert m is not None and m.whole and m.objects == 2
    err = capsys.readouterr().err
    assert "the lease manifest of this backup is in the custodian's inbox, but this host could not remember it" in err
    # It is in the inbox all the same, and it is the manifest published.
    writecap = inbox.load_inbox(REPO.writecap).writecap
    (cap, _), = host.names(host.names(writecap)[folder][0]).values()
    assert Manifest.decode(host.objects[cap]) == m


class Repository:
    """What forgetting asks of a repository: its gateway and key, and its own forgetting (recorded)."""

    def __init__(self, gw: InboxGateway) -> None:
        self.gw = gw
        self.key = REPO
        self.forgotten: list = []

    async def forget(self, records, host=None) -> None:
        self.forgotten.extend(records)


@pytest_twisted.ensureDeferred
async def test_a_forget_request_that_cannot_be_linked_says_nothing_was_forgotten(host, tmp_path):
    await inbox.create(host, REPO, str(tmp_path / "custodian.key"), "pb://tubid@tcp:127.0.0.1:1/introducer")
    host.broken.add(("set_children", inbox.load_inbox(REPO.writecap).forget))
    repo = Repository(host)
    gone = [Backup("w/r1", 1, "snapshot-1", b"/src", "src", T0 + 1, host="host", writer="w", record="r1")]
    cache = SimpleNamespace(forget=lambda rows: 0)
    with pytest.raises(LafsBackupError) as e:
        await forget(gone, cache, repo, None)
    assert "nothing was forgotten; run the command again" in e.value.message
    assert "are forgotten" not in e.value.message and "URI:" not in e.value.message
    assert repo.forgotten == []  # (the custodian is asked first)
    host.broken.clear()
    await forget(gone, cache, repo, None)
    assert [r.generation for r in repo.forgotten] == [1]
    assert len(host.names(inbox.load_inbox(REPO.writecap).forget)) == 1
