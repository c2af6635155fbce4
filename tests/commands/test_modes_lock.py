"""Backup modes (stat, checksum, verify, force) and the entry-cache lock, against the real grid."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time

from conftest import ROOT, cli_env, json_lines, make_tree
from lafs_backup.store.snapshot import file_key


def _summary(r) -> dict:
    return json.loads(r.out.splitlines()[-1])


def test_checksum_rereads_everything_and_stores_nothing_new(lb, grid, tmp_path):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    lb("backup", str(src), check=True)
    before = grid.requests()
    s = _summary(lb("--json", "backup", str(src), "--mode", "checksum", check=True))
    assert s["bytes_read"] > 0 and s["files_uploaded"] == 0 and s["files_unchanged"] == s["files"]
    assert grid.requests() == before  # content known: no upload, no new directory


def test_force_stores_everything_again(lb, grid, tmp_path):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    lb("backup", str(src), check=True)
    before = grid.requests()
    s = _summary(lb("--json", "backup", str(src), "--mode", "force", check=True))
    after = grid.requests()
    assert after["put"] > before["put"] and after["mkdir"] - before["mkdir"] >= s["dirs"]
    assert s["files_uploaded"] > 0


def test_verify_reports_content_changed_under_unchanged_stat(lb, home, tmp_path):
    src = make_tree(tmp_path / "src", small=20, medium=0, large=0)
    lb("backup", str(src), check=True)
    victim = sorted(src.rglob("*.txt"))[3]
    rel = os.fsencode(str(victim.relative_to(src)))
    st = os.stat(victim)
    # The cache says what the file held when it was stored; make that differ
    # from what it holds now, as bit rot under unchanged stat data would.
    cache = next(home.rglob("*.sqlite"))
    db = sqlite3.connect(cache)
    key = file_key(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    assert db.execute("UPDATE objects SET sha256=? WHERE key=?", (b"\1" * 32, key)).rowcount == 1
    db.commit()
    db.close()
    r = lb("backup", str(src), "--mode", "verify")
    assert r.code == 6, r.err
    assert f"problem: {victim.relative_to(src)}: content changed although its size, mtime" in r.err
    assert r.err.count("problem:") == 1
    assert lb("backup", str(src), "--mode", "verify").code == 0  # recorded again: clean now


def test_second_run_is_refused_and_a_stale_lock_is_taken_over(lb, grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    lb("backup", str(src), check=True)
    lock = next(home.rglob("*.sqlite")).with_name(next(home.rglob("*.sqlite")).name + ".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from lafs_backup.system.lock import CacheLock;"
         "l = CacheLock(sys.argv[1], None); l.acquire(); print('held', flush=True); time.sleep(60)",
         str(lock), str(ROOT)],
        stdout=subprocess.PIPE, env=cli_env(home))
    try:
        assert holder.stdout.readline().strip() == b"held"
        t0 = time.monotonic()
        r = lb("backup", str(src))
        assert r.code == 5, r.err
        assert f"pid {holder.pid}" in r.err and "started 20" in r.err
        assert time.monotonic() - t0 < 10  # at once, not after waiting
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its record is still in the file.
    assert lock.read_text().split()[0] == str(holder.pid)
    r = lb("backup", str(src))
    assert r.code == 0, r.err
    assert f"taking over the lock left by pid {holder.pid}" in r.err


# -- runs that meet each other ---------------------------------------------------------------


def _start(args, home):
    return subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def _held_in_phase_two(grid, home, *args: str):
    """A backup (``args``) started through a proxy that holds its first upload until the block ends:
    while the block runs, the backup is in phase two, holding its lock, and cannot finish.  Yields
    the process; waits for it to end (and checks it succeeded) after letting the upload go."""
    import threading

    from faultproxy import FaultProxy

    reached, release = threading.Event(), threading.Event()

    def plan(method: str, path: str, n: int):
        if method == "PUT" and path.startswith("/uri"):  # an upload: the run is in phase two, under its lock
            reached.set()
            release.wait(600)
        return None

    with FaultProxy(grid.url, plan) as proxy:
        held = _start(["--url", proxy.url, *args], home)
        try:
            if not reached.wait(600):
                raise AssertionError(f"the backup never uploaded: {held.communicate(timeout=60)[1]}")
            yield held
        finally:
            release.set()
            _, err = held.communicate(timeout=600)
        assert held.returncode == 0, err


def test_readers_work_and_writers_wait_or_refuse_while_a_backup_runs(lb, grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=120, medium=1, large=0)
    first = lb("backup", str(src), check=True).out.strip()
    for p in sorted(src.rglob("*.txt"))[:100]:
        p.write_bytes(p.read_bytes() + b"more\n")
    with _held_in_phase_two(grid, home, "backup", str(src)) as running:
        # Readers: no lock, no waiting, no "damaged cache".
        r = lb("list", "--json")
        assert r.code == 0 and [b["cap"] for b in json_lines(r.out)] == [first], r.err
        out = tmp_path / "out"
        r = lb("restore", "1", "--target", str(out))
        assert r.code == 0, r.err
        r = lb("diff", "1", "--live")
        assert r.code == 1 and "rebuild" not in r.err, r.err
        r = lb("verify", "latest", "--sample", "10")
        assert r.code == 0, r.err
        # Writers: refused at once (exit 5) by default ...
        r = lb("cleanup", "--keep-last", "5")
        assert r.code == 5 and "holds the lock" in r.err and "--wait-lock SECONDS" in r.err and "rebuild" not in r.err, r.err
        assert f"pid {running.pid}" in r.err  # (named from the backup's own lock file)
        # ... or wait for the lock, and then run.
        check = _start(["--url", grid.url, "--wait-lock", "600", "check"], home)
        _wait_for_line(check, f"waiting for pid {running.pid}")
    _, err = check.communicate(timeout=600)
    assert check.returncode == 0, err
    assert len(json_lines(lb("list", "--json", check=True).out)) == 2


def test_the_shipped_timers_firing_together_run_one_after_the_other(lb, grid, home, tmp_path):
    """After downtime, Persistent=true timers start the backup, check and cleanup units at once;
    the units wait for the lock (as config/*.service do), so all three succeed."""
    import re

    units = ROOT / "config"
    waits = {}
    for name in ("lafs-backup.service", "lafs-backup-check.service", "lafs-backup-cleanup.service"):
        m = re.search(r"--wait-lock (\d+)", (units / name).read_text())
        assert m, f"{name} does not wait for the lock"
        waits[name] = m.group(1)
    src = make_tree(tmp_path / "src", small=40, medium=1, large=0)
    lb("backup", str(src), check=True)
    for p in sorted(src.rglob("*.txt"))[:20]:
        p.write_bytes(p.read_bytes() + b"more\n")
    runs = [_start(["--url", grid.url, "--wait-lock", waits["lafs-backup.service"], "backup", str(src)], home),
            _start(["--url", grid.url, "--wait-lock", waits["lafs-backup-check.service"], "check", "-r"], home),
            _start(["--url", grid.url, "--wait-lock", waits["lafs-backup-cleanup.service"], "cleanup",
                    "--keep-daily", "7"], home)]
    for p in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "Traceback" not in err and "rebuild" not in err


def test_a_busy_cache_is_not_called_damaged(tmp_path, monkeypatch):
    """A writer that holds the database longer than the busy timeout: exit 5 saying so, never
    the --rebuild-cache advice that would set a healthy cache aside."""
    import pytest

    from lafs_backup.db import database
    from lafs_backup.db.local import LocalDB
    from lafs_backup.errors import CacheBusyError

    path = str(tmp_path / "c.sqlite")
    LocalDB(path, "http://g/").close()
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CacheBusyError) as e:
            LocalDB(path, "http://g/")
        assert e.value.exit_code == 5 and "rebuild" not in str(e.value) and "busy" in str(e.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_readers_beside_a_running_check_never_break_its_cache(lb, grid, home, tmp_path):
    """``list`` (and any command that reads the cache without the lock) run while ``check``
    writes to it: the check still succeeds.  Each run that opened the cache a second time closed
    a descriptor of it behind sqlite's back, dropping its locks; the check's cache then failed
    with a disk I/O error."""
    src = make_tree(tmp_path / "src", small=40, medium=1, large=0)
    lb("backup", str(src), check=True)
    lb("backup", str(src), check=True)
    check = _start(["--url", grid.url, "check", "-r"], home)
    readers = [_start(["--url", grid.url, "list"], home) for _ in range(3)]
    for p in [check, *readers]:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "disk I/O error" not in err


def _wait_for_line(p, text: str) -> list[str]:
    """Read ``p``'s stderr until a line holding ``text`` (the lines read); fails if it ends first."""
    seen = []
    for line in p.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the run ended without saying {text!r}:\n{''.join(seen)}")


def test_backups_of_two_sources_run_at_once_and_the_same_source_waits(lb, grid, home, tmp_path):
    """Backup A is held in phase two, holding its source's lock: its first upload waits at a proxy
    until the test lets it go.  Meanwhile a backup of another source starts and finishes, a second
    backup of A is refused naming --wait-lock, and one with --wait-lock says it waits for A.  A
    goes through the proxy, B straight to the gateway: two URLs of one grid, one cache."""
    from treecompare import differences

    a = make_tree(tmp_path / "a", small=40, medium=2, large=0, seed=1)
    b = make_tree(tmp_path / "b", small=40, medium=2, large=0, seed=2)
    with _held_in_phase_two(grid, home, "backup", str(a)) as held:
        # Another source: runs to the end beside A.
        r = lb("backup", str(b))
        assert r.code == 0, r.err
        assert held.poll() is None  # (A's upload is still held: it cannot have finished)
        # The same source: refused at once, naming the holder and --wait-lock, before its walk (which
        # would have written the source's queue anew, under A's phase two) ...
        [queue] = (home / "state" / "lafs-backup" / "queues").glob(f"{a.name}.*.queue")
        before = queue.stat()
        r = lb("backup", str(a))
        assert r.code == 5, r.err
        assert f"pid {held.pid}" in r.err and "--wait-lock SECONDS" in r.err, r.err
        after = queue.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        # ... or, with --wait-lock, waiting for it.
        waiting = _start(["--url", grid.url, "--wait-lock", "600", "backup", str(a)], home)
        _wait_for_line(waiting, f"waiting for pid {held.pid}")
    _, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err
    state = home / "state" / "lafs-backup"
    assert len(list(state.glob("entry-cache.*.sqlite"))) == 1  # one grid, one cache, whatever the URL
    assert len(list((state / "repositories").glob("*.key"))) == 1
    backups = json_lines(lb("list", "--json", check=True).out)
    assert sorted(x["source"] for x in backups) == sorted([str(a), str(a), str(b)])
    for src in (a, b):
        out = tmp_path / f"restored-{src.name}"
        lb("restore", "latest", "--source", str(src), "--target", str(out), check=True)
        assert differences(src, out) == []
