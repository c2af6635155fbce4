"""Against the real local grid: ``backup --stdin`` and ``--stdin-from-command`` store a stream as one
file of a new snapshot, which list, restore and dump give back byte for byte; a failing command
records nothing; the arguments that make no sense for a stream are refused."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import cli_env, json_lines

#: Writes N deterministic bytes (a seeded generator) to stdout, and one line to stderr.
WRITER = ("import random, sys\n"
          "n = int(sys.argv[1])\n"
          "r = random.Random(7)\n"
          "out = sys.stdout.buffer\n"
          "while n > 0:\n"
          "    k = min(n, 1 << 20)\n"
          "    out.write(r.randbytes(k))\n"
          "    n -= k\n"
          "out.flush()\n"
          "sys.stderr.write('writer: done\\n')\n"
          "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)\n")


def expected(n: int) -> bytes:
    import random

    r = random.Random(7)
    out = bytearray()
    while len(out) < n:
        out += r.randbytes(min(n - len(out), 1 << 20))
    return bytes(out)


def lafs(grid, home: Path, *args: str, stdin: bytes | int | None = None) -> subprocess.CompletedProcess:
    """Run the CLI against the session grid with bytes (or a descriptor) as its standard input."""
    kw: dict = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": subprocess.DEVNULL if stdin is None
                                                                   else stdin}
    return subprocess.run([sys.executable, "-m", "lafs_backup", "--url", grid.url, *args], env=cli_env(home),
                          capture_output=True, timeout=300, **kw)


def backups(grid, home: Path) -> list[dict]:
    r = lafs(grid, home, "list", "--json")
    assert r.returncode == 0, r.stderr
    return json_lines(r.stdout.decode())


def test_stdin_is_stored_as_one_file_and_comes_back_byte_for_byte(grid, home, tmp_path):
    data = os.urandom(3 << 20) + b"\0last bytes\n"
    r = lafs(grid, home, "--json", "backup", "--stdin", "--stdin-filename", "db.sql", "--host", "h1",
             "--tag", "nightly", stdin=data)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.decode().splitlines()[-1])
    assert summary["files"] == 1 and summary["bytes_read"] == len(data)
    sid = summary["id"]

    # A real directory backed up into the same repository stays a source of its own.
    tree = tmp_path / "stdin:"
    tree.mkdir()
    (tree / "db.sql").write_bytes(b"not the stream")
    assert lafs(grid, home, "backup", str(tree)).returncode == 0

    rows = backups(grid, home)
    mine = [b for b in rows if b["source"] == "stdin://db.sql"]
    assert len(rows) == 2 and len(mine) == 1
    assert mine[0]["id"] == sid and mine[0]["host"] == "h1" and mine[0]["tags"] == ["nightly"]
    listed = lafs(grid, home, "list", "--source", "stdin://db.sql")
    assert listed.returncode == 0 and sid in listed.stdout.decode() and str(tree) not in listed.stdout.decode()

    target = tmp_path / "restored"
    r = lafs(grid, home, "restore", "latest", "--source", "stdin://db.sql", "--target", str(target))
    assert r.returncode == 0, r.stderr
    assert os.listdir(target) == ["db.sql"]
    assert (target / "db.sql").read_bytes() == data
    assert (target / "db.sql").stat().st_mode & 0o777 == 0o600
    dumped = lafs(grid, home, "dump", sid, "db.sql")
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == data


def test_a_command_output_is_backed_up_with_its_stderr_passed_on(grid, home, tmp_path):
    n = (5 << 20) + 123
    r = lafs(grid, home, "--json", "backup", "--tag", "cmd", "--stdin-from-command", "--",
             sys.executable, "-c", WRITER, str(n))
    assert r.returncode == 0, r.stderr
    assert b"writer: done" in r.stderr  # (the command's stderr is ours)
    sid = json.loads(r.stdout.decode().splitlines()[-1])["id"]
    rows = backups(grid, home)
    assert [(b["id"], b["source"], b["tags"]) for b in rows] == [(sid, "stdin://stdin", ["cmd"])]
    dumped = lafs(grid, home, "dump", "latest", "stdin")
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == expected(n)

    # The same output again: its content is known (nothing uploaded but the snapshot's own objects),
    # and it is a new backup of the same source.
    again = lafs(grid, home, "--json", "backup", "--stdin-from-command", "--", sys.executable, "-c", WRITER, str(n))
    assert again.returncode == 0, again.stderr
    s2 = json.loads(again.stdout.decode().splitlines()[-1])
    assert s2["files_deduplicated"] == 1 and s2["files_uploaded"] == 0
    assert len(backups(grid, home)) == 2


def test_a_failing_command_records_nothing(grid, home, tmp_path):
    ok = lafs(grid, home, "backup", "--stdin", stdin=b"first")
    assert ok.returncode == 0, ok.stderr
    before = backups(grid, home)

    r = lafs(grid, home, "backup", "--stdin-from-command", "--", sys.executable, "-c", WRITER, str(1 << 20), "3")
    assert r.returncode == 4
    err = r.stderr.decode()
    assert f"The command {sys.executable} (--stdin-from-command) exited with code 3" in err
    assert "nothing was recorded" in err and "Traceback" not in err

    killed = lafs(grid, home, "backup", "--stdin-from-command", "--", "sh", "-c", "echo partial; kill -9 $$")
    assert killed.returncode == 4 and "was ended by signal SIGKILL" in killed.stderr.decode()

    missing = lafs(grid, home, "backup", "--stdin-from-command", "--", "no-such-program-here", "x")
    assert missing.returncode == 4 and "no-such-program-here" in missing.stderr.decode()
    assert "no such program on PATH" in missing.stderr.decode()

    assert backups(grid, home) == before


def test_what_a_stream_cannot_be_given_is_refused(grid, home, tmp_path):
    cases = [
        (["backup", "--stdin", str(tmp_path)], "drop the SOURCE"),
        (["backup", "--stdin", "--stdin-filename", "a/b"], "must be a file name"),
        (["backup", "--stdin", "--stdin-filename", ""], "must be a file name"),
        (["backup", "--stdin-filename", "x", str(tmp_path)], "give it with --stdin"),
        (["backup", "--stdin", "--exclude", "*.tmp"], "--exclude cannot be given with --stdin"),
        (["backup", "--stdin", "--queue-only"], "--queue-only cannot be given with --stdin"),
        (["backup", "--stdin-from-command"], "needs the command to run after '--'"),
        (["backup", "--stdin", "--stdin-from-command", "--", "true"], "not allowed with argument"),
    ]
    for args, said in cases:
        r = lafs(grid, home, *args, stdin=b"data")
        assert r.returncode == 2, (args, r.stderr)
        assert said in r.stderr.decode(), (args, r.stderr)
    # A terminal on standard input: nothing piped in.
    leader, follower = pty.openpty()
    try:
        r = lafs(grid, home, "backup", "--stdin", stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 2 and "which is a terminal here" in r.stderr.decode()
    assert backups(grid, home) == []


def test_a_stopped_run_ends_its_command_and_records_nothing(grid, home, tmp_path):
    import signal
    import time

    pidfile = tmp_path / "pid"
    slow = ("import os, sys, time\n"
            f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
            "sys.stdout.buffer.write(b'x' * 100000); sys.stdout.flush()\n"
            "time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-m", "lafs_backup", "--url", grid.url, "backup", "--stdin-from-command",
                          "--", sys.executable, "-c", slow], env=cli_env(home), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pidfile.read_text())
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}")  # the command was ended with the run
    assert backups(grid, home) == []
    # The rerun starts over: a pipe cannot be replayed, and a new command's output is stored whole.
    r = lafs(grid, home, "backup", "--stdin-from-command", "--", sys.executable, "-c", WRITER, "1000")
    assert r.returncode == 0, r.stderr
    assert lafs(grid, home, "dump", "latest", "stdin").stdout == expected(1000)
