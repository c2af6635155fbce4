"""The metrics file's text (pure): the local history's backups, checks and runs as gauges in the Prometheus text
format, for node_exporter's textfile collector (written by ``engine/monitor.py``)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..history import Backup, Run
from ..read.standing import source_rows

#: Each metric by name, with its help line.  Every one is a gauge.
METRICS: dict[str, str] = {
    "lafs_backup_last_backup_timestamp_seconds": "When the last finished backup of the source was made.",
    "lafs_backup_last_backup_duration_seconds": "How long the last backup of the source took.",
    "lafs_backup_last_backup_added_bytes": "Bytes the last backup of the source added to the grid (after compression).",
    "lafs_backup_last_backup_warnings": "Entries the last backup of the source skipped with a warning.",
    "lafs_backup_backups_kept": "Backups of the source this machine made and keeps.",
    "lafs_backup_lease_expiry_timestamp_seconds": "The earliest time a lease of a kept backup of the source may "
                                                  "run out if no check renews it.",
    "lafs_backup_lease_margin_seconds": "Seconds until that earliest lease expiry (negative: past).",
    "lafs_backup_check_objects_unhealthy": "Objects the last check found unhealthy.",
    "lafs_backup_check_objects_repaired": "Objects the last check repaired.",
    "lafs_backup_last_run_timestamp_seconds": "When the last run of the command ended.",
    "lafs_backup_last_success_timestamp_seconds": "When a run of the command last ended with exit code 0 or 1.",
    "lafs_backup_last_run_duration_seconds": "How long the last run of the command took.",
    "lafs_backup_last_run_exit_code": "The exit code of the last run of the command.",
    "lafs_backup_metrics_timestamp_seconds": "When this file was written.",
}


def _label(value: str) -> str:
    """A label value, escaped as the text format asks (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() or abs(value) >= 1e15 else str(int(value))


def render(backups: Sequence[Backup], runs: Mapping[str, Run], now: float, lease_days: float | None) -> str:
    """The metrics file: per host and source of ``backups`` (this machine's own, kept), its last backup and
    leases; per command of ``runs``, its last run; the last check's unhealthy objects.  Ends in a newline."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in METRICS}

    def add(name: str, labels: dict[str, str], value: float | int | None) -> None:
        if value is not None:
            samples[name].append((labels, float(value)))

    for row in source_rows(backups, lease_days):
        labels = {"host": row.host, "source": row.source}
        add("lafs_backup_last_backup_timestamp_seconds", labels, row.last_time)
        add("lafs_backup_last_backup_duration_seconds", labels, row.last_seconds)
        add("lafs_backup_last_backup_added_bytes", labels, row.last_added)
        add("lafs_backup_last_backup_warnings", labels, row.last_warnings)
        add("lafs_backup_backups_kept", labels, row.kept)
        add("lafs_backup_lease_expiry_timestamp_seconds", labels, row.expires)
        add("lafs_backup_lease_margin_seconds", labels, None if row.expires is None else row.expires - now)
    check = runs.get("check")
    if check is not None:
        for key in ("unhealthy", "repaired"):
            value = check.details.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                add(f"lafs_backup_check_objects_{key}", {}, value)
    for command, run in sorted(runs.items()):
        labels = {"command": command}
        add("lafs_backup_last_run_timestamp_seconds", labels, run.ts)
        add("lafs_backup_last_success_timestamp_seconds", labels, run.ts_ok)
        add("lafs_backup_last_run_duration_seconds", labels, run.seconds)
        add("lafs_backup_last_run_exit_code", labels, run.code)
    add("lafs_backup_metrics_timestamp_seconds", {}, now)
    return "".join(_family(name, samples[name]) for name in METRICS if samples[name])


def _family(name: str, samples: Iterable[tuple[dict[str, str], float]]) -> str:
    lines = [f"# HELP {name} {METRICS[name]}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"
