"""check against a private real grid: lease renewal, a lost share found and repaired, an unrecoverable object."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import json_lines, local_grid, make_tree, run_cli
from lafs_backup.grid.health import StreamParser, judge
from lafs_backup.grid.local import GridSpec, LocalGrid


def _unit(happiness, recoverable=True, corrupt=0, **extra):
    return {"type": "file", "path": ["a", "b"], "check-results": {"results": {
        "count-happiness": happiness, "recoverable": recoverable, "healthy": True,
        "count-corrupt-shares": corrupt}}, **extra}


def test_judge_uses_happiness_and_recoverability_not_healthy():
    assert judge(_unit(3), 3).healthy
    assert not judge(_unit(1), 3).healthy  # Tahoe said healthy: true, but only one server holds it
    assert not judge(_unit(3, recoverable=False), 3).healthy
    assert not judge(_unit(3, corrupt=1), 3).healthy
    lit = {"type": "file", "path": ["x"], "storage-index": "", "check-results": {"results": {"healthy": True}}}
    assert judge(lit, 3).healthy
    repaired = {"type": "file", "path": ["y"], "check-and-repair-results": {
        "repair-attempted": True, "repair-successful": True,
        "pre-repair-results": {"results": {"count-happiness": 2, "recoverable": True}},
        "post-repair-results": {"results": {"count-happiness": 3, "recoverable": True, "count-corrupt-shares": 0}}}}
    v = judge(repaired, 3)
    assert v.healthy and v.repaired and v.path == "/y"


def test_missing_result_fields_are_never_health():
    for missing in ("recoverable", "count-happiness", "count-corrupt-shares"):
        unit = _unit(3)
        del unit["check-results"]["results"][missing]
        v = judge(unit, 3)
        assert not v.healthy and missing in v.summary
    assert not judge({"type": "file", "path": ["x"], "storage-index": "abc", "check-results": {}}, 3).healthy
    assert not judge({"type": "file", "path": ["x"], "storage-index": "abc"}, 3).healthy


def test_an_object_is_judged_by_what_it_can_have():
    """k-of-N never spreads over more than N servers: a 2-of-3 object on 3 servers is healthy on a
    grid whose happiness is 7, and a lost server is still found."""
    unit = _unit(3, **{"verifycap": "URI:CHK-Verifier:" + "a" * 26 + ":" + "b" * 52 + ":2:3:1000"})
    assert judge(unit, 7).healthy and "needed>=3" in judge(unit, 7).summary
    lost = _unit(2, **{"verifycap": "URI:CHK-Verifier:" + "a" * 26 + ":" + "b" * 52 + ":2:3:1000"})
    assert not judge(lost, 7).healthy
    expected = _unit(4)
    expected["check-results"]["results"]["count-shares-expected"] = 5  # a mutable object says its N
    assert judge(expected, 4).healthy and not judge(expected, 5).healthy


def test_error_line_in_the_stream_is_a_failure():
    seen = []
    p = StreamParser(3, seen.append)
    p.feed(json.dumps(_unit(3)).encode() + b"\n" + b"ERROR: UnrecoverableFileError(no recoverable versions)\n")
    p.feed(b"Traceback (most recent call last):\n")
    p.close()
    assert len(seen) == 1 and p.error.startswith("ERROR: UnrecoverableFileError")


@pytest.fixture(scope="module")
def own_grid(tmp_path_factory):
    """A grid of its own, shaped unlike the embedded one (3-of-5, happiness 4), used as a user's
    own gateway (--url, no destination.happy): these tests delete shares and stop servers."""
    home = tmp_path_factory.mktemp("checkgrid")
    with local_grid(home, nodes=5, needed=3, happy=4) as g:
        yield g, home


def _share_files(gdir: Path, node: str) -> list[Path]:
    return sorted(p for p in (gdir / node / "storage" / "shares").rglob("*")
                  if p.is_file() and p.parent.parent.name != "incoming" and p.name.isdigit())


def test_lost_share_is_reported_then_repaired(own_grid, tmp_path):
    grid, _ = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    run_cli([*lb, "backup", str(src)], home, check=True)
    r = run_cli([*lb, "check"], home)
    assert r.code == 0, r.err + r.out  # a healthy grid of another shape checks clean
    assert "0 unhealthy, leases renewed" in r.err
    listed = json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)[0]
    assert listed["last_check"] and listed["leases_renewed"]

    cap = json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)[0]["cap"]
    ours = _manifest(grid.url, cap)  # the grid also holds the repository: take a share of the backup's
    victim = next(p for p in _share_files(grid.dir, "storage1") if p.parent.name in ours)
    victim.unlink()
    r = run_cli([*lb, "check", "--json"], home)
    assert r.code == 6, r.err
    bad = [json.loads(ln) for ln in r.out.splitlines() if '"unhealthy"' in ln and '"type"' in ln]
    assert any(u["type"] == "unhealthy" and u["happiness"] == 4 and "needed>=5" in u["summary"]
               for u in bad), r.out
    assert "URI:" not in r.out  # object paths, never caps

    r = run_cli([*lb, "check", "-r", "--json"], home)
    assert r.code == 0, r.out + r.err
    summary = [json.loads(ln) for ln in r.out.splitlines() if '"checked"' in ln][0]
    assert summary["unhealthy"] == 0

    r = run_cli([*lb, "check"], home)
    assert r.code == 0 and "0 unhealthy" in r.err


def _manifest(url: str, cap: str) -> set[str]:
    """Storage indexes of every object a snapshot reaches, as Tahoe itself walks it."""
    import urllib.request

    req = urllib.request.Request(f"{url}uri/{cap}?t=stream-manifest", method="POST")
    with urllib.request.urlopen(req) as resp:
        units = [json.loads(ln) for ln in resp.read().decode().splitlines() if ln.startswith("{")]
    return {u["storage-index"] for u in units if u.get("storage-index")}


def _index_chunks(url: str, cap: str) -> int:
    """How many chunks a snapshot's index has."""
    import urllib.parse
    import urllib.request

    def children(c: str) -> dict:
        with urllib.request.urlopen(f"{url}uri/{urllib.parse.quote(c)}?t=json") as resp:
            return json.loads(resp.read())[1]["children"]

    return len(children(children(cap)["index"][1]["ro_uri"]))


