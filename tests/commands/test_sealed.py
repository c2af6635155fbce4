"""A sealed repository through the real CLI on the real grid: the host keeps only its window, and whatever
it holds (its files, its keys, its grid access) neither reads a deleted file nor lists an older backup;
the recovery key, on a new machine, lists and restores every backup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capscan import caps_on_disk, reach
from conftest import json_lines, run_cli
from treecompare import differences

from lafs_backup.grid.local import GridSpec, LocalGrid
from lafs_backup.repository import RepoKey

pytestmark = pytest.mark.slow

def test_a_sealed_host_reads_its_window_only_and_the_recovery_key_reads_everything(grid, tmp_path: Path):
    lb = ["--url", grid.url]
    host, newbox = tmp_path / "host", tmp_path / "new"
    keys = tmp_path / "usb"
    keys.mkdir()
    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    rec, cust = keys / "recovery.key", keys / "custodian.key"
    r = run_cli([*lb, "init", "--sealed", "--recovery-key", str(rec), "--custodian-key", str(cust),
                 "--introducer", furl], host, check=True)
    assert "MOVE IT OFF THIS MACHINE" in r.err and "URI:" not in r.out + r.err and "lafs-backup-key" not in r.out
    assert rec.stat().st_mode & 0o777 == 0o600 and cust.stat().st_mode & 0o777 == 0o600
    recovery = RepoKey.decode(rec.read_text())
    assert recovery.sealed and recovery.opens and recovery.custodian
    # The host cannot print the recovery key; its own key opens nothing.
    r = run_cli([*lb, "key"], host)
    assert r.code == 2 and "sealed" in r.err and r.out == ""
    hostkey = RepoKey.decode(run_cli([*lb, "key", "--host"], host, check=True).out)
    assert hostkey.sealed and not hostkey.opens and hostkey.writecap == recovery.writecap
    assert recovery.open not in json.dumps([p.read_text(errors="replace") for p in host.rglob("*") if p.is_file()])

    # Three backups; a large file (its own object) is deleted between the first and the second.
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    secret = b"the deleted file\n" + bytes(range(256)) * 8192  # 2 MiB: above the pack limit
    (src / "docs" / "deleted.bin").write_bytes(secret)
    for i in range(3):
        (src / "docs" / "n.txt").write_text(f"night {i}\n" * 50)
        if i == 1:
            (src / "docs" / "deleted.bin").unlink()
        r = run_cli([*lb, "backup", str(src)], host, check=True)
        assert "URI:" not in r.out + r.err  # (the id is printed, not the cap)
    listed = json_lines(run_cli([*lb, "--json", "list"], host, check=True).out)
    assert [b["sealed"] for b in listed] == [True, True, False]
    assert listed[0]["cap"] is None and listed[1]["cap"] is None and listed[2]["cap"].startswith("URI:")
    first = listed[0]["id"]
    r = run_cli([*lb, "restore", first, "--target", str(tmp_path / "no")], host)
    assert r.code != 0 and "sealed" in r.err and not (tmp_path / "no").exists()
    r = run_cli([*lb, "ls", first], host)
    assert r.code != 0 and "sealed" in r.err
    restored = tmp_path / "latest"
    run_cli([*lb, "restore", "latest", "--target", str(restored)], host, check=True)
    assert (restored / "docs" / "n.txt").read_text() == "night 2\n" * 50
    # The host tags its backups (sealed changes it cannot read back: it keeps its own tags), and copies none.
    run_cli([*lb, "tag", first, listed[2]["id"], "--add", "keep"], host, check=True)
    assert [b["tags"] for b in json_lines(run_cli([*lb, "--json", "list"], host, check=True).out)] == [
        ["keep"], [], ["keep"]]
    r = run_cli([*lb, "copy", "--to-url", "http://127.0.0.1:9/"], host)
    assert r.code == 2 and "sealed" in r.err

    # Everything the host holds, followed through the grid: no snapshot root of an older backup, no bytes
    # of the deleted file.
    old_roots = {b["cap"] for b in json_lines(run_cli(
        [*lb, "--repo", str(rec), "--json", "list"], newbox, check=True).out)[:2]}
    assert all(c and c.startswith("URI:") for c in old_roots)
    held = caps_on_disk(host)
    assert hostkey.writecap in held
    seen, contents = reach(grid.url, held)
    assert not seen & old_roots
    assert not any(secret[:4096] in data for data in contents)

    # A new machine with the recovery key alone lists all three and restores the first, deleted file and all.
    mine = json_lines(run_cli([*lb, "--repo", str(rec), "--json", "list"], newbox, check=True).out)
    assert [b["id"] for b in mine] == [b["id"] for b in listed] and not any(b["sealed"] for b in mine)
    assert [b["tags"] for b in mine] == [["keep"], [], ["keep"]]
    back = tmp_path / "first"
    run_cli([*lb, "--repo", str(rec), "restore", first, "--target", str(back)], newbox, check=True)
    assert (back / "docs" / "deleted.bin").read_bytes() == secret
    assert (back / "docs" / "n.txt").read_text() == "night 0\n" * 50
    back3 = tmp_path / "third"
    run_cli([*lb, "--repo", str(rec), "restore", "latest", "--target", str(back3)], newbox, check=True)
    assert differences(src, back3) == []


def test_two_sources_and_an_inbox_out_of_reach_leave_no_old_cap_behind_and_lose_no_record(grid, tmp_path: Path):
    """Two sources backed up in turn: a file deleted from one is out of reach once its backups that held it
    leave the window, whatever the other source's generations.  Backups made while the custodian's inbox
    cannot be written keep their caps (the host could not hand them over), and go to the custodian, and
    leave the window, with the next backup that can."""
    lb = ["--url", grid.url]
    host, usb = tmp_path / "host", tmp_path / "usb"
    usb.mkdir()
    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    ckey = usb / "custodian.key"
    run_cli([*lb, "init", "--sealed", "--recovery-key", str(usb / "recovery.key"), "--custodian-key", str(ckey),
             "--introducer", furl], host, check=True)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    secret = b"only ever in source a\n" + bytes(range(256)) * 6000
    (a / "big.bin").write_bytes(secret)
    (b / "other.txt").write_text("source b\n" * 100)
    for i, src in enumerate([a, b, a, b, a]):
        (src / "n.txt").write_text(f"round {i}\n" * 30)
        if i == 2:
            (a / "big.bin").unlink()
        run_cli([*lb, "backup", str(src)], host, check=True)
    listed = json_lines(run_cli([*lb, "--json", "list"], host, check=True).out)
    assert [(Path(x["source"]).name, x["sealed"]) for x in listed] == [
        ("a", True), ("b", True), ("a", True), ("b", False), ("a", False)]
    seen, contents = reach(grid.url, caps_on_disk(host))
    assert not any(secret[:4096] in data for data in contents)

    # The inbox's cap is out of reach (its file damaged): two backups keep their caps, and say why.
    inbox_file = next((host / "state").rglob("inbox.*.json"))
    good = inbox_file.read_bytes()
    inbox_file.write_text("{")
    for i in range(2):
        (a / "n.txt").write_text(f"unsent {i}\n" * 30)
        r = run_cli([*lb, "backup", str(a)], host, check=True)
        assert "custodian" in r.err
    listed = json_lines(run_cli([*lb, "--json", "list", "--source", str(a)], host, check=True).out)
    assert [x["sealed"] for x in listed] == [True, True, True, False, False]  # (the fourth was not sent)
    inbox_file.write_bytes(good)
    (a / "n.txt").write_text("sent again\n" * 30)
    run_cli([*lb, "backup", str(a)], host, check=True)
    listed = json_lines(run_cli([*lb, "--json", "list", "--source", str(a)], host, check=True).out)
    assert [x["sealed"] for x in listed] == [True, True, True, True, True, False]
    # The custodian has every backup of both sources.
    r = run_cli([*lb, "custodian", "check", "--json", "--key", str(ckey)], tmp_path / "custodian")
    assert len(json_lines(r.out)[-1]["kept"]) == 8, r.out  # (six of a, two of b)


def test_init_makes_a_sealed_repository_beside_a_plain_one_at_the_key_file_named(grid, tmp_path: Path):
    """The way docs/sealed.md gives to start sealing on a machine that has a plain repository: ``init --sealed``
    with ``repository.key_file`` naming a new file, on the embedded grid (this machine's grid directory)."""
    home, usb = tmp_path / "home", tmp_path / "usb"
    usb.mkdir()
    conf = tmp_path / "c.yaml"
    conf.write_text(f"grid:\n  dir: {grid.dir}\n")
    furl = LocalGrid(GridSpec(str(grid.dir))).furl()
    run_cli(["-c", str(conf), "init"], home, check=True)
    r = run_cli(["-c", str(conf), "init", "--sealed"], home)
    assert r.code == 2 and "repository.key_file" in r.err
    hostkey = tmp_path / "sealed-host.key"
    sealed = ["-c", str(conf), "-o", f"repository.key_file={hostkey}"]
    run_cli([*sealed, "init", "--sealed", "--recovery-key", str(usb / "rec.key"), "--custodian-key",
             str(usb / "cust.key"), "--introducer", furl], home, check=True)
    assert hostkey.stat().st_mode & 0o777 == 0o600
    assert RepoKey.decode(hostkey.read_text()).sealed and not RepoKey.decode(hostkey.read_text()).opens
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("sealed\n")
    run_cli([*sealed, "backup", str(src)], home, check=True)
    assert [b["sealed"] for b in json_lines(run_cli([*sealed, "--json", "list"], home, check=True).out)] == [False]
    assert json_lines(run_cli(["-c", str(conf), "--json", "list"], home, check=True).out) == []  # (the plain one)
