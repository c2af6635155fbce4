"""The entry-cache locks: a scope's run beside another scope's, a whole-cache run alone, the holder named,
a dead holder's lock taken over, whether the run that finds it takes the lock shared or not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lafs_backup.errors import LockedError
from lafs_backup.system.lock import CacheLock, copy_scope, scope_path, source_scope


class Notes:
    def __init__(self) -> None:
        self.said: list[str] = []

    def note_once(self, key: str, message: str) -> None:
        self.said.append(message)


def test_scope_files_sit_beside_the_caches_lock_and_end_like_it(tmp_path):
    path = str(tmp_path / "entry-cache.g1.sqlite.lock")
    assert scope_path(path, source_scope(b"/a")) == str(tmp_path / f"entry-cache.g1.sqlite.{source_scope(b'/a')}.lock")
    assert source_scope(b"/a") != source_scope(b"/b") and source_scope(b"/a").startswith("source-")
    assert copy_scope("x").startswith("copy-") and "x" not in copy_scope("x")[5:]


def test_scopes_share_the_cache_and_a_whole_cache_run_waits_for_all(tmp_path):
    path = str(tmp_path / "c.lock")
    a, b = CacheLock(path, Notes(), "source-a"), CacheLock(path, Notes(), "source-b")
    a.acquire()
    b.acquire()
    with pytest.raises(LockedError) as e:
        CacheLock(path, Notes(), "source-a").acquire()
    assert e.value.details["pid"] == str(os.getpid()) and e.value.details["path"].endswith(".source-a.lock")
    whole = CacheLock(path, Notes())
    with pytest.raises(LockedError) as e:
        whole.acquire()
    assert e.value.details["pid"] == str(os.getpid())  # named from a scope's file: the cache's holds none
    assert not whole.held
    a.release()
    b.release()
    whole.acquire()
    with pytest.raises(LockedError) as e:
        CacheLock(path, Notes(), "source-c").acquire()
    assert e.value.details["pid"] == str(os.getpid()) and e.value.details["path"] == path
    whole.release()
    assert open(path).read() == "" and open(scope_path(path, "source-a")).read() == ""


def test_a_dead_holders_lock_is_taken_over_with_a_note(tmp_path):
    path = str(tmp_path / "c.lock")
    # A whole-cache run that died holding its lock (the kernel dropped it; its record stays).
    subprocess.run([sys.executable, "-c", "import sys; from lafs_backup.system.lock import CacheLock;"
                    "CacheLock(sys.argv[1], None).acquire()", path], check=True)
    assert open(path).read().split()[0].isdigit()
    notes = Notes()
    lock = CacheLock(path, notes, "source-a")  # shared on the cache's file: it takes over all the same
    lock.acquire()
    assert len(notes.said) == 1 and "taking over the lock left by pid" in notes.said[0]
    assert open(path).read() == ""  # (a shared holder writes nothing there: it empties the dead one's record)
    assert open(scope_path(path, "source-a")).read().split()[0] == str(os.getpid())
    lock.release()
