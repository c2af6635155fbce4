"""lafs-backup tag through the real CLI against the real local grid: tags changed after the fact are
seen by list, --tag selection and cleanup --keep-tag, survive a lost cache, are seen by a new machine
with the recovery key alone, and two machines tagging at once lose nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, json_lines, run_cli

pytestmark = pytest.mark.slow


def backups(lb: list[str], home: Path, env: dict[str, str] | None = None, *args: str) -> list[dict]:
    return json_lines(run_cli([*lb, "--json", "list", *args], home, env=env, check=True).out)


@pytest.fixture
def made(grid, tmp_path: Path):
    """Four backups of one source: tagged daily, daily, weekly and nothing; each with its own n.txt."""
    lb = ["--url", grid.url]
    home, src = tmp_path / "h", tmp_path / "src"
    src.mkdir()
    for i, tag in enumerate(["daily", "daily", "weekly", None]):
        (src / "n.txt").write_text(f"version {i}\n" * 20)
        run_cli([*lb, "backup", str(src), *(["--tag", tag] if tag else [])], home, check=True)
    return lb, home, src, [b["id"] for b in backups(lb, home)]


def test_tag_changes_are_seen_everywhere_and_kept_by_cleanup(made, tmp_path):
    lb, home, src, ids = made
    r = run_cli([*lb, "--json", "tag", ids[0], ids[1], "--add", "keep"], home, check=True)
    done = [x for x in json_lines(r.out) if x["type"] == "tagged"]
    assert [(x["id"], x["before"], x["tags"], x["changed"]) for x in done] == [
        (ids[0], ["daily"], ["daily", "keep"], True), (ids[1], ["daily"], ["daily", "keep"], True)]
    assert json_lines(r.out)[-1] == {"type": "summary", "changed": 2, "unchanged": 0}
    r = run_cli([*lb, "tag", ids[1], "--remove", "daily", "--remove", "keep"], home, check=True)
    assert f"tagged: {ids[1]}" in r.out and "tags none (were daily, keep)" in r.out
    r = run_cli([*lb, "tag", "latest", "--source", str(src), "--set", "release", "--set", "v1"], home, check=True)
    assert f"tagged: {ids[3]}" in r.out
    r = run_cli([*lb, "tag", ids[0], "--add", "keep"], home, check=True)
    assert f"unchanged: {ids[0]}" in r.out and "changed the tags of 0 backups; 1 had them already" in r.err

    want = [["daily", "keep"], [], ["weekly"], ["release", "v1"]]
    assert [b["tags"] for b in backups(lb, home)] == want
    assert "[daily,keep]" in run_cli([*lb, "list"], home, check=True).out
    assert [b["id"] for b in backups(lb, home, None, "--tag", "keep")] == [ids[0]]
    # --tag picks 'latest' among the backups the changes tagged: the first one's n.txt comes back.
    out = tmp_path / "out"
    run_cli([*lb, "restore", "latest", "--source", str(src), "--tag", "keep", "--target", str(out)], home,
            check=True)
    assert (out / "n.txt").read_text() == "version 0\n" * 20

    # The repository is the truth: a lost cache, and a machine with the key alone, see the same tags.
    for f in (home / "state" / "lafs-backup").glob("entry-cache.*"):
        f.unlink()
    assert [b["tags"] for b in backups(lb, home)] == want
    key = run_cli([*lb, "key"], home, check=True).out.strip()
    other = tmp_path / "other"
    assert [b["tags"] for b in backups(lb, other, {"LAFS_BACKUP_REPO": key})] == want

    r = run_cli([*lb, "--json", "cleanup", "--keep-last", "1", "--keep-tag", "keep", "--dry-run"], home, check=True)
    said = {x["id"]: x for x in json_lines(r.out) if x["type"] in ("forget", "keep")}
    assert said[ids[0]] == {"type": "keep", "id": ids[0], "generation": said[ids[0]]["generation"],
                            "reason": "tag keep"}
    assert {i for i, x in said.items() if x["type"] == "forget"} == {ids[1], ids[2]}
    r = run_cli([*lb, "cleanup", "--keep-last", "1", "--keep-tag", "keep", "--keep-tag", "v1"], home, check=True)
    assert "forgot 2 backups, kept 2" in r.err
    assert [(b["id"], b["tags"]) for b in backups(lb, other, {"LAFS_BACKUP_REPO": key})] == [
        (ids[0], ["daily", "keep"]), (ids[3], ["release", "v1"])]


def test_bad_input_is_refused_clearly(made):
    lb, home, _, ids = made
    for args, code, message in [
        (["tag", ids[0]], 2, "say what to change: --add TAG, --remove TAG or --set TAG"),
        (["tag", ids[0], "--set", "a", "--add", "b"], 2, "--set replaces every tag: give it alone"),
        (["tag", "ffffffff", "--add", "x"], 4, "Snapshot ffffffff cannot be used: no such backup is recorded"),
        (["tag", ids[0], "--add", ""], 2, "argument --add: a tag cannot be empty"),
        (["tag", ids[0], "--remove", "a,b"], 2, "argument --remove: a tag cannot hold ','"),
        (["backup", "/nonexistent", "--tag", " padded"], 2, "argument --tag: a tag cannot start or end with a blank"),
        (["--set", "operation.jobs=2", "tag", ids[0], "--add", "x"], 2, "--set is tag's own option; give the "
                                                                       "global one as -o"),
        (["cleanup", "--keep-tag", "x"], 2, "--keep-tag keeps tagged backups from a policy"),
    ]:
        r = run_cli([*lb, *args], home)
        assert (r.code, message in r.err) == (code, True), (args, r.code, r.err)
    assert [b["tags"] for b in backups(lb, home)] == [["daily"], ["daily"], ["weekly"], []]  # nothing changed


def test_two_machines_tagging_at_once_lose_nothing(made, tmp_path):
    lb, home, _, ids = made
    key = run_cli([*lb, "key"], home, check=True).out.strip()
    runs = []
    for n, who in enumerate(("a", "b")):
        script = "; ".join(f"{sys.executable} -m lafs_backup {' '.join(lb)} tag {i} --add {who}{k}"
                           for k in range(2) for i in ids[n * 2:n * 2 + 2])
        env = {**cli_env(tmp_path / who), "LAFS_BACKUP_REPO": key}
        runs.append(subprocess.Popen(["sh", "-ec", script], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    for p in runs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    tags = [b["tags"] for b in backups(lb, home)]
    assert tags == [["daily", "a0", "a1"], ["daily", "a0", "a1"], ["weekly", "b0", "b1"], ["b0", "b1"]]
