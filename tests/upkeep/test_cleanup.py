"""cleanup and retention: forget exactly the right backups, keep what kept backups use."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from conftest import json_lines, make_tree
from lafs_backup.errors import UsageError
from lafs_backup.upkeep.retention import Policy, decide, parse_duration

DAY = 86400.0
NOW = 1_800_000_000.0


def test_keep_last_and_daily_as_restic():
    backups = [(1, NOW - 10 * DAY), (2, NOW - 5 * DAY), (3, NOW - 2 * DAY), (4, NOW - DAY - 60),
               (5, NOW - DAY - 30), (6, NOW - 100)]
    d = decide(backups, Policy(daily=3), NOW)
    assert sorted(d.keep) == [3, 5, 6]  # newest of each of the 3 most recent days with a backup
    assert sorted(d.forget) == [1, 2, 4]
    d = decide(backups, Policy(last=2, weekly=1), NOW)
    assert sorted(d.keep) == [5, 6] and d.keep[6] == ["last", "weekly"]


def test_within_is_relative_to_the_newest_and_future_backups_expire_nothing():
    backups = [(1, NOW - 10 * DAY), (2, NOW - 3 * DAY), (3, NOW - 2 * DAY), (9, NOW + 50 * DAY)]
    d = decide(backups, Policy(within=parse_duration("2d")), NOW)
    assert d.future == [9] and 9 in d.keep
    assert sorted(d.keep) == [2, 3, 9]  # 2d within the newest *past* backup, not the future one
    assert d.forget == [1]


def test_durations():
    assert parse_duration("1y2m3w4d5h") == 365 * DAY + 60 * DAY + 21 * DAY + 4 * DAY + 5 * 3600
    with pytest.raises(UsageError):
        parse_duration("ten days")


def test_empty_policy_keeps_nothing_and_forgets_nothing_by_itself():
    assert Policy().empty and not Policy(last=1).empty


def _manifest_sis(url: str, cap: str) -> set[str]:
    req = urllib.request.Request(url + "uri/" + cap + "?t=stream-manifest", method="POST")
    out = set()
    for line in urllib.request.urlopen(req).read().splitlines():
        if line.startswith(b"{"):
            si = json.loads(line).get("storage-index")
            if si:
                out.add(si)
    return out


def test_cleanup_forgets_exactly_the_named_backup(lb, grid, home, tmp_path):
    src = make_tree(tmp_path / "src", small=30, medium=1, large=0)
    dircap = urllib.request.urlopen(urllib.request.Request(grid.url + "uri?t=mkdir", method="POST")).read().decode()
    results = tmp_path / "results.txt"
    conf = tmp_path / "c.yaml"
    conf.write_text(f"destination:\n  result:\n    append_to_file: {results}\n    append_to_lafs_dir: '{dircap}'\n")
    caps = []
    for i in range(3):
        (src / f"changing-{i}.txt").write_bytes(b"version %d " % i * 40)
        caps.append(lb("-c", str(conf), "backup", str(src), check=True).out.strip())
    assert len(set(caps)) == 3

    r = lb("-c", str(conf), "cleanup", "-g", "1", "--dry-run", check=True)
    assert re.search(r"^would forget: [0-9a-f]{8} \(generation 1,", r.out, re.M)
    assert re.search(r"^keep: [0-9a-f]{8} \(generation 3,", r.out, re.M)
    assert len(json_lines(lb("list", "--json", check=True).out)) == 3

    r = lb("-c", str(conf), "cleanup", "-g", "1", "-e", "-", "-n", check=True)
    only_first = set(r.out.split())
    assert only_first  # generation 1 had a tree of its own
    assert only_first <= _manifest_sis(grid.url, caps[0])
    assert not only_first & (_manifest_sis(grid.url, caps[1]) | _manifest_sis(grid.url, caps[2]))
    assert len(json_lines(lb("list", "--json", check=True).out)) == 3  # -n forgets nothing

    r = lb("-c", str(conf), "cleanup", "1", check=True)
    assert [b["generation"] for b in json_lines(lb("list", "--json", check=True).out)] == [2, 3]
    assert [ln.split()[-1] for ln in results.read_text().splitlines()] == caps[1:]
    links = json.load(urllib.request.urlopen(grid.url + "uri/" + dircap + "?t=json"))[1]["children"]
    assert sorted(v[1]["ro_uri"] for v in links.values()) == sorted(caps[1:])

    out = tmp_path / "r2"
    lb("restore", "2", "--target", str(out), check=True)
    before = grid.requests()
    lb("-c", str(conf), "backup", str(src), check=True)  # unchanged since generation 3
    assert grid.requests() == before  # the rows kept backups use are all still there


def test_retention_policy_with_controlled_times(lb, grid, home, tmp_path):
    from conftest import restamp

    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    for i in range(5):
        (src / "n.txt").write_bytes(b"%d" % i * 100)
        lb("backup", str(src), check=True)
    now = time.time()
    restamp(grid.url, home, {1: now - 10 * DAY, 2: now - 3 * DAY, 3: now - 2 * DAY, 4: now - 2 * DAY + 60,
                             5: now + 3 * DAY})
    r = lb("cleanup", "--keep-daily", "1", "--keep-within", "2d")
    assert r.code == 1, r.err  # a warning: one backup is stamped in the future
    assert "stamped in the future" in r.err
    assert sorted(b["generation"] for b in json_lines(lb("list", "--json", check=True).out)) == [2, 3, 4, 5]


def test_retention_and_latest_go_by_source(lb, grid, home, tmp_path):
    """Two sources in one cache: each keeps its own newest backup, and 'latest' is per source."""
    a = make_tree(tmp_path / "a", small=6, medium=0, large=0)
    b = make_tree(tmp_path / "b", small=4, medium=0, large=0, seed=2)
    for i in range(2):
        (a / "n.txt").write_bytes(b"a version %d\n" % i * 10)
        lb("backup", str(a), check=True)
    (b / "n.txt").write_bytes(b"b only\n" * 10)
    lb("backup", str(b), check=True)  # b's backup is the newest of all

    r = lb("restore", "latest", "--target", str(tmp_path / "x"))
    assert r.code == 2 and "several sources" in r.err and "--source" in r.err, r.err
    out = tmp_path / "ra"
    lb("restore", "latest", "--source", str(a), "--target", str(out), check=True)
    assert (out / "n.txt").read_bytes() == b"a version 1\n" * 10
    lb("-o", f"source.path={b}", "restore", "latest", "--target", str(tmp_path / "rb"), check=True)
    assert (tmp_path / "rb" / "n.txt").read_bytes() == b"b only\n" * 10

    r = lb("cleanup", "--keep-last", "1", "--dry-run", check=True)
    assert re.search(r"^would forget: [0-9a-f]{8} \(generation 1,", r.out, re.M)
    assert re.search(r"^keep: [0-9a-f]{8} \(generation 2,", r.out, re.M)
    assert re.search(r"^keep: [0-9a-f]{8} \(generation 3,", r.out, re.M)
    lb("cleanup", "--keep-last", "1", check=True)
    left = json_lines(lb("list", "--json", check=True).out)
    assert sorted((x["source"], x["generation"]) for x in left) == [(str(a), 2), (str(b), 3)]
    # The backups kept for a still check clean: its rows and leases were not dropped with b's newer one.
    before = grid.requests()
    lb("backup", str(a), check=True)
    assert grid.requests() == before
    # All together, as before, on request.
    lb("cleanup", "--keep-last", "1", "--group-by", "none", check=True)
    assert [x["generation"] for x in json_lines(lb("list", "--json", check=True).out)] == [4]
