"""``ls PATH``, ``ls -R PATH`` and ``dump PATH`` on a real grid, where the snapshot's index has many
chunks: the same lines and bytes as the source, read from a part of the index (read.locate)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile

from conftest import cli_env, run_cli


def _chunks(err: str) -> int:
    return sum(int(n) for n in re.findall(r"index: (\d+) chunks", err))


def _dump(lb, home, *args) -> tuple[bytes, str]:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *lb, "-o", "logging.level=info", "dump", *args],
                       env=cli_env(home), capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr.decode()


#: A long tail on every file name: more records' bytes, so more index chunks (their content-defined
#: boundaries fall where they fall: from 5 to 10 chunks seen).
TAIL = "-" + "n" * 90


def test_one_path_is_read_from_a_part_of_the_index(grid, tmp_path):
    src = tmp_path / "src"
    for d in range(24):
        sub = src / f"d{d // 8}" / f"e{d:02d}"
        sub.mkdir(parents=True)
        for i in range(900):
            (sub / f"f{i:03d}{TAIL}").write_bytes(b"%d %d\n" % (d, i) if i % 10 == 0 else b"")
    home = tmp_path / "home"
    home.mkdir()
    lb = ["--url", grid.url]
    run_cli([*lb, "backup", str(src)], home, check=True)
    info = [*lb, "-o", "logging.level=info"]
    everything = run_cli([*info, "ls", "-R", "latest"], home, check=True)
    total = _chunks(everything.err)
    assert total >= 3, everything.err
    lines = everything.out.splitlines()
    assert len(lines) == 3 + 24 + 24 * 900

    r = run_cli([*info, "ls", "latest", "d1/e12"], home, check=True)
    assert r.out.splitlines() == [f"d1/e12/f{i:03d}{TAIL}" for i in range(900)]
    parts = [_chunks(r.err)]
    r = run_cli([*lb, "ls", "-l", "latest", f"d2/e20/f010{TAIL}"], home, check=True)
    assert re.match(r"-rw\S+ \S+\s+\S+\s+6 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  d2/e20/f010" + TAIL + "$",
                    r.out.strip()), r.out
    r = run_cli([*info, "ls", "-R", "latest", "d1"], home, check=True)
    assert r.out.splitlines() == [x for x in lines if x.startswith("d1/") and x != "d1/"]
    parts.append(_chunks(r.err))
    r = run_cli([*lb, "ls", "latest", "d1/nowhere"], home)
    assert r.code == 4 and "no such path in the snapshot" in r.err

    data, err = _dump(lb, home, "latest", f"d2/e17/f450{TAIL}")
    assert data == b"17 450\n"
    parts.append(_chunks(err))
    data, err = _dump(lb, home, "latest", "d0/e03")
    members = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert [m.name for m in members] == ["e03"] + [f"e03/f{i:03d}{TAIL}" for i in range(900)]
    assert {m.name: m.size for m in members}[f"e03/f120{TAIL}"] == len(b"3 120\n")
    parts.append(_chunks(err))
    # Each lookup read some chunks and never more than the index holds, and not every one read
    # the whole index (how few one lookup needs depends on where the content-defined boundaries
    # fell: from 3 to 9 of 10 chunks in one run; tests/read/test_locate.py pins it with fixed
    # chunks).  Loading the whole index for each gives parts == [total] * 4.
    assert all(0 < n <= total for n in parts), (parts, total)
    assert min(parts) < total, (parts, total)
