"""Reliability, scenario 1: SIGKILL at random moments of phase one and phase two.

A tree of a few thousand files, packs and deduplication in play, changed a
little before each round; rounds go on until at least 5 kills landed in
phase one and 16 in phase two.  Each round first measures what an
uninterrupted run from the same cache sends (a reference run on a copy of the cache), then
kills the real run several times at random points, checks the cache after
each kill, and finally lets a run finish.  Together the killed runs and the
finishing one may send only what the reference run sent, plus what was in
flight at each kill.  Every round's backup restores identically.

Marked slow: the longest test of the suite.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cache_backups, check_ok, cli_env, make_tree, restored_ok, run_cli

pytestmark = pytest.mark.slow

#: Rounds go on until this many kills landed in each phase (a run that finishes before its
#: kill lands does not count), within MAX_ROUNDS.
ENOUGH = {"phase one": 5, "phase two": 16}
MAX_ROUNDS = 16
KILLS_PER_ROUND = 3
JOBS = 6  # operation.jobs: uploads in flight when a kill lands


def mutate(src: Path, rng: random.Random, round_no: int) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for p in rng.sample(files, 8):
        with open(p, "ab") as f:
            f.write(rng.randbytes(rng.randrange(1, 3000)))
    for p in rng.sample(files, 3):
        if p.exists():
            p.unlink()
    d = src / f"round{round_no}"
    d.mkdir()
    for i in range(40):
        (d / f"new{i}.bin").write_bytes(rng.randbytes(rng.randrange(0, 20000)))
    (d / "big.bin").write_bytes(rng.randbytes(300_000))  # stored on its own, not packed
    survivor = next(p for p in files if p.exists())
    (d / "copy.bin").write_bytes(survivor.read_bytes())  # deduplicated


def cache_files(state: Path) -> list[Path]:
    return sorted(p for p in state.glob("entry-cache.*") if not p.name.endswith(".lock"))


def cache_consistent(state: Path) -> int:
    """The cache passes sqlite's own check; the number of backups it records (0: no cache yet,
    killed in phase one of the first run)."""
    found = [p for p in cache_files(state) if p.suffix == ".sqlite"]
    return cache_backups(found[0]) if found else 0


def test_sigkill_at_random_moments(grid, tmp_path):
    rng = random.Random(int(os.environ.get("LAFS_BACKUP_KILL_SEED", "20261121")))
    src = make_tree(tmp_path / "src", small=2500, medium=3, large=0)
    conf = tmp_path / "kill.yaml"
    conf.write_text("destination:\n  pack:\n    target_size: 65536\n    max_file_size: 65536\n")
    base = ["--url", grid.url, "-c", str(conf), "-o", f"operation.jobs={JOBS}"]
    home, ref_home = tmp_path / "home", tmp_path / "ref"
    state, ref_state = home / "state" / "lafs-backup", ref_home / "state" / "lafs-backup"
    queues = state / "queues"
    def sent() -> int:  # uploads and directories the gateway served
        return sum(grid.requests().values())

    kills = {"phase one": 0, "phase two": 0}
    finished = 0
    backups = 0  # recorded in the cache so far

    for round_no in range(MAX_ROUNDS):
        if round_no:
            mutate(src, rng, round_no)
            # What an uninterrupted run from the same cache sends.
            shutil.rmtree(ref_state, ignore_errors=True)
            ref_state.mkdir(parents=True)
            for f in cache_files(state):
                shutil.copy(f, ref_state / f.name)
            mark = sent()
            run_cli([*base, "backup", str(src)], ref_home, check=True)
            need = sent() - mark
        else:
            need = None  # the first backup: everything is missing

        mark = sent()
        for k in range(KILLS_PER_ROUND):
            old_queue = {q.name: q.read_bytes() for q in queues.glob("*")} if queues.exists() else {}
            p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *base, "backup", str(src)],
                                 env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
            tmp_queue = None
            if rng.random() < 0.4:
                # Phase one: while the queue is being written, a random moment later.
                deadline = time.monotonic() + 60
                while tmp_queue is None and p.poll() is None and time.monotonic() < deadline:
                    tmp_queue = next(iter(queues.glob(f"*.tmp.{p.pid}")), None) if queues.exists() else None
                    time.sleep(0.001)
                time.sleep(rng.uniform(0, 0.05))
            else:
                # Phase two: after a random number of uploads of this run (the first one or later).
                start = sent()
                target = rng.randrange(1, max(2, (need or 60) * 2 // 3))
                deadline = time.monotonic() + 120
                while sent() - start < target and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.05))
            if p.poll() is not None:
                err = p.stderr.read().decode()
                assert p.returncode == 0, err  # finished before the kill landed
                finished += 1
                backups += 1
                assert cache_consistent(state) == backups
                break
            p.kill()
            p.wait()
            p.stderr.close()
            # Still there after the kill: the run died before renaming it over the queue.
            in_phase_one = tmp_queue is not None and tmp_queue.exists()
            # The killed run left a consistent cache, and recorded its backup only if it had
            # finished it (the record is its last step: the kill landed while it exited).
            now = cache_consistent(state)
            assert now in (backups, backups + 1)
            if now > backups:
                finished += 1
                backups = now
                break
            kills["phase one" if in_phase_one else "phase two"] += 1
            if in_phase_one:  # the previous queue is untouched: the new one was still a temp file
                for name, data in old_queue.items():
                    if ".tmp." not in name:
                        assert (queues / name).read_bytes() == data
        r = run_cli([*base, "backup", str(src)], home, check=True)
        total = sent() - mark
        if need is not None:
            # Only what was missing was sent again: at most the uploads in flight at each kill
            # (and a pack that was sealed again with other members) come on top.
            assert total <= need + KILLS_PER_ROUND * (JOBS + 2), (round_no, need, total)
        backups += 1
        assert cache_consistent(state) == backups
        assert not list(queues.glob("*.tmp.*")), "a killed run's temp queue was left behind"
        dest = tmp_path / f"restored{round_no}"
        restored_ok(grid.url, home, src, dest, r.out.strip())
        shutil.rmtree(dest)
        if all(kills[k] >= n for k, n in ENOUGH.items()):
            break

    print("kill points:", kills, "runs that finished before the kill:", finished)
    assert sum(kills.values()) >= 20, kills
    assert kills["phase one"] >= 3 and kills["phase two"] >= 10, kills
    check_ok(grid.url, home)


# -- 5. kills in the middle of commits: the cache and the queue -------------------------------------

_CACHE_WRITER = r"""
import os, sys
from lafs_backup.db.local import LocalDB
db = LocalDB(sys.argv[1], "http://gateway.invalid/", commit_rows=0, commit_seconds=0)
c = db.objects
batch = int(sys.argv[2])
start = db.db.conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0] // batch
gen = c.begin_generation(b"/src")
for i in range(start, start + 100000):
    for j in range(batch):
        c.store(b"%d-%d" % (i, j), "URI:CHK:%d:%d" % (i, j), gen, os.urandom(32))
    if i % 7 == 6:
        db.history.record_backup(gen, "URI:DIR2-CHK:%d" % i, b"/src", "src", float(i))
        gen = c.begin_generation(b"/src")
    else:
        c.commit()
    sys.stdout.write("%d\n" % i)
    sys.stdout.flush()
