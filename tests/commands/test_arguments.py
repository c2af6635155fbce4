"""Arguments as people type them: options and paths in any order, no abbreviations, a did-you-mean,
one error prefix with a usage line, -v and -q, and global options documented once."""

from __future__ import annotations

import re

import pytest

from lafs_backup.arguments import parse, verb_parser
from lafs_backup.errors import ExitCode, UsageError

from test_cli import call


def test_a_path_after_an_option_is_a_path():
    ns = parse(["restore", "latest", "--source", "S", "--target", "T", "sub", "other"])
    assert (ns.command, ns.snapshot, ns.target, ns.paths) == ("restore", "latest", "T", ["sub", "other"])


def test_global_options_go_before_or_after_the_command():
    a = parse(["--url", "http://h:1/", "-c", "x.yaml", "ls", "latest", "dir"])
    b = parse(["ls", "latest", "--url", "http://h:1/", "dir", "-c", "x.yaml"])
    assert (a.url, a.config, a.path) == (b.url, b.config, b.path) == ("http://h:1/", ["x.yaml"], "dir")


def test_double_dash_ends_the_options():
    ns = parse(["restore", "latest", "--target", "T", "--", "-odd-name"])
    assert ns.paths == ["-odd-name"]


@pytest.mark.parametrize("argv, said", [
    (["backup", "--dry"], "unknown option --dry; did you mean --dry-run?"),
    (["restore", "latest", "--taget", "/tmp/x"], "unknown option --taget; did you mean --target?"),
    (["list", "--hots", "a"], "unknown option --hots; did you mean --host?"),
])
def test_no_abbreviations_and_a_typo_is_named(argv, said):
    with pytest.raises(UsageError) as e:
        parse(argv)
    assert said in e.value.message and "usage: lafs-backup" in e.value.message


def test_an_unknown_command_suggests_the_nearest():
    code, _, err = call(["bakup", "config"])
    assert code == ExitCode.USAGE
    assert "'bakup' is not a command; did you mean 'backup'?" in err
    assert err.count("lafs-backup: error:") == 1 and "lafs-backup: lafs-backup" not in err


def test_a_rivals_name_for_a_command_suggests_ours():
    for typed, ours in (("snapshots", "list"), ("forget", "cleanup"), ("cat", "dump"), ("info", "stats")):
        code, _, err = call([typed])
        assert code == ExitCode.USAGE
        assert f"'{typed}' is not a command; did you mean '{ours}'?" in err, err


def test_a_missing_required_option_is_one_prefix_and_a_usage_line():
    code, _, err = call(["restore", "latest"])
    assert code == ExitCode.USAGE
    assert err.count("lafs-backup: error:") == 1 and "--target" in err and "usage: lafs-backup restore" in err


def test_verbose_and_quiet():
    assert parse(["-v", "list"]).verbose == 1 and parse(["list", "-vv"]).verbose == 2
    assert parse(["list", "-q"]).quiet is True
    code, out, err = call(["-q", "dump-config"])
    assert code == 0 and out and not err


def test_a_commands_help_shows_its_own_options_first_and_the_global_ones_once():
    text = verb_parser("restore").format_help()
    own, glob = text.index("--target"), text.index("global options")
    assert own < glob and text.count("--wait-lock SECONDS") == 1 and "--wait-lock" not in text.split("\n\n")[0]
    assert "exit codes:" in text and "configuration:" in text


#: The commands that take backups by name, and how (a positional SNAPSHOT, or find's --snapshot).
NAMING = {"restore", "ls", "dump", "diff", "verify", "copy", "check", "cleanup", "find", "stats", "tag", "rewrite"}


def test_every_snapshot_argument_says_the_same_in_help(tmp_path):
    """One wording in every command's --help for what names a backup: its id, a unique start of it,
    'latest', a generation number or a cap (docs/commands.md, 'Naming a snapshot')."""
    from lafs_backup.commands import COMMANDS
    from lafs_backup.commands.options import SNAPSHOT_HELP

    from conftest import run_cli

    for verb in COMMANDS:
        r = run_cli([verb, "--help"], tmp_path, timeout=60)
        assert r.code == 0, r.err
        text = " ".join(r.out.split())  # (argparse wraps lines)
        names = verb in NAMING
        assert (SNAPSHOT_HELP in text) == names, verb
        assert ("SNAPSHOT" in text) == names, verb
        assert not re.search(r"\bBACKUP\b| S\b", text), verb  # (the metavars the help used to have)
        for old in ("a cap, a generation number", "caps or generation numbers", "a snapshot cap, a generation"):
            assert old not in text, (verb, old)
    # Each such argument, positional or option, has it whole.
    for verb in NAMING:
        p = verb_parser(verb)
        named = [a for a in p._actions if a.metavar in ("SNAPSHOT", "OTHER")]
        assert named and all(a.help and a.help.endswith(": " + SNAPSHOT_HELP) for a in named), verb
    assert [a.metavar for a in verb_parser("diff")._actions if a.metavar in ("SNAPSHOT", "OTHER")] == \
        ["SNAPSHOT", "OTHER"]
