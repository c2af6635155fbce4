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


def test_one_path_is_read_from_a_part_of_the_index(grid, tmp_path):
    src = tmp_path / "src"
    for d in range(24):  # (about 7 MB of directory records: a few index chunks of about 1 MiB)
        sub = src / f"d{d // 8}" / f"e{d:02d}"
        sub.mkdir(parents=True)
        for i in range(900):
            (sub / f"f{i:03d}").write_bytes(b"%d %d\n" % (d, i) if i % 10 == 0 else b"")
    home = tmp_path / "home"
    home.mkdir()
    lb = ["--url", grid.url]
    run_cli([*lb, "backup", str(src)], home, check=True)
    info = [*lb, "-o", "logging.level=info"]
    everything = run_cli([*info, "ls", "-R", "latest"], home, check=True)
    total = _chunks(everything.err)
    assert total >= 4, everything.err
    lines = everything.out.splitlines()
    assert len(lines) == 3 + 24 + 24 * 900

    r = run_cli([*info, "ls", "latest", "d1/e12"], home, check=True)
    assert r.out.splitlines() == [f"d1/e12/f{i:03d}" for i in range(900)]
    assert 0 < _chunks(r.err) < total, r.err
    r = run_cli([*lb, "ls", "-l", "latest", "d2/e20/f010"], home, check=True)
    assert re.match(r"-rw\S+ \S+\s+\S+\s+6 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  d2/e20/f010$", r.out.strip()), r.out
    r = run_cli([*info, "ls", "-R", "latest", "d1"], home, check=True)
    assert r.out.splitlines() == [x for x in lines if x.startswith("d1/") and x != "d1/"]
    assert _chunks(r.err) < total, r.err
    r = run_cli([*lb, "ls", "latest", "d1/nowhere"], home)
    assert r.code == 4 and "no such path in the snapshot" in r.err

    data, err = _dump(lb, home, "latest", "d2/e17/f450")
    assert data == b"17 450\n" and 0 < _chunks(err) < total, err
    data, err = _dump(lb, home, "latest", "d0/e03")
    members = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert [m.name for m in members] == ["e03"] + [f"e03/f{i:03d}" for i in range(900)]
    assert {m.name: m.size for m in members}["e03/f120"] == len(b"3 120\n")
    assert _chunks(err) < total, err
