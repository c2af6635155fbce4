"""``watch`` against the real grid: each settled burst of changes becomes one incremental snapshot that
restores exactly, a grid outage is ridden out, and SIGTERM stops it promptly with a state the next run
resumes from."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, json_lines, make_tree, restored_ok, run_cli
from faultproxy import FaultProxy
from treecompare import differences

pytestmark = pytest.mark.slow


class Watch:
    """A ``lafs-backup --json watch`` process, its JSON records collected as they come."""

    def __init__(self, url: str, home: Path, src: Path, *extra: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "lafs_backup", "--url", url, "--json", "watch", str(src), "--settle", "0.5",
             "--min-interval", "0", *extra], env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True)
        self.records: queue.Queue = queue.Queue()
        self.all: list[dict] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            rec = json.loads(line)
            self.all.append(rec)
            self.records.put(rec)

    def snapshot(self, timeout: float = 90) -> dict:
        """The next snapshot record."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0 and self.p.poll() is None, f"no snapshot (exit {self.p.poll()}): {''.join(self.err)}"
            try:
                rec = self.records.get(timeout=min(left, 1))
            except queue.Empty:
                continue
            if rec.get("type") == "snapshot":
                return rec

    def quiet(self, seconds: float) -> None:
        """No snapshot for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                rec = self.records.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                continue
            assert rec.get("type") != "snapshot", rec

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        t0 = time.monotonic()
        self.p.send_signal(sig)
        code = self.p.wait(timeout=30)
        return code, time.monotonic() - t0


def test_each_change_becomes_an_incremental_snapshot_that_restores(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=300, medium=3, large=0)
    w = Watch(grid.url, home, src)
    try:
        first = w.snapshot()
        assert first["incremental"] is False and first["files"] >= 300
        restored_ok(grid.url, home, src, tmp_path / "r0")

        # One changed file, three directories down: its pack, the directories up to the root, the
        # snapshot's objects and root, and the record in the repository.
        deep = sorted(p for p in src.rglob("*.txt") if len(p.relative_to(src).parts) >= 3)[0]
        with open(deep, "a") as f:
            f.write("one more line, long enough to be stored in a pack of its own\n")
        ev = w.snapshot()
        depth = len(deep.relative_to(src).parts)
        assert ev["incremental"] is True
        assert ev["files_uploaded"] == 1 and ev["files"] < 100, ev
        assert ev["dirs_rescanned"] == depth, ev
        # The directories on the way (the source root's included) are records of the index alone;
        # the objects directory, the index directory and the snapshot's root are Tahoe's.
        assert ev["dirs_indexed"] == depth and ev["dirs_created"] == 3, ev
        # Two uploads (the pack; the index chunk of the new directories, which links the previous
        # snapshot's chunks for the rest), those three directories, and the record (a link and two
        # listings of the writer's directory): no request for the directories on the way.
        assert ev["requests"].get("put") == 2 and ev["requests_total"] <= 8, ev
        restored_ok(grid.url, home, src, tmp_path / "r1")

        # A new directory with files, one of them in a subdirectory made at the same time.
        new = src / "new-dir"
        (new / "inner").mkdir(parents=True)
        for i in range(5):
            (new / f"f{i}.dat").write_bytes(os.urandom(200 + i))
        (new / "inner" / "deep.txt").write_text("made with its directory\n" * 10)
        # Files written within the settle window of the round's walk (these were written before
        # the new directory had a watch) wait for the next round.
        seen = [w.snapshot()]
        while sum(e["files_new"] for e in seen) < 6:
            assert seen[-1]["held"] > 0 and len(seen) < 3, seen
            seen.append(w.snapshot())
        assert all(e["incremental"] for e in seen) and sum(e["files_new"] for e in seen) == 6, seen
        restored_ok(grid.url, home, src, tmp_path / "r2")

        # A deleted directory.
        gone = sorted(p for p in src.iterdir() if p.is_dir() and p.name != "new-dir")[0]
        shutil.rmtree(gone)
        ev = w.snapshot()
        assert ev["incremental"] is True and ev["files_uploaded"] == 0, ev
        restored_ok(grid.url, home, src, tmp_path / "r3")
        r = run_cli(["--url", grid.url, "diff", str(ev["generation"] - 1), str(ev["generation"])], home)
        assert r.code == 1 and f"- /{gone.name}" in r.out.splitlines(), r.out

        # The source root's own attributes: its directory is unchanged, its edge is not.
        os.chmod(src, 0o750)
        ev = w.snapshot()
        assert ev["incremental"] is True, ev
        r = run_cli(["--url", grid.url, "diff", str(ev["generation"] - 1), str(ev["generation"])], home)
        assert r.code == 1 and any(line.startswith("M / (") for line in r.out.splitlines()), r.out
    finally:
        code, took = w.stop()
    assert code == 143 and took < 5, (code, took, w.err)
    # Each snapshot is a normal recorded backup.
    r = run_cli(["--url", grid.url, "--json", "list"], home, check=True)
    assert len(json_lines(r.out)) == len([x for x in w.all if x["type"] == "snapshot"]) >= 4


def test_a_burst_of_changes_becomes_one_snapshot(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=100, medium=1, large=0)
    w = Watch(grid.url, home, src, "--settle", "3")
    try:
        w.snapshot()
        # 1,000 new files in five watched directories, and 40 more in new directories.
        dirs = sorted(p for p in src.rglob("*") if p.is_dir())[:5]
        for n, d in enumerate(dirs):
            for i in range(200):
                (d / f"burst-{i}.txt").write_text(f"burst {n} file {i}\n" * 4)
        for d in range(4):
            (src / f"burst{d}").mkdir()
            for i in range(10):
                (src / f"burst{d}" / f"{i}.txt").write_text(f"new directory {d} file {i}\n" * 4)
        ev = w.snapshot()
        assert ev["incremental"] is True and ev["changes"] >= 1000, ev
        assert ev["files_new"] == 1040, ev
        w.quiet(5)
        restored_ok(grid.url, home, src, tmp_path / "r")
    finally:
        w.stop()


def test_a_grid_outage_is_ridden_out(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=60, medium=1, large=0)
    down = threading.Event()
    with FaultProxy(grid.url, lambda method, path, n: "drop" if down.is_set() else None) as proxy:
        w = Watch(proxy.url, home, src, "-o", "operation.retry.attempts=2", "-o", "operation.retry.delay=[0.2]")
        try:
            w.snapshot()
            down.set()
            (src / "written-while-down.txt").write_text("the grid is away\n" * 20)
            # The round fails; watch says so, keeps the change and keeps watching.
            end = time.monotonic() + 60
            while not any(r.get("type") == "warning" and "still watching" in r.get("message", "") for r in w.all):
                assert time.monotonic() < end and w.p.poll() is None, (w.all, w.err)
                time.sleep(0.2)
            (src / "also-while-down.txt").write_text("more while away\n" * 20)
            time.sleep(1)
            assert w.p.poll() is None
            down.clear()
            ev = w.snapshot(timeout=120)
            assert ev["files_new"] == 2, ev
            restored_ok(proxy.url, home, src, tmp_path / "r")
        finally:
            code, took = w.stop()
    assert code == 143 and took < 5


def test_sigterm_stops_a_round_and_the_next_watch_resumes(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=200, medium=2, large=1)
    w = Watch(grid.url, home, src)
    time.sleep(2.5)  # within the first round (a slow PUT of the large file on this grid)
    code, took = w.stop()
    print(f"SIGTERM during the first round: exit {code} after {took:.2f}s")
    assert code == 143 and took < 5, (code, took, w.err)
    assert not list((home / "state").rglob("*.queue.tmp*"))
    w = Watch(grid.url, home, src)
    try:
        ev = w.snapshot()
        assert ev["incremental"] is False
        restored_ok(grid.url, home, src, tmp_path / "r")
        # Idle: no snapshot while nothing changes, and SIGTERM while idle stops it just as fast.
        w.quiet(2)
    finally:
        code, took = w.stop()
    print(f"SIGTERM while idle: exit {code} after {took:.2f}s")
    assert code == 143 and took < 5
    assert differences(src, tmp_path / "r") == []


def test_the_shipped_unit_runs_watch_and_counts_sigterm_as_success():
    import shlex

    from lafs_backup.arguments import parse

    unit = (ROOT / "config" / "lafs-backup-watch.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    ns = parse(shlex.split(line.partition("=")[2])[1:])
    assert ns.command == "watch"
    assert "SuccessExitStatus=143" in unit and "KillSignal=SIGTERM" in unit
