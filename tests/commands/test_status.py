"""``status`` through the real CLI against a real local grid: a healthy fresh backup is OK (exit 0); a stopped
storage server and leases not renewed for 25 days are critical (exit 2), naming both; misuse is unknown (3).
And the metrics file a backup writes, which parses as the Prometheus text format and says what the backup did."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import time
import urllib.request
from pathlib import Path

from conftest import json_lines, local_grid, make_tree, restamp, run_cli

from lafs_backup.grid.local import GridSpec, LocalGrid

DAY = 86400


def _connected(url: str) -> int:
    with urllib.request.urlopen(f"{url}?t=json") as r:
        servers = json.load(r)["servers"]
    return sum(1 for s in servers if str(s["connection_status"]).lower().startswith("connected"))


def _renewed(home: Path, cap: str, ts: float) -> None:
    """Say in the entry cache that a check last renewed the leases of backup ``cap`` at ``ts``."""
    (db_path,) = (home / "state" / "lafs-backup").glob("entry-cache.*.sqlite")
    db = sqlite3.connect(db_path)
    db.execute("UPDATE checked SET ts_check=?, ts_lease=? WHERE cap=?", (ts, ts, cap))
    assert db.total_changes == 1
    db.commit()
    db.close()


def test_a_stopped_server_and_leases_not_renewed_for_25_days_are_critical(tmp_path):
    ghome = tmp_path / "gh"
    ghome.mkdir()
    with local_grid(ghome) as grid:
        home = tmp_path / "h"
        home.mkdir()
        # (a gateway of a grid found by its URL: the happiness its uploads need is configured)
        lb = ["--url", grid.url, "-o", "destination.happy=3"]
        docs = make_tree(tmp_path / "docs", small=6, medium=0, large=0, seed=1)
        mail = make_tree(tmp_path / "mail", small=6, medium=0, large=0, seed=2)
        run_cli([*lb, "backup", str(docs)], home, check=True)
        run_cli([*lb, "backup", str(mail)], home, check=True)
        assert run_cli([*lb, "check"], home).code == 0
        r = run_cli([*lb, "status"], home)
        assert r.code == 0, r.out + r.err
        assert "lafs-backup status: OK" in r.out and "3 of 3 storage servers connected, 3 needed" in r.out

        # The backup of docs was made 40 days ago, and a check last renewed its leases 25 days ago.
        now = time.time()
        listed = {b["generation"]: b for b in json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)}
        restamp(grid.url, home, {1: now - 40 * DAY})
        _renewed(home, listed[1]["cap"], now - 25 * DAY)
        # (a backup's short id is made from its time too)
        listed = {b["generation"]: b for b in json_lines(run_cli([*lb, "list", "--json"], home, check=True).out)}
        LocalGrid(GridSpec(str(grid.dir))).kill_node("storage1")
        deadline = time.monotonic() + 60
        while _connected(grid.url) > 2:
            assert time.monotonic() < deadline, "the gateway still counts the stopped server as connected"
            time.sleep(0.1)

        r = run_cli([*lb, "status"], home)
        assert r.code == 2, r.out + r.err
        assert "lafs-backup status: CRITICAL" in r.out
        crit = [line for line in r.out.splitlines() if line.startswith("CRITICAL: ")]
        assert any("only 2 of the 3 storage servers" in c and "storage1" in c for c in crit), r.out
        ours = listed[1]["id"]
        assert any(f"backup {ours}" in c and "generation 1" in c and str(docs) in c and "may run out in 6.0 days"
                   in c for c in crit), r.out
        # The other backup's leases were renewed by the check just now: no alert about them.
        assert not any(listed[2]["id"] in c for c in crit)
        assert "URI:" not in r.out + r.err

        doc = json.loads(run_cli([*lb, "status", "--json"], home).out)
        assert doc["state"] == "critical" and doc["code"] == 2
        assert doc["grid"]["connected"] == 2 and doc["grid"]["happy"] == 3
        assert [s["name"] for s in doc["grid"]["servers"] if not s["connected"]] == ["storage1"]
        lease = next(x for x in doc["leases"] if x["id"] == ours)
        assert 5.9 < lease["margin_days"] < 6.1 and lease["level"] == "critical"
        docs_row = next(s for s in doc["sources"] if s["source"] == str(docs))
        assert docs_row["leases"]["first_to_expire"] == ours and docs_row["kept"] == 1
        assert doc["alerts"][0]["level"] == "critical"
        assert doc["last_check"]["details"]["unhealthy"] == 0 and doc["last_check"]["details"]["backups"] == 2
        assert "URI:" not in json.dumps(doc)


def test_a_fresh_backup_is_ok_and_writes_the_metrics_file(lb, home, tmp_path):
    src = make_tree(tmp_path / "src", small=20, medium=1, large=0)
    r = lb("backup", "--json", str(src))
    assert r.code == 0, r.err
    summary = json_lines(r.out)[-1]
    r = lb("status")
    assert r.code == 0, r.out + r.err
    assert "lafs-backup status: OK" in r.out and str(src) in r.out
    assert "last verify: never run from this machine" in r.out
    doc = json.loads(lb("status", "--json").out)
    assert doc["code"] == 0 and doc["alerts"] == []
    (row,) = doc["sources"]
    assert row["last"]["bytes_added"] == summary["bytes_added"] and row["last"]["result"] == "ok"
    assert row["last"]["age_seconds"] < 600 and row["last"]["seconds"] is not None
    assert 30.9 < row["leases"]["margin_days"] <= 31

    prom = home / "state" / "lafs-backup" / "lafs-backup.prom"
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    samples = _parse_prometheus(prom.read_text())
    labels = (("host", row["host"]), ("source", str(src)))
    assert samples[("lafs_backup_last_backup_added_bytes", labels)] == summary["bytes_added"]
    assert samples[("lafs_backup_backups_kept", labels)] == 1
    assert samples[("lafs_backup_last_backup_timestamp_seconds", labels)] == row["last"]["timestamp"]
    assert abs(samples[("lafs_backup_last_backup_duration_seconds", labels)] - summary["seconds"]) < 5
    assert 30.9 * 86400 < samples[("lafs_backup_lease_margin_seconds", labels)] <= 31 * 86400
    assert samples[("lafs_backup_last_run_exit_code", (("command", "backup"),))] == 0
    assert not list(prom.parent.glob("lafs-backup.prom.tmp*"))
    assert "URI:" not in prom.read_text()

    # A check is recorded, and rewrites the file with what it found.
    assert lb("check").code == 0
    samples = _parse_prometheus(prom.read_text())
    assert samples[("lafs_backup_check_objects_unhealthy", ())] == 0
    assert ("lafs_backup_last_success_timestamp_seconds", (("command", "check"),)) in samples


def test_misuse_is_unknown_and_help_says_the_codes_differ(home):
    r = run_cli(["status", "--bogus"], home)
    assert r.code == 3, r.err
    r = run_cli(["status", "-o", "notify.url=ftp://example.org/x"], home)
    assert r.code == 3 and "notify.url" in r.err, r.err
    r = run_cli(["status", "--help"], home)
    assert r.code == 0 and "monitoring plugin's, unlike every other command's" in r.out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a Prometheus text-format file, checked line by line: each family's HELP and TYPE
    come before its samples, every sample line is NAME{LABELS} VALUE with a valid name, labels and float."""
    assert text.endswith("\n")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            assert len(parts) == 4 and re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", parts[2]), line
            if parts[1] == "TYPE":
                assert parts[3] in ("gauge", "counter", "untyped"), line
                typed.add(parts[2])
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, raw, value = m.groups()
        assert name in typed, f"{name} has no TYPE line before it"
        labels: list[tuple[str, str]] = []
        if raw:
            pos = 0
            while pos < len(raw):
                lm = _LABEL.match(raw, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), lm.group(2).replace('\\"', '"').replace("\\n", "\n")
                               .replace("\\\\", "\\")))
                pos = lm.end()
        key = (name, tuple(labels))
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value)
    return out
