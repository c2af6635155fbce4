"""The embedded grid on a new machine: it says where its shares live and how to stop it, a backup
leaves it running (and says so once), and a read command stops a grid it had to start."""

from __future__ import annotations

from conftest import run_cli


def test_the_embedded_grid_is_explained_kept_for_backups_and_stopped_after_reads(tmp_path):
    home = tmp_path / "home"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello " * 50)
    try:
        r = run_cli(["backup", str(src)], home, check=True)
        assert "made the embedded local grid in" in r.err and "on this machine's own disk" in r.err
        assert "'lafs-backup grid down' stops it" in r.err
        assert "keeps running, for the next backup" in r.err
        assert "node gateway: running" in run_cli(["grid", "status"], home).out
        again = run_cli(["backup", str(src)], home, check=True)
        assert "keeps running" not in again.err and "started" not in again.err  # said once; still up
        run_cli(["grid", "down"], home, check=True)
        listed = run_cli(["list"], home, check=True)
        assert "started the embedded local grid" in listed.err
        assert "stopped the embedded grid this command started" in listed.err
        assert listed.out.count(str(src)) == 2
        assert "node gateway: stopped" in run_cli(["grid", "status"], home).out
    finally:
        run_cli(["grid", "down"], home)
