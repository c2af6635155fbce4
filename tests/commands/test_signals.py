"""SIGINT and SIGTERM stop any command within 2 s with one line and exit 130 or 143; the next run resumes.

Phase one and the embedded grid's start-up run off the reactor thread, so
signals, timers and the manhole stay live during them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, make_tree, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    """200,400 entries (empty files in 400 directories): phase one takes seconds."""
    root = tmp_path_factory.mktemp("big") / "tree"
    for d in range(400):
        p = root / f"d{d:03d}"
        p.mkdir(parents=True)
        for f in range(500):
            os.close(os.open(p / f"f{f:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def queue_temps(home: Path) -> list[Path]:
    return list((home / "state" / "lafs-backup" / "queues").glob("*.queue.tmp.*"))


def wait_until(cond, timeout: float, p: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if p is not None and p.poll() is not None:
            raise AssertionError(f"the run ended first ({what}): {p.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def stop_and_time(p: subprocess.Popen, sig: int) -> tuple[float, int, str]:
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    return time.monotonic() - t0, p.returncode, err


def assert_one_line_stop(err: str, word: str, name: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if "stopping;" in ln]
    assert len(lines) == 1 and f"{word} ({name})" in lines[0], err


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_phase_one(grid, home, big_tree, sig, code, word):
    p = start(["--url", grid.url, "backup", str(big_tree)], home)
    wait_until(lambda: queue_temps(home), 60, p, "phase one to start writing the queue")
    time.sleep(0.3)  # well inside the walk of 200,000 entries
    assert queue_temps(home), "phase one ended before the signal"
    took, rc, err = stop_and_time(p, sig)
    print(f"{signal.Signals(sig).name} in phase one: stopped in {took:.2f}s")
    assert rc == code, err
    assert took < 2.0, took
    assert_one_line_stop(err, word, signal.Signals(sig).name)
    assert not queue_temps(home)  # the half-written queue is gone; no queue replaced


def test_sigterm_during_uploads_then_the_rerun_resumes(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=120, medium=2, large=0)
    paced = ["-o", "destination.pack.max_file_size=1", "-o", "operation.rate_limit.objects=1/30:1"]
    before = grid.requests()["put"]
    p = start(["--url", grid.url, *paced, "backup", str(src)], home)
    wait_until(lambda: grid.requests()["put"] - before >= 15, 120, p, "15 uploads")
    took, rc, err = stop_and_time(p, signal.SIGTERM)
    print(f"SIGTERM in phase two: stopped in {took:.2f}s")
    assert rc == 143 and took < 2.0, (took, err)
    assert_one_line_stop(err, "terminated", "SIGTERM")
    sent = grid.requests()["put"] - before
    r = run_cli(["--url", grid.url, "--json", "-o", "destination.pack.max_file_size=1", "backup", str(src)],
                home, check=True)
    summary = json.loads(r.out.splitlines()[-1])
    # What was confirmed before the signal is not sent again.
    assert summary["files_unchanged"] + summary["files_deduplicated"] >= sent - 8, (summary, sent)


def test_sigint_during_grid_start_up(tmp_path):
    home = tmp_path / "home"
    gdir = tmp_path / "newgrid"
    p = start(["grid", "up", "--dir", str(gdir)], home)
    wait_until(lambda: (gdir / "grid.json").exists(), 60, p, "the grid's creation to begin")
    time.sleep(0.5)
    took, rc, err = stop_and_time(p, signal.SIGINT)
    print(f"SIGINT in grid start-up: stopped in {took:.2f}s")
    try:
        assert rc == 130 and took < 2.0, (took, err)
        assert_one_line_stop(err, "interrupted", "SIGINT")
        # The half-made grid is discarded and made again by the next run.
        r = run_cli(["grid", "up", "--dir", str(gdir)], home, timeout=240)
        assert r.code == 0, r.err
    finally:
        run_cli(["grid", "down", "--dir", str(gdir)], home, timeout=120)


def test_manhole_answers_during_a_long_scan(grid, home, big_tree, tmp_path):
    from test_manhole import keypair, known_hosts_for, ssh

    key, pub = keypair(tmp_path / "admin")
    conf = tmp_path / "m.yaml"
    conf.write_text("manhole:\n  endpoint: 'tcp:0:interface=127.0.0.1'\n  authorized_keys:\n"
                    f"    - '{pub}'\nlogging:\n  level: info\n")
    p = start(["--url", grid.url, "-c", str(conf), "backup", str(big_tree), "--queue-only"], home)
    lines: list[str] = []
    port = None
    while port is None:
        line = p.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
        m = re.search(r"manhole: listening on 127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else None
    wait_until(lambda: queue_temps(home), 60, p, "phase one")
    kh = known_hosts_for(home, port, tmp_path / "known_hosts")
    t0 = time.monotonic()
    s = ssh(port, key, kh, 'print("T", op.progress["entries_total"] > 0)\n')
    answered = time.monotonic() - t0
    still_scanning = bool(queue_temps(home))
    p.communicate(timeout=120)
    print(f"manhole answered in {answered:.2f}s during the scan")
    assert s.returncode == 0 and b"T True" in s.stdout, s
    assert still_scanning, "the scan ended before the manhole answered"
    assert p.returncode == 0
