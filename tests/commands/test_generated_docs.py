"""The man page and the shell completions are generated from the parser and committed: a test fails
when they are stale, and the completions know every command and its options."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

from lafs_backup.commands import COMMANDS


def test_the_committed_man_page_and_completions_are_current():
    p = subprocess.run([sys.executable, str(ROOT / "bin" / "generate-docs"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"run bin/generate-docs and commit the result:\n{p.stdout}{p.stderr}"


def test_they_name_every_command_and_its_options():
    man = (ROOT / "docs" / "lafs-backup.1").read_text()
    bash = (ROOT / "config" / "completions" / "lafs-backup.bash").read_text()
    fish = (ROOT / "config" / "completions" / "lafs-backup.fish").read_text()
    for verb in COMMANDS:
        assert verb.replace("-", "\\-") in man and verb in bash and f"-a {verb} " in fish
    assert "\\-\\-target" in man and "--target" in bash and "-l target" in fish


def test_the_bash_completion_is_valid_bash_and_completes_a_command():
    script = ROOT / "config" / "completions" / "lafs-backup.bash"
    p = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=(lafs-backup rest); COMP_CWORD=1; "
                        "_shtab_lafs_backup 2>/dev/null; printf '%s\\n' \"${COMPREPLY[@]}\""],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "restore" in p.stdout.split()