"""

_QUEUE_WRITER = r"""
import sys
from lafs_backup.store.entry import Entry
from lafs_backup.backup.queue import write_queue
n = int(sys.argv[2])
while True:
    entries = (Entry("f", b"dir/file%08d" % i, 0o100644, 0, 0, i, i, i, 1, i, 1) for i in range(n))
    write_queue(sys.argv[1], b"/src", entries)
    sys.stdout.write("%d\n" % n)
    sys.stdout.flush()
    n += 1
"""


def _kill_after(code: str, args: list[str], lines: int, rng: random.Random) -> list[str]:
    """Run ``code``; SIGKILL it a random moment after it printed ``lines`` lines; what it printed."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                         env=cli_env(Path("/nonexistent")))
    said = [p.stdout.readline().strip() for _ in range(lines)]
    time.sleep(rng.uniform(0, 0.03))
    p.kill()
    p.wait()
    said += [ln.strip() for ln in p.stdout.read().splitlines()]
    p.stdout.close()
    assert all(said), "the writer died on its own"
    return said


def test_kills_during_cache_commits(tmp_path):
    """A kill in the middle of a commit loses nothing committed and never half a transaction."""
    rng = random.Random(5)
    db_path = tmp_path / "cache.sqlite"
    batch = 400
    committed = -1
    for _ in range(30):
        said = _kill_after(_CACHE_WRITER, [str(db_path), str(batch)], rng.randrange(1, 4), rng)
        committed = max(committed, int(said[-1]))
        backups = cache_backups(db_path)  # sqlite's own check passes
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
            batches = db.execute("SELECT COUNT(DISTINCT substr(key, 1, instr(key, '-'))) "
                                 "FROM objects").fetchone()[0]
        finally:
            db.close()
        # Whole transactions only, and every one that was reported committed is there.
        assert rows == batches * batch
        assert batches >= committed + 1
        assert backups == batches // 7
    assert committed >= 60


def test_kills_while_the_queue_is_written(tmp_path):
    """The queue file is always a whole queue: the previous one or the new one, never a mix."""
    from lafs_backup.backup.queue import QueueReader

    rng = random.Random(6)
    path = tmp_path / "queue"
    for _ in range(30):
        said = _kill_after(_QUEUE_WRITER, [str(path), str(rng.randrange(20000, 40000))], 1, rng)
        with QueueReader(str(path), expect_source=b"/src") as q:
            n = sum(1 for _ in q)
        assert n == q.count and str(n) in said  # one of the queues written, complete
        # The killed writer's temp file is removed by the next writer: at most its own is left.
        assert len([p for p in tmp_path.iterdir() if p.name.startswith("queue.tmp.")]) <= 1
