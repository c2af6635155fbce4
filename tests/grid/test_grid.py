"""The embedded grid: idempotent up, status, automatic start, and a down that stops only its own processes."""

from __future__ import annotations

import json
import os
import subprocess
import time

from conftest import make_tree, run_cli
from treecompare import differences


def test_up_is_idempotent_and_status_lists_servers(grid, home):
    r = run_cli(["grid", "up", "--dir", str(grid.dir)], home, check=True)
    assert r.out.strip() == grid.url
    assert "started" not in r.err  # nothing had to be started
    s = run_cli(["grid", "status", "--dir", str(grid.dir)], home, check=True)
    assert f"url: {grid.url}" in s.out
    assert "connected servers: 3 (storage1, storage2, storage3)" in s.out


def _pids(gdir):
    state = json.loads((gdir / "grid.json").read_text())
    return {name: p["pid"] for name, p in state["processes"].items()}


def test_embedded_grid_starts_by_itself_and_stops_exactly_its_processes(home, tmp_path):
    src = make_tree(tmp_path / "src", small=10, medium=0, large=0)
    r = run_cli(["backup", str(src)], home, timeout=240)
    try:
        assert r.code == 0, r.err
        assert "made the embedded local grid" in r.err and "on this machine's own disk" in r.err
        gdir = home / "data" / "lafs-backup" / "grid"
        pids = _pids(gdir)
        assert sorted(pids) == ["gateway", "introducer", "storage1", "storage2", "storage3"]
        out = tmp_path / "out"
        run_cli(["restore", "latest", "--target", str(out)], home, check=True)
        assert differences(src, out) == []
    finally:
        decoy = subprocess.Popen(["sleep", "60"])
        run_cli(["grid", "down"], home, check=True)
    for pid in pids.values():
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # a zombie until its parent (init) reaps it
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"pid {pid} still running")
    # A stale state naming a pid that now belongs to someone else: down leaves it alone.
    state = json.loads((gdir / "grid.json").read_text())
    state["processes"] = {"gateway": {"pid": decoy.pid, "start": "1"}}
    (gdir / "grid.json").write_text(json.dumps(state))
    run_cli(["grid", "down"], home, check=True)
    assert decoy.poll() is None
    decoy.kill()
    decoy.wait()
