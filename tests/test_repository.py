"""The repository on the grid: a new machine recovers every backup from the recovery key alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import cli_env, json_lines, local_grid, make_tree, run_cli
from treecompare import full_differences

pytestmark = pytest.mark.slow


def summary(r) -> dict:
    return json.loads(r.out.splitlines()[-1])


def puts(r) -> int:
    return summary(r)["requests"].get("put", 0)


def stop_gateways(home: Path) -> None:
    for d in (home / "data" / "lafs-backup" / "gateways").glob("*"):
        run_cli(["grid", "down", "--dir", str(d)], home, timeout=120)


def test_a_new_machine_recovers_every_backup_from_the_key_alone(grid, tmp_path):
    src = make_tree(tmp_path / "src", small=300, medium=3, large=1)
    a, b = tmp_path / "A", tmp_path / "B"
    # Machine A uses a grid of this machine's (the session's) as its embedded one: its key then
    # says how to reach that grid.
    conf = tmp_path / "a.yaml"
    conf.write_text(f"grid:\n  dir: {grid.dir}\n")
    first = run_cli(["-c", str(conf), "--json", "backup", str(src), "--tag", "first"], a, check=True)
    assert "made a repository on the grid; its recovery key is in" in first.err
    (src / "added later.txt").write_text("a change\n" * 40)
    second = run_cli(["-c", str(conf), "--json", "backup", str(src)], a, check=True)
    a_uploads = puts(first) + puts(second)
    key = run_cli(["-c", str(conf), "key"], a, check=True).out.strip()
    assert run_cli(["-c", str(conf), "backup", str(src)], a, check=True).err.count("recovery key") == 0  # once
    shutil.rmtree(a)  # machine A is gone: its home, state and cache

    with_key = {"LAFS_BACKUP_REPO": key}
    try:
        # Machine B has the key and nothing else: it starts a gateway of its own that joins the grid.
        r = run_cli(["--json", "list"], b, env=with_key)
        assert r.code == 0, r.err
        listed = json_lines(r.out)
        assert len(listed) == 3 and {x["source"] for x in listed} == {str(src)}
        assert listed[0]["tags"] == ["first"] and all(x["host"] for x in listed)
        assert "started a gateway for the grid of the recovery key" in r.err
        out = tmp_path / "restored"
        r = run_cli(["restore", "latest", "--target", str(out)], b, env=with_key)
        assert r.code == 0, r.err
        assert full_differences(src, out) == []
        r = run_cli(["--json", "backup", str(src)], b, env=with_key)
        assert r.code == 0, r.err
        assert puts(r) <= 0.05 * a_uploads, (puts(r), a_uploads)
        assert "the entry cache was rebuilt from the backup of" in r.out  # a JSON note
        assert len(json_lines(run_cli(["--json", "list"], b, env=with_key, check=True).out)) == 4
    finally:
        stop_gateways(b)


def _start(args, home, env):
    return subprocess.Popen([sys.executable, "-m", "lafs_backup", *args], env={**cli_env(home), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def test_machines_back_up_into_one_repository_at_once(grid, tmp_path):
    lb = ["--url", grid.url]
    first = make_tree(tmp_path / "first", small=80, medium=1, large=0)
    second = make_tree(tmp_path / "second", small=60, medium=1, large=0, seed=7)
    run_cli([*lb, "init"], tmp_path / "A", check=True)
    key = run_cli([*lb, "key"], tmp_path / "A", check=True).out.strip()
    env = {"LAFS_BACKUP_REPO": key}
    runs = [_start([*lb, "backup", str(first), "--host", "alpha"], tmp_path / "A", {}),
            _start([*lb, "backup", str(second), "--host", "beta"], tmp_path / "B", env),
            _start([*lb, "backup", str(first), "--host", "gamma"], tmp_path / "G", env)]
    for p in runs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    listed = json_lines(run_cli([*lb, "--json", "list"], tmp_path / "C", env=env, check=True).out)
    assert sorted((x["host"], x["source"]) for x in listed) == [
        ("alpha", str(first)), ("beta", str(second)), ("gamma", str(first))]
    text = run_cli([*lb, "list", "--host", "beta"], tmp_path / "C", env=env, check=True).out
    assert text.count("\n") == 1 and "beta" in text and str(second) in text
    out = tmp_path / "out"
    run_cli([*lb, "restore", "latest", "--host", "beta", "--target", str(out)], tmp_path / "C", env=env, check=True)
    assert full_differences(second, out) == []
    # Each writer has its own directory in the repository, which only it writes.
    assert len({x["id"] for x in listed}) == 3


def test_a_lost_or_damaged_cache_never_loses_the_history(grid, tmp_path):
    lb = ["--url", grid.url]
    home = tmp_path / "h"
    src = make_tree(tmp_path / "src", small=60, medium=1, large=0)
    for i in range(2):
        (src / "n.txt").write_text(f"version {i}\n" * 20)
        run_cli([*lb, "backup", str(src), "--tag", f"t{i}"], home, check=True)
    (cache,) = (home / "state" / "lafs-backup").glob("entry-cache.*.sqlite")
    cache.unlink()
    for extra in ("-wal", "-shm"):
        Path(str(cache) + extra).unlink(missing_ok=True)
    listed = json_lines(run_cli([*lb, "--json", "list"], home, check=True).out)
    assert [x["tags"] for x in listed] == [["t0"], ["t1"]]  # from the repository
    r = run_cli([*lb, "--json", "backup", str(src)], home, check=True)
    assert puts(r) == 0 and summary(r)["files_uploaded"] == 0  # rebuilt from the repository: nothing sent
    cache.write_bytes(b"this is no database" * 100)
    r = run_cli([*lb, "backup", str(src)], home)
    assert r.code == 4 and "--rebuild-cache" in r.err
    r = run_cli([*lb, "--json", "backup", str(src), "--rebuild-cache"], home, check=True)
    assert puts(r) == 0 and "rebuilt from the backup of" in r.out
    assert len(json_lines(run_cli([*lb, "--json", "list"], home, check=True).out)) == 4


def test_tags_filter_and_cleanup_forgets_in_the_repository(grid, tmp_path):
    lb = ["--url", grid.url]
    home, other = tmp_path / "h", tmp_path / "other"
    src = make_tree(tmp_path / "src", small=20, medium=0, large=0)
    for i, tag in enumerate(["daily", "daily", "weekly"]):
        (src / "n.txt").write_text(f"v{i}\n" * 30)
        run_cli([*lb, "backup", str(src), "--tag", tag], home, check=True)
    key = run_cli([*lb, "key"], home, check=True).out.strip()
    assert len(json_lines(run_cli([*lb, "--json", "list", "--tag", "daily"], home, check=True).out)) == 2
    r = run_cli([*lb, "cleanup", "--keep-last", "1", "--tag", "daily"], home, check=True)
    assert "forgot 1 backup," in r.err
    seen = json_lines(run_cli([*lb, "--json", "list"], other, env={"LAFS_BACKUP_REPO": key}, check=True).out)
    assert sorted(x["tags"][0] for x in seen) == ["daily", "weekly"]  # gone from the repository too


def test_a_grid_of_several_machines_on_this_one(tmp_path):
    m1, m2, m3 = tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"
    with local_grid(m1) as g:
        furl = run_cli(["grid", "furl", "--dir", str(g.dir)], m1, check=True).out.strip()
        assert furl.startswith("pb://")
        try:
            # Machine 2 lends a storage node; machine 3 runs a gateway of its own.
            # The FURL is a secret: it comes from stdin or the environment, never a command line.
            r = run_cli(["grid", "join", "-", "--storage"], m2, timeout=180, input=furl + "\n")
            assert r.code == 0, r.err
            r = run_cli(["grid", "join", "-o", "grid.happy=4", "-o", "grid.nodes=4"], m3, timeout=180,
                        env={"LAFS_BACKUP_FURL": furl})
            assert r.code == 0, r.err
            url = r.out.strip()
            assert url.startswith("http://127.0.0.1:") and url != g.url
            with urllib.request.urlopen(url + "?t=json") as resp:
                servers = [s for s in json.load(resp)["servers"] if s["connection_status"].startswith("Connected")]
            assert len(servers) == 4  # three of machine 1, one of machine 2
            assert furl not in r.out + r.err
            src = make_tree(tmp_path / "src", small=40, medium=1, large=0)
            run_cli(["--url", url, "backup", str(src)], m3, check=True)
            out = tmp_path / "out"
            run_cli(["--url", url, "restore", "latest", "--target", str(out)], m3, check=True)
            assert full_differences(src, out) == []
        finally:
            for home in (m2, m3):
                for d in (home / "data" / "lafs-backup" / "joined").glob("*"):
                    run_cli(["grid", "down", "--dir", str(d)], home, timeout=120)
