"""Every verb declares its arguments and an example next to its module; the example ``--help`` shows
parses as that verb, and each module has its ``run``."""

from __future__ import annotations

import asyncio
import importlib
import os
import shlex

import pytest

from lafs_backup.arguments import parse
from lafs_backup.commands import COMMANDS


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_each_verbs_example_parses_as_that_verb(verb):
    module = importlib.import_module(f"lafs_backup.commands.{COMMANDS[verb][0]}")
    words = [os.path.expanduser(w) for w in shlex.split(module.EXAMPLE.split(">")[0])]
    assert words[0] == "lafs-backup"
    ns = parse(words[1:])
    assert ns.command == verb
    assert asyncio.iscoroutinefunction(module.run)
    assert COMMANDS[verb][1] and not COMMANDS[verb][1].endswith(".")
