"""A bug, wherever it is raised, exits 70 with one line; the redacted traceback goes to a 0600
file (or to the terminal with --debug).  Only Ctrl-C exits 130."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

CAP = "URI:CHK:" + "a" * 26 + ":" + "b" * 52 + ":2:3:1000"


def crash(home: Path, prologue: str, argv: list[str]) -> subprocess.CompletedProcess:
    code = f"import sys\n{prologue}\nfrom lafs_backup.cli import main\nsys.exit(main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", code], env=cli_env(home), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def crash_files(home: Path) -> list[Path]:
    where = home / "state" / "lafs-backup" / "crashes"
    return sorted(where.iterdir()) if where.exists() else []


def test_an_import_error_before_the_command_exits_70_with_one_line(tmp_path):
    # What a wheel without its subpackages did: the command's modules cannot be imported.
    p = crash(tmp_path, "sys.modules['lafs_backup.commands.list'] = None", ["list"])
    assert p.returncode == 70, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "internal error" in lines[0] and "ModuleNotFoundError" in lines[0], lines[0]
    files = crash_files(tmp_path)
    assert len(files) == 1 and str(files[0]) in lines[0]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    text = files[0].read_text()
    assert "Traceback" in text and "lafs_backup.commands.list" in text


def test_a_bug_inside_a_command_redacts_caps_in_the_line_and_the_file(tmp_path):
    prologue = ("import lafs_backup.commands.dump_config as m\n"
                "async def boom(ctx, ns):\n"
                f"    raise RuntimeError('cannot parse {CAP}')\n"
                "m.run = boom")
    p = crash(tmp_path, prologue, ["dump-config"])
    assert p.returncode == 70, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "RuntimeError: cannot parse <CHK cap>" in p.stderr
    assert CAP not in p.stderr and "URI:CHK:" not in p.stderr
    (f,) = crash_files(tmp_path)
    text = f.read_text()
    assert "boom" in text and "<CHK cap>" in text and "URI:CHK:" not in text


def test_debug_prints_the_redacted_traceback_instead(tmp_path):
    prologue = ("import lafs_backup.commands.dump_config as m\n"
                "async def boom(ctx, ns):\n"
                f"    raise ValueError('{CAP}')\n"
                "m.run = boom")
    p = crash(tmp_path, prologue, ["--debug", "dump-config"])
    assert p.returncode == 70
    assert "Traceback" in p.stderr and "boom" in p.stderr and "URI:CHK:" not in p.stderr
    assert crash_files(tmp_path) == []


def test_an_unwritable_state_directory_still_shows_the_traceback(tmp_path):
    (tmp_path / "state").write_text("a file where the directory should be")
    p = crash(tmp_path, "sys.modules['lafs_backup.commands.list'] = None", ["list"])
    assert p.returncode == 70
    assert "Traceback" in p.stderr and "ModuleNotFoundError" in p.stderr


def test_ctrl_c_before_the_command_exits_130(tmp_path):
    prologue = ("import lafs_backup.cli as c\n"
                "def interrupted(args, say):\n"
                "    raise KeyboardInterrupt\n"
                "c._main = interrupted")
    p = crash(tmp_path, prologue, ["list"])
    assert p.returncode == 130 and "interrupted" in p.stderr
    assert crash_files(tmp_path) == []
