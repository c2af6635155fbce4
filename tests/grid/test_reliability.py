"""Reliability: a grid that loses servers, a gateway restarted or misbehaving, damaged caches,
concurrent runs.  Each scenario ends with a check that passes and a restore
identical to the source of the last finished backup.

The whole module is marked slow: it is the longest part of the suite.
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
from conftest import Grid, check_ok, cli_env, json_lines, local_grid, make_tree, restored_ok, run_cli
from faultproxy import FaultProxy
from treecompare import differences

from lafs_backup.grid.local import GridSpec, LocalGrid

pytestmark = pytest.mark.slow

#: Files stored one by one, paced, so that a run is still uploading when the test strikes.
PACED = ["-o", "destination.pack.max_file_size=1", "-o", "operation.rate_limit.objects=1/40:1",
         "-o", "logging.level=info"]
FAST_RETRY = ["-o", "operation.retry.attempts=6", "-o", "operation.retry.delay=[0.2, 0.5, 1]",
              "-o", "operation.timeout=3", "-o", "operation.answer_timeout=3"]


@pytest.fixture(scope="module")
def rgrid(tmp_path_factory):
    """A grid of its own: these tests stop its servers and restart its gateway."""
    home = tmp_path_factory.mktemp("reliabilitygrid")
    with local_grid(home) as g:
        yield g, home


def grid_up(g: Grid, ghome: Path) -> None:
    r = run_cli(["grid", "up", "--dir", str(g.dir)], ghome, timeout=180)
    assert r.code == 0, r.err


def recorded(url: str, home: Path) -> list[dict]:
    return json_lines(run_cli(["--url", url, "list", "--json"], home, check=True).out)


def start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_puts(g: Grid, start_count: int, n: int, p: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while g.requests()["put"] - start_count < n:
        assert p.poll() is None, "the backup ended too early:\n" + p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)


# -- 2. storage servers lost mid-backup -----------------------------------------------------

def test_servers_lost_mid_backup_then_back(rgrid, tmp_path):
    g, ghome = rgrid
    src = make_tree(tmp_path / "src", small=200, medium=2, large=0)
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", g.url, *PACED, *FAST_RETRY]
    before = g.requests()["put"]
    p = start([*lb, "backup", str(src)], home)
    wait_puts(g, before, 40, p)
    stored_before = g.requests()["put"] - before
    grid = LocalGrid(GridSpec(str(g.dir)))
    try:
        grid.kill_node("storage1")
        grid.kill_node("storage2")
        out, err = p.communicate(timeout=180)
        assert p.returncode == 3, err
        assert "only 1 of 3 required storage servers connected" in err, err
        assert "Traceback" not in err and "URI:" not in err
        assert "was refused as unhappy; trying again in" in err  # bounded retries with backoff came first
        assert recorded(g.url, home) == []  # nothing recorded
        # Once the run has failed, what was still queued is not sent.
        assert g.requests()["put"] - before < stored_before + 150
    finally:
        grid_up(g, ghome)
    mark = g.requests()["put"]
    r = run_cli([*lb, "-o", "operation.rate_limit.objects=null", "backup", str(src)], home, check=True)
    rerun = g.requests()["put"] - mark
    files = sum(1 for x in src.rglob("*") if x.is_file() and not x.is_symlink())
    # What was uploaded before the loss is not uploaded again.
    assert rerun <= files - stored_before + 8, (rerun, files, stored_before)
    assert len(recorded(g.url, home)) == 1
    restored_ok(g.url, home, src, tmp_path / "out", r.out.strip())
    check_ok(g.url, home)


# -- 3. gateway restarted mid-run ---------------------------------------------------------------

def test_gateway_restarted_mid_run(rgrid, tmp_path):
    g, ghome = rgrid
    src = make_tree(tmp_path / "src", small=150, medium=2, large=0)
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", g.url, *PACED, "-o", "operation.retry.attempts=10", "-o", "operation.retry.delay=[1, 2, 3]",
          "-o", "operation.timeout=10"]
    before = g.requests()["put"]
    p = start([*lb, "backup", str(src)], home)
    wait_puts(g, before, 30, p)
    grid = LocalGrid(GridSpec(str(g.dir)))
    grid.kill_node("gateway", signal.SIGKILL)
    grid_up(g, ghome)  # same port; reconnects to the storage servers
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "; retry 1 of" in err, err  # in-flight requests failed, and were retried
    restored_ok(g.url, home, src, tmp_path / "out", out.strip())
    check_ok(g.url, home)


# -- 4. a misbehaving gateway --------------------------------------------------------------------

_immutable_dirs = {"n": 0}


def faulty(method: str, path: str, n: int) -> str | None:
    if method == "PUT":
        return {3: "500", 4: "truncate-close", 6: "unhappy", 9: "stall", 12: "drop", 15: "truncate",
                18: "500", 21: "drop"}.get(n)
    if method == "POST" and "mkdir-immutable" in path:
        # Counted apart from the other POSTs (the repository's own requests come first).
        _immutable_dirs["n"] += 1
        return {2: "500", 3: "drop", 4: "truncate-close", 5: "stall", 6: "unhappy"}.get(_immutable_dirs["n"])
    if method == "GET":
        return {3: "500", 5: "drop", 7: "truncate", 9: "stall", 11: "truncate-close"}.get(n)
    return None


def test_misbehaving_gateway_retries_what_it_can(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=200, medium=4, large=1)
    conf = ["-o", "destination.pack.max_file_size=65536", "-o", "destination.pack.target_size=65536",
            "-o", "logging.level=info", *FAST_RETRY]
    _immutable_dirs["n"] = 0
    with FaultProxy(grid.url, faulty, stall=5) as proxy:
        r = run_cli(["--url", proxy.url, *conf, "backup", str(src)], home, timeout=600)
        assert r.code == 0, r.err
        for action in ("500", "unhappy", "drop", "stall", "truncate", "truncate-close"):
            assert proxy.injected(action) >= 1, (action, proxy.faults)
        assert "timed out" in r.err and "bad answer" in r.err
        assert re.search(r"(a pack|the upload of \S+) was refused as unhappy; storing it again under a salt", r.err)
        assert "a directory was refused as unhappy; storing it again under a salt" in r.err
        puts = [f for f in proxy.faults if f[1] == "PUT"]
        assert len(puts) == 8
        assert sum(1 for f in proxy.faults if "mkdir-immutable" in f[2]) == 5
        # Restore through the same proxy, with its own faults on the downloads.
        rr = run_cli(["--url", proxy.url, *conf, "restore", r.out.strip(), "--target", str(tmp_path / "out")],
                     home, timeout=600)
        assert rr.code == 0, rr.err
        assert sum(1 for f in proxy.faults if f[1] == "GET") == 5, proxy.faults
        # The caps recorded are the gateway's own: the snapshot checks out on the grid.
        check_ok(proxy.url, home)
    assert differences(src, tmp_path / "out") == []


def test_not_retryable_answer_fails_cleanly(grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    conf = ["-o", "destination.pack.max_file_size=1", *FAST_RETRY]
    with FaultProxy(grid.url, lambda m, p, n: "410" if m == "PUT" and n == 5 else None) as proxy:
        r = run_cli(["--url", proxy.url, *conf, "backup", str(src)], home)
        assert proxy.injected("410") == 1
    assert r.code == 3, r.err
    assert "410" in r.err and "Traceback" not in r.err and "URI:" not in r.err
    assert recorded(grid.url, home) == []
    r = run_cli(["--url", grid.url, *conf, "backup", str(src)], home, check=True)
    restored_ok(grid.url, home, src, tmp_path / "out", r.out.strip())


# -- 5. the cache ------------------------------------------------------------------------------------

def _cache_file(home: Path) -> Path:
    found = [p for p in (home / "state" / "lafs-backup").glob("entry-cache.*.sqlite")]
    assert len(found) == 1, found
    return found[0]


def test_cache_deleted_then_corrupted(lb, grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=120, medium=2, large=0)
    first = lb("backup", str(src), check=True).out.strip()
    cache = _cache_file(home)
    for suffix in ("", "-wal", "-shm"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    # Deleted: the rerun works, and finds the same content on the grid again (convergence).
    second = lb("backup", str(src), check=True).out.strip()
    d = lb("diff", first, second)
    assert d.code == 0, d.out + d.err
    restored_ok(grid.url, home, src, tmp_path / "out1", second)

    # Corrupted: a clear error with the ways out, never wrong caps in silence.
    with open(cache, "r+b") as f:
        f.seek(0)
        f.write(os.urandom(4096))
    r = lb("backup", str(src))
    assert r.code == 4, r.err
    assert str(cache) in r.err and "--rebuild-cache" in r.err and "Traceback" not in r.err
    r = lb("backup", "--rebuild-cache", str(src), check=True)
    assert "moved the entry cache aside" in r.err
    assert list(cache.parent.glob(cache.name + ".moved-*"))
    restored_ok(grid.url, home, src, tmp_path / "out2", r.out.strip())
    # The new cache was rebuilt, but the record of every backup lives in the repository on the grid.
    kept = recorded(grid.url, home)
    assert len(kept) == 3 and len({b["id"] for b in kept}) == 3, kept


# -- 9. two backups at once ---------------------------------------------------------------------------

def test_two_backups_at_once(grid, tmp_path):
    runs = []
    for name in ("a", "b"):
        src = make_tree(tmp_path / f"src-{name}", small=300, medium=3, large=1)
        (src / f"only-{name}").write_bytes(os.urandom(100000))
        h = tmp_path / f"home-{name}"
        h.mkdir()
        runs.append((src, h, start(["--url", grid.url, "backup", str(src)], h)))
    for src, h, p in runs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        restored_ok(grid.url, h, src, h / "out", out.strip())


def test_a_link_whose_answer_was_lost_is_not_made_twice(grid, home, tmp_path):
    import urllib.request

    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    dircap = urllib.request.urlopen(urllib.request.Request(grid.url + "uri?t=mkdir", method="POST")).read().decode()

    dropped = []

    def lose_the_link_answer(method: str, path: str, n: int) -> str | None:
        if method == "PUT" and "t=uri" in path and "replace=false" in path and not dropped:
            dropped.append(path)
            return "forward-drop"  # the first link is made, but its answer never comes back
        return None

    with FaultProxy(grid.url, lose_the_link_answer) as proxy:
        r = run_cli(["--url", proxy.url, *FAST_RETRY, "-o", f"destination.result.append_to_lafs_dir={dircap}",
                     "backup", str(src)], home)
        assert r.code == 0, r.err
        assert proxy.injected("forward-drop") >= 1
    children = json.load(urllib.request.urlopen(grid.url + "uri/" + dircap + "?t=json"))[1]["children"]
    assert len(children) == 1, sorted(children)
    assert next(iter(children.values()))[1]["ro_uri"] == r.out.strip()