def test_every_backup_checked_each_distinct_object_once(own_grid, tmp_path):
    grid, _ = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    src = make_tree(tmp_path / "src", small=400, medium=3, large=0)
    caps = []
    for i in range(4):
        if i:
            victim = sorted(src.rglob("f*.txt"))[i * 7]
            victim.write_bytes(victim.read_bytes() + b"changed %d\n" % i)
        caps.append(run_cli([*lb, "backup", str(src)], home, check=True).out.strip())
    distinct = set().union(*(_manifest(grid.url, c) for c in caps))
    newest = _manifest(grid.url, caps[-1])

    r = run_cli([*lb, "check", "--json"], home)
    assert r.code == 0, r.err + r.out
    runs = [json.loads(ln) for ln in r.out.splitlines() if '"checked"' in ln]
    assert [x["generation"] for x in runs] == [4, 3, 2, 1]  # newest first
    assert runs[0]["objects"] == len(newest)
    # Together, every distinct object once: no object twice, none left out.
    assert sum(x["objects"] for x in runs) == len(distinct)
    for older in runs[1:]:
        # What one changed file makes new: the snapshot root, its objects directory, the
        # directories from the tree's root down to the file (at most five deep), its pack, and the
        # index directory with the chunks around those directories (at most all of the index's).
        chunks = _index_chunks(grid.url, caps[older["generation"] - 1])
        assert 1 <= chunks <= 3, chunks
        assert older["objects"] <= 9 + chunks and older["shared"] > 0, (older, chunks)
    listed = json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)
    assert all(b["leases_renewed"] for b in listed)


def test_least_recently_checked_goes_round_robin(own_grid, tmp_path):
    grid, _ = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    for i in range(2):
        src = make_tree(tmp_path / f"src{i}", small=3 + i, medium=0, large=0)
        run_cli([*lb, "backup", str(src)], home, check=True)
    for _ in range(2):
        r = run_cli([*lb, "check", "-a"], home, check=True)
        assert r.err.count("objects checked") == 1
    checked = [b["last_check"] for b in json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)]
    assert all(checked)


def test_leases_about_to_end_are_warned_about(own_grid, tmp_path):
    import time

    grid, _ = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    src = make_tree(tmp_path / "src", small=4, medium=0, large=0)
    run_cli([*lb, "backup", str(src)], home, check=True)
    assert "leases" not in run_cli([*lb, "backup", str(src)], home, check=True).err
    # Make the first backup 26 days old, never checked since: its objects' leases end within a week.
    from conftest import restamp

    restamp(grid.url, home, {1: time.time() - 26 * 86400})
    r = run_cli([*lb, "backup", str(src)], home)
    assert r.code == 0 and "may lose objects whose leases end" in r.err, r.err
    assert "leases renewed: never" in run_cli([*lb, "list"], home, check=True).out
    r = run_cli([*lb, "check"], home)
    assert r.code == 0 and "may lose objects" not in r.err, r.err
    assert "leases renewed: never" not in run_cli([*lb, "list"], home, check=True).out


def test_unrecoverable_object_is_reported(own_grid, tmp_path):
    grid, ghome = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    src = make_tree(tmp_path / "src", small=5, medium=0, large=0)
    run_cli([*lb, "backup", str(src)], home, check=True)
    g = LocalGrid(GridSpec(str(grid.dir)))
    for node in ("storage1", "storage2", "storage3"):
        g.kill_node(node, signal.SIGTERM)
    try:
        r = run_cli([*lb, "check", "--json"], home, timeout=120)
        assert r.code == 6, r.err
        assert '"recoverable": false' in r.out or "stopped" in r.out
    finally:
        assert run_cli(["grid", "up", "--dir", str(grid.dir)], ghome, timeout=180).code == 0
def test_verify_reads_back_and_finds_a_corrupted_share(own_grid, tmp_path):
    grid, _ = own_grid
    home = tmp_path / "h"
    home.mkdir()
    lb = ["--url", grid.url]
    src = make_tree(tmp_path / "src", small=40, medium=2, large=0)
    files = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    run_cli([*lb, "backup", str(src)], home, check=True)
    r = run_cli([*lb, "verify", "latest", "--json"], home)
    assert r.code == 0, r.err + r.out
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["files_read"] == files and summary["problems"] == 0
    assert summary["id"] == json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)[-1]["id"]
    assert "files_uploaded" not in summary and summary["sample_percent"] == 100

    r = run_cli([*lb, "verify", "latest", "--sample", "50", "--json"], home, check=True)
    assert 0 < json.loads(r.out.splitlines()[-1])["files_read"] < files

    # Flip bytes in the middle of this backup's biggest share on one server.
    cap = json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)[-1]["cap"]
    ours = _manifest(grid.url, cap)
    victim = max((p for p in _share_files(grid.dir, "storage1") if p.parent.name in ours),
                 key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    mid = len(original) // 2
    victim.write_bytes(original[:mid] + bytes(b ^ 0xFF for b in original[mid:mid + 64]) + original[mid + 64:])
    try:
        r = run_cli([*lb, "verify", "latest"], home)
        assert r.code == 6, r.err
        assert "corrupt share" in r.err
    finally:
        victim.write_bytes(original)
