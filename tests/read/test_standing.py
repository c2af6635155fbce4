"""Where the backups stand (pure): lease arithmetic and timeline, grid state, alerts and their order, the exit
code; the metrics text; systemd's timer list."""

from __future__ import annotations

from hypothesis import given, strategies as st

from lafs_backup.engine.metrics import render
from lafs_backup.history import Backup, Run
from lafs_backup.read.standing import (Level, assess, grid_state, lease_timeline, leases, next_backup, source_rows,
                                       Timer)
from lafs_backup.system.timers import parse

DAY = 86400.0
NOW = 1_800_000_000.0
OK_GRID = grid_state({"servers": [{"nickname": f"s{i}", "connection_status": "Connected to x", "available_space": 10}
                                  for i in range(3)]}, 3)


def backup(gen: int, ts: float, lease: float | None = None, source: bytes = b"/data", host: str = "h",
           **summary: int) -> Backup:
    return Backup(f"w/{gen}", gen, f"URI:DIR2-CHK:{gen}", source, "data", ts, ts_lease=lease, host=host,
                  summary=dict(summary))


def test_the_lease_margin_levels():
    renewed = [backup(1, NOW - 40 * DAY, lease=NOW - 10 * DAY), backup(2, NOW - DAY, lease=NOW - DAY)]
    r = assess(NOW, renewed, OK_GRID, {}, 31, 1)
    assert r.code == 0 and r.alerts == ()
    for days, level in ((17.5, Level.WARNING), (25, Level.CRITICAL), (40, Level.CRITICAL)):
        r = assess(NOW, [backup(1, NOW - 50 * DAY, lease=NOW - days * DAY)], OK_GRID, {}, 31, 1)
        assert r.level is level and r.alerts[0].topic == "leases"
    assert "may have run out" in assess(NOW, [backup(1, NOW - 50 * DAY, lease=NOW - 40 * DAY)], OK_GRID, {}, 31,
                                        1).alerts[0].message
    # A grid that collects no garbage: nothing runs out.
    assert assess(NOW, [backup(1, NOW - 500 * DAY)], OK_GRID, {}, None, 1).code == 0


def test_a_never_renewed_backup_counts_from_the_oldest_before_it():
    """An object a later backup reuses from the cache came from an earlier one: its lease may be as old."""
    bs = [backup(1, NOW - 20 * DAY), backup(2, NOW - DAY)]
    by_gen = {x.generation: x for x in leases(bs, 31)}
    assert by_gen[2].floor == NOW - 20 * DAY and by_gen[2].expires == NOW + 11 * DAY
    (row,) = source_rows(bs, 31)
    assert row.renewed is None and row.expires == NOW + 11 * DAY and row.kept == 2 and row.last_generation == 2


@given(st.lists(st.tuples(st.floats(0, 100), st.one_of(st.none(), st.floats(0, 100))), min_size=1, max_size=12))
def test_the_timeline_is_soonest_first_and_no_expiry_is_later_than_its_backup_allows(specs):
    bs = [backup(i + 1, NOW - made * DAY, None if renewed is None else NOW - renewed * DAY)
          for i, (made, renewed) in enumerate(specs)]
    line = lease_timeline(bs, 31)
    assert sorted(x.generation for x in line) == sorted(b.generation for b in bs)
    assert [x.expires for x in line] == sorted(x.expires for x in line if x.expires is not None)
    for x in line:
        b = next(b for b in bs if b.generation == x.generation)
        assert x.expires is not None and x.expires <= (b.ts_lease if b.ts_lease is not None else b.ts) + 31 * DAY
    r = assess(NOW, bs, OK_GRID, {}, 31, 1)
    assert r.code == max((x.level(NOW) for x in line), key=lambda v: v.urgency)


