"""``source.hooks`` and ``backup --skip-if-unchanged`` through the real CLI against the real grid: a
database dump made by the before hook is in the backup and restores; the after hook gets the id
``list`` shows; a failing dump records nothing and on_failure is told; an unchanged rerun with the
flag records nothing and says so, and a changed one records."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import json_lines



def hooks_config(path: Path, **hooks: list[str]) -> str:
    path.write_text(yaml.safe_dump({"source": {"hooks": hooks}}))
    return str(path)


def env_of(path: Path) -> dict[str, str]:
    """A hook's environment as ``env -0`` wrote it."""
    return dict(item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)


def listed(lb) -> list[dict]:
    return [r for r in json_lines(lb("--json", "list", check=True).out) if r.get("type") == "backup"]


def database(path: Path, *rows: str) -> Path:
    subprocess.run(["sqlite3", str(path), "CREATE TABLE IF NOT EXISTS notes(body TEXT);"
                    + "".join(f"INSERT INTO notes VALUES('{r}');" for r in rows)], check=True)
    return path


def test_a_dump_hook_puts_the_dump_into_the_backup_and_after_gets_the_listed_id(lb, tmp_path):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a document\n")
    db = database(tmp_path / "app.sqlite", "first row", "second row")
    conf = hooks_config(
        tmp_path / "c.yaml",
        before=["sh", "-c", f'sqlite3 "{db}" .dump > "$LAFS_BACKUP_SOURCE/db.sql" && echo dumped'],
        after=["sh", "-c", f'env -0 > "{tmp_path}/after.env"'],
        on_failure=["touch", str(tmp_path / "failed")])
    r = lb("-c", conf, "backup", str(src))
    assert r.code == 0, r.err
    assert "hook before: dumped" in r.err  # the hook's output, through the reporter
    (b,) = listed(lb)
    after = env_of(tmp_path / "after.env")
    assert after["LAFS_BACKUP_SNAPSHOT"] == b["id"]
    assert after["LAFS_BACKUP_RESULT"] == "success" and after["LAFS_BACKUP_EXIT_CODE"] == "0"
    assert after["LAFS_BACKUP_SOURCE"] == str(src) and after["LAFS_BACKUP_HOOK"] == "after"
    assert "URI:" not in (tmp_path / "after.env").read_text()  # caps are secrets
    assert not (tmp_path / "failed").exists()

    # The dump restores, and loads into a database with the rows the live one had.
    lb("restore", "latest", "--target", str(tmp_path / "restored"), check=True)
    dumped = (tmp_path / "restored" / "db.sql").read_text()
    assert dumped == subprocess.run(["sqlite3", str(db), ".dump"], capture_output=True, text=True).stdout
    subprocess.run(["sqlite3", str(tmp_path / "again.sqlite")], input=dumped, text=True, check=True)
    rows = subprocess.run(["sqlite3", str(tmp_path / "again.sqlite"), "SELECT body FROM notes ORDER BY body"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert rows == ["first", "row", "second", "row"]
    assert (tmp_path / "restored" / "docs" / "a.txt").read_text() == "a document\n"


def test_a_failing_dump_records_nothing_and_on_failure_is_told(lb, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    lb("backup", str(src), check=True)
    conf = hooks_config(
        tmp_path / "c.yaml",
        before=["sh", "-c", 'sqlite3 -bail /nonexistent/dir/app.sqlite .dump > "$LAFS_BACKUP_SOURCE/db.sql"'],
        after=["touch", str(tmp_path / "after-ran")],
        on_failure=["sh", "-c", f'env -0 > "{tmp_path}/failure.env"'])
    (src / "a.txt").write_text("changed\n")
    r = lb("-c", conf, "backup", str(src))
    assert r.code == 4, r.err
    assert "The before hook (sh) exited with code 1" in r.err and "unable to open database" in r.err
    assert "nothing was recorded" in r.err
    assert len(listed(lb)) == 1  # the earlier backup alone
    assert not (tmp_path / "after-ran").exists()
    failure = env_of(tmp_path / "failure.env")
    assert failure["LAFS_BACKUP_RESULT"] == "failed" and failure["LAFS_BACKUP_EXIT_CODE"] == "4"
    assert "before hook" in failure["LAFS_BACKUP_ERROR"] and failure["LAFS_BACKUP_SOURCE"] == str(src)


def test_a_failing_after_hook_keeps_the_backup_and_exits_partial(lb, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    conf = hooks_config(tmp_path / "c.yaml", after=["sh", "-c", "echo cannot unmount >&2; exit 32"])
    r = lb("-c", conf, "--json", "backup", str(src))
    assert r.code == 1, r.err
    records = json_lines(r.out)
    assert {"type": "hook", "hook": "after", "stream": "stderr", "line": "cannot unmount"} in records
    (warning,) = [x for x in records if x.get("type") == "warning"]
    assert "after hook (sh) exited with code 32" in warning["message"]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["warnings"] == 1
    assert [b["id"] for b in listed(lb)] == [summary["id"]]


def test_skip_if_unchanged_records_nothing_until_the_source_changes(lb, tmp_path):
    """With the documented dump hook that keeps the dump file as it is while the database is the
    same (a file written anew would change the snapshot every time)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("a\n")
    (src / "b.txt").write_text("b\n")
    db = database(tmp_path / "app.sqlite", "first row")
    fresh = tmp_path / "fresh.sql"  # (outside the source: a file made and removed there changes its directory)
    conf = hooks_config(
        tmp_path / "c.yaml",
        before=["sh", "-c", f'sqlite3 "{db}" .dump > "{fresh}" && '
                            f'{{ cmp -s "{fresh}" "$LAFS_BACKUP_SOURCE/db.sql" || cp "{fresh}" "$LAFS_BACKUP_SOURCE/db.sql"; }}'],
        after=["sh", "-c", f'env -0 > "{tmp_path}/after.env"'])

    def backup(*extra: str) -> tuple[int, dict]:
        r = lb("-c", conf, "--json", "backup", str(src), *extra)
        return r.code, json.loads(r.out.splitlines()[-1])

    code, first = backup("--skip-if-unchanged")  # no backup yet: recorded
    assert code == 0 and first["skipped"] is False
    assert [b["id"] for b in listed(lb)] == [first["id"]]

    code, second = backup("--skip-if-unchanged")
    assert code == 0 and second["skipped"] is True
    assert second["id"] == first["id"] and second["generation"] == first["generation"]
    assert [b["id"] for b in listed(lb)] == [first["id"]]  # nothing recorded
    after = env_of(tmp_path / "after.env")
    assert after["LAFS_BACKUP_RESULT"] == "skipped" and after["LAFS_BACKUP_SNAPSHOT"] == first["id"]
    assert after["LAFS_BACKUP_EXIT_CODE"] == "0"

    r = lb("backup", str(src), "--skip-if-unchanged")  # the text summary says so too
    assert r.code == 0, r.err
    assert f"nothing changed since snapshot {first['id']}" in r.err and "no new backup recorded" in r.err
    assert r.out.strip() == listed(lb)[0]["cap"]  # (stdout: the cap of the backup that stands, as configured)
    assert len(listed(lb)) == 1

    database(db, "second row")  # the database changes: so does its dump, and the backup is recorded
    code, third = backup("--skip-if-unchanged")
    assert code == 0 and third["skipped"] is False and third["id"] != first["id"]
    assert [b["id"] for b in listed(lb)] == [first["id"], third["id"]]
    assert env_of(tmp_path / "after.env")["LAFS_BACKUP_RESULT"] == "success"

    code, fourth = backup()  # without the flag, an unchanged rerun is recorded as before
    assert code == 0 and fourth["skipped"] is False
    assert len(listed(lb)) == 3
    lb("restore", third["id"], "--target", str(tmp_path / "restored"), check=True)
    assert "second row" in (tmp_path / "restored" / "db.sql").read_text()
    (src / "d" / "a.txt").write_text("a, changed\n")  # a change of a file: recorded too
    code, fifth = backup("--skip-if-unchanged")
    assert code == 0 and fifth["skipped"] is False and len(listed(lb)) == 4


@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own (unix socket only), with a database ``mydb``: the
    environment that reaches it (PGHOST, PGUSER), and a runner of its client commands."""
    import os
    import tempfile

    import glob

    # Debian keeps the server's programs (initdb, pg_ctl) off PATH, under /usr/lib/postgresql/N/bin;
    # .ci/run installs the package.
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    path = os.pathsep.join([*bins[-1:], os.environ.get("PATH", "")])
    initdb, pg_ctl = shutil.which("initdb", path=path), shutil.which("pg_ctl", path=path)
    assert initdb and pg_ctl and shutil.which("pg_dump"), "PostgreSQL is not installed (Debian: postgresql)"
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []  # (postgres refuses to run as root)
    user = "nobody" if as_user else os.environ.get("USER", "postgres")
    top = tempfile.mkdtemp(prefix="lafs-pg-", dir="/tmp")
    os.chmod(top, 0o755)
    if as_user:
        shutil.chown(top, "nobody")
    data = os.path.join(top, "data")
    env = {"PGHOST": top, "PGUSER": user}
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-o", f"-k {top} -c listen_addresses=''", "-w", "-l",
                    os.path.join(top, "log"), "start"], check=True, capture_output=True)

    def sql(*args: str, input: str | None = None) -> str:
        return subprocess.run(list(args), env={**os.environ, **env}, input=input, capture_output=True, text=True,
                              check=True).stdout
    try:
        sql("createdb", "mydb")
        sql("psql", "-q", "mydb", "-c", "CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('first row');")
        yield env, sql
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-w", "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def test_the_readmes_pg_dump_example_as_written(grid, home, tmp_path, postgres):
    """The README's database-dump configuration, its paths moved into the test's directory, backs up
    a real pg_dump of a real server; the dump restores into a new database with the same rows."""
    import re

    from conftest import ROOT, run_cli

    env, sql = postgres
    readme = (ROOT / "README.md").read_text()
    (snippet,) = [s for s in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "pg_dump" in s]
    src = tmp_path / "srv" / "data"
    (src / "dumps").mkdir(parents=True)
    (src / "notes.txt").write_text("not a database\n")
    conf = tmp_path / "config.yaml"
    conf.write_text(snippet.replace("/srv/data", str(src)))
    assert yaml.safe_load(conf.read_text())["source"]["hooks"]["before"][0] == "sh"

    def lb(*args: str):
        return run_cli(["--url", grid.url, "-c", str(conf), *args], home, env=env)

    r = lb("backup")  # (SOURCE: source.path, as the README's configuration says)
    assert r.code == 0, r.err
    (b,) = [x for x in json_lines(lb("--json", "list").out) if x.get("type") == "backup"]
    assert b["source"] == str(src)
    assert lb("restore", "latest", "--target", str(tmp_path / "restored")).code == 0
    dumped = (tmp_path / "restored" / "dumps" / "mydb.sql").read_text()
    assert "first row" in dumped and dumped == (src / "dumps" / "mydb.sql").read_text()
    sql("createdb", "again")
    sql("psql", "-q", "-v", "ON_ERROR_STOP=1", "again", input=dumped)
    assert sql("psql", "-At", "again", "-c", "SELECT body FROM notes").split("\n")[0] == "first row"
