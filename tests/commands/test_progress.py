"""Against the real local grid: progress counts the bytes sent to the grid, with what is left to send made
of the new and changed files only, on the terminal and in ``--json``; every summary gives sizes in one
unit style.  A byte rate limit (``operation.rate_limit.bytes``) makes each run last long enough for
progress to be shown: the limit is a floor on the run's time, so what is asserted does not depend on
how fast the machine is (how the numbers move over time is tested on a ``Clock`` in test_report.py)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

from conftest import cli_env, json_lines

#: 1 MiB a second, no burst: after the first request, each waits for the bytes of the one before.
SLOW = ["-o", "operation.rate_limit.bytes=1/1048576:1"]


def _write(path, size: int) -> None:
    path.write_bytes(os.urandom(size))


def test_json_progress_counts_bytes_sent_and_leaves_unchanged_files_out(grid, lb, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a.bin", 1_500_000)
    _write(src / "b.bin", 1_500_000)
    (src / "small.txt").write_text("small\n")
    first = json_lines(lb("--json", *SLOW, "backup", str(src), check=True).out)
    progress = [r for r in first if r["type"] == "progress"]
    assert progress, "a 3 MB backup at 1 MiB/s shows progress"
    for p in progress:
        assert 0 < p["bytes_sent"] <= p["bytes_to_send"]
        assert p["eta_seconds"] is None or p["eta_seconds"] >= 0
    summary = first[-1]
    assert summary["type"] == "summary" and summary["bytes_to_store"] == 3_000_006
    assert summary["bytes_sent"] >= 3_000_000 >= max(p["bytes_sent"] for p in progress) - 64 * 1024

    # A new file beside the 3 MB unchanged ones: only its bytes are to send.
    _write(src / "c.bin", 2_000_000)
    second = json_lines(lb("--json", *SLOW, "backup", str(src), check=True).out)
    progress = [r for r in second if r["type"] == "progress"]
    assert progress
    for p in progress:
        assert p["bytes_total"] == 5_000_006  # every file's bytes, as before
        assert p["bytes_sent"] <= p["bytes_to_send"] <= 2_000_000 + 64 * 1024  # the new file's, and directories
    summary = second[-1]
    assert summary["bytes_to_store"] == 2_000_000 and summary["files_unchanged"] == 3
    assert 2_000_000 <= summary["bytes_sent"] < 2_000_000 + 64 * 1024


def test_the_terminal_bar_shows_bytes_sent_and_the_summaries_binary_units(grid, home, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a.bin", 1_500_000)
    _write(src / "b.bin", 1_500_000)
    drawn = _on_a_terminal(["--url", grid.url, *SLOW, "backup", str(src)], home)
    bar = [b for b in re.findall(r"\d+%\|[^|]*\| ([^\r\n]*)", drawn) if b]  # (the first is drawn empty)
    assert bar, drawn
    assert all(re.match(r"[\d.]+ (B|KiB|MiB) of ~[\d.]+ (B|KiB|MiB) sent, ([\d.]+ (B|KiB|MiB)|\?) ?B?/s, "
                        r"ETA (\d+:\d\d|\?); entries \d+/\d+", b) for b in bar), bar
    assert "of ~2.9 MiB sent" in drawn
    assert not re.search(r"\d(kB|MB|GB)|[kMG]B/s|it/s", drawn)  # (no SI units: the bar's are binary too)
    assert re.search(r"bytes: 2\.9 MiB new or changed, 2\.9 MiB read, 2\.9 MiB sent to the grid", drawn)

    restored = _run(["--url", grid.url, "restore", "latest", "--source", str(src), "--target",
                     str(tmp_path / "r")], home)
    assert "; 2.9 MiB written" in restored.stderr, restored.stderr  # (was "bytes written: 3000000")
    verified = _run(["--url", grid.url, "verify", "latest", "--source", str(src)], home)
    assert "file contents read back: 2 (2.9 MiB)" in verified.stderr, verified.stderr
    for text in (restored.stderr, verified.stderr):
        assert not re.search(r"\d{5,}", re.sub(r"\b[0-9a-f]{8}\b", "", text)), text  # no raw byte counts (an id aside)


def _run(args: list[str], home) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home), capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p


def _on_a_terminal(args: list[str], home) -> str:
    """What the command draws on stderr when stderr is a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))  # (a new one is 0 by 0)
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 300)
            assert ready, "the command said nothing for 300 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        assert p.wait(timeout=300) == 0, out.decode(errors="replace")
    return out.decode("utf-8", "replace")
