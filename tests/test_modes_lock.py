"""Backup modes (stat, checksum, verify, force) and the entry-cache lock, against the real grid."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from conftest import cli_env, make_tree
from lafs_backup.snapshot import file_key


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
         "from lafs_backup.lock import CacheLock;"
         "l = CacheLock(sys.argv[1], None); l.acquire(); print('held', flush=True); time.sleep(60)",
         str(lock), str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))],
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