def test_the_grid_against_happy_and_alerts_most_urgent_first():
    welcome = {"servers": [{"nickname": "a", "connection_status": "Connected to tcp:x", "available_space": 5},
                           {"nickname": "b", "connection_status": "Trying to connect", "available_space": 7},
                           {"nodeid": "v0-c", "connection_status": "Connected", "available_space": None}]}
    g = grid_state(welcome, 3)
    assert g.connected == ["a", "v0-c"] and g.missing == ["b"] and g.free == 5
    bs = [backup(1, NOW - DAY, lease=NOW - 20 * DAY, warnings=2)]
    r = assess(NOW, bs, g, {"check": Run("check", NOW, 1.0, 6, {"unhealthy": 3, "repaired": 1})}, 31, 2)
    assert [a.level for a in r.alerts] == [Level.CRITICAL] + [Level.WARNING] * 4
    assert "only 2 of the 3" in r.alerts[0].message and "b" in r.alerts[0].message and r.code == 2
    assert {a.topic for a in r.alerts[1:]} == {"leases", "backup", "check", "copies"}
    # Happiness not known: a missing server is a warning.
    assert assess(NOW, [], grid_state(welcome, None), {}, 31, 1).code == 1
    # The grid cannot be asked: unknown, unless something is critical.
    from lafs_backup.read.standing import GridState

    down = GridState(problem="connection refused")
    assert assess(NOW, [backup(1, NOW - DAY, lease=NOW)], down, {}, 31, 1).code == 3
    assert assess(NOW, [backup(1, NOW - DAY, lease=NOW - 30 * DAY)], down, {}, 31, 1).code == 2


def test_a_failed_backup_run_after_the_last_backup_is_critical_and_no_cap_is_shown():
    bs = [backup(1, NOW - DAY, lease=NOW - DAY)]
    failed = Run("backup", NOW - 60, 3.0, 3, {"error": "the grid refused"})
    r = assess(NOW, bs, OK_GRID, {"backup": failed}, 31, 1)
    assert r.code == 2 and "exit code 3" in r.alerts[0].message
    assert assess(NOW, bs, OK_GRID, {"backup": Run("backup", NOW - 2 * DAY, 3.0, 3)}, 31, 1).code == 0
    assert "URI:" not in repr(r.json())


def test_the_next_backup_comes_from_the_timers_for_this_host_alone():
    timers = [Timer("lafs-backup.timer", "lafs-backup.service", NOW + 3600),
              Timer("lafs-backup-check.timer", "lafs-backup-check.service", NOW + 60)]
    assert next_backup(timers) == NOW + 3600 and next_backup(None) is None
    rows = source_rows([backup(1, NOW, host="here"), backup(2, NOW, host="there")], 31, NOW + 3600, "here")
    assert [(r.host, r.next_run) for r in rows] == [("here", NOW + 3600), ("there", None)]


def test_systemd_timers_are_parsed():
    out = (b'[{"next":1800000000000000,"left":5,"last":0,"passed":null,"unit":"lafs-backup.timer",'
           b'"activates":"lafs-backup.service"},{"next":1,"unit":"apt-daily.timer","activates":"apt-daily.service"}]')
    (t,) = parse(out)
    assert t.unit == "lafs-backup.timer" and t.next == 1_800_000_000.0 and t.last is None


def test_the_metrics_text():
    bs = [backup(1, NOW - DAY, lease=NOW - DAY, source=b'/a"b\\c', bytes_uploaded=1234, warnings=0)]
    text = render(bs, {"check": Run("check", NOW, 2.5, 0, {"unhealthy": 0}, NOW)}, NOW, 31)
    assert text.endswith("\n")
    assert 'lafs_backup_last_backup_added_bytes{host="h",source="/a\\"b\\\\c"} 1234\n' in text
    assert 'lafs_backup_lease_margin_seconds{host="h",source="/a\\"b\\\\c"} 2592000\n' in text
    assert 'lafs_backup_last_run_duration_seconds{command="check"} 2.5\n' in text
    assert "lafs_backup_check_objects_unhealthy 0\n" in text
    assert "# TYPE lafs_backup_backups_kept gauge\n" in text
    assert "URI:" not in text
