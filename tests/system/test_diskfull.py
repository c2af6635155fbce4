"""Reliability, scenario 6: a full disk under the queue, the cache and the temporary files.

Each state location is a small tmpfs mounted for the test (root only: CI runs
as root).  A run that hits ENOSPC fails with an error naming the file and the
cause, leaves the previous queue and cache as they were, records nothing,
and once space is freed the rerun completes; restore and check pass.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import cache_backups, make_tree, run_cli
from treecompare import differences

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)"),
]


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def resize(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fill(where: Path, leave: int = 0) -> Path:
    """Take all but ``leave`` free bytes of a tmpfs with one file; remove it to free them again."""
    ballast = where / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\1" * (1 << 16))
            except OSError:
                break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return ballast


def test_full_disk_under_queue_and_cache(grid, tmp_path):
    src = make_tree(tmp_path / "src", small=300, medium=2, large=0)
    home = tmp_path / "home"
    state = home / "state"
    cachedir = tmp_path / "cachefs"
    lb = ["--url", grid.url, "-o", f"source.entry_cache.path={cachedir}/cache.sqlite"]
    with tmpfs(state, "64m"), tmpfs(cachedir, "64m"):
        first = run_cli([*lb, "backup", str(src)], home, check=True).out.strip()
        (cache,) = cachedir.glob("cache.*.sqlite")  # (the path is a prefix: one cache per grid)
        (queue,) = (state / "lafs-backup" / "queues").iterdir()
        queue_before = digest(queue)
        for i in range(400):
            (src / f"later{i}.txt").write_text(f"added after the first backup {i}\n" * 20)

        # 1. The queue's disk is full: phase one fails, the old queue is untouched.
        ballast = fill(state)
        r = run_cli([*lb, "backup", str(src)], home)
        assert r.code == 4, r.err
        assert "Traceback" not in r.err
        assert f"Cannot write {queue}: No space left on device" in r.err, r.err
        assert digest(queue) == queue_before
        assert [p.name for p in queue.parent.iterdir()] == [queue.name]  # no temp file left
        ballast.unlink()

        # 2. The cache's disk fills up during phase two (room for a few commits only): the run
        #    fails, records nothing, and the cache is intact.
        ballast = fill(cachedir, leave=300 << 10)
        before = grid.requests()["put"]
        r = run_cli([*lb, "backup", str(src)], home)
        assert grid.requests()["put"] > before  # it failed in the middle of phase two
        assert r.code == 4, r.err
        assert "Traceback" not in r.err
        assert "disk holding it is full" in r.err and cache.name in r.err, r.err
        assert "--rebuild-cache" not in r.err  # a full disk is not damage
        assert cache_backups(cache) == 1
        # The first backup is still listed, restorable, and checks out.
        ballast.unlink()
        listed = run_cli([*lb, "list"], home, check=True).out
        assert first in listed
        run_cli([*lb, "restore", first, "--target", str(tmp_path / "old")], home, check=True)
        assert (tmp_path / "old").is_dir() and not (tmp_path / "old" / "later0.txt").exists()

        # 3. Space is back: the rerun completes.
        resize(cachedir, "128m")
        r = run_cli([*lb, "backup", str(src)], home, check=True)
        assert cache_backups(cache) == 2
        run_cli([*lb, "restore", r.out.strip(), "--target", str(tmp_path / "new")], home, check=True)
        assert differences(src, tmp_path / "new") == []
        assert run_cli([*lb, "check"], home).code == 0


def test_full_temporary_directory_fails_the_run(grid, tmp_path):
    """Compressing a large file into a full TMPDIR stops the run (it is not one file's problem)."""
    src = tmp_path / "src"
    src.mkdir()
    # Compressible at its start (the probe), then 5 MB that do not shrink: more than the tmpfs holds.
    (src / "big.log").write_bytes(b"compressible line\n" * 8000 + os.urandom(5 << 20))
    home = tmp_path / "home"
    with tmpfs(tmp_path / "tmpfs", "1m") as small:
        env_tmp = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(small)
        try:
            r = run_cli(["--url", grid.url, "backup", str(src)], home)
        finally:
            if env_tmp is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = env_tmp
    assert r.code == 4, r.err
    assert "Traceback" not in r.err
    assert f"Cannot write {small}: No space left on device (compressing /big.log)" in r.err, r.err
    assert "point TMPDIR at a larger disk" in r.err
