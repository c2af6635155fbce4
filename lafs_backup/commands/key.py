"""``key``: print the repository's recovery key, one line on stdout (and nowhere else); a sealed
repository's host has none to print (``--host`` prints the host's own key)."""

from __future__ import annotations

import argparse

from ..errors import ExitCode, UsageError
from ..resources import Opener


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup key > /media/usb/lafs-backup.key'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``key``."""
    p.add_argument("--host", action="store_true",
                   help="a sealed repository's host key: another host given it (as --repo or "
                        "repository.key_file) adds backups, and reads none it did not make")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    key = await o.repo_key()
    if key is None:
        raise UsageError("there is no repository yet: 'lafs-backup init' or a first backup makes one")
    if ns.host:
        if not key.sealed:
            raise UsageError("this repository is not sealed: its one key is the recovery key ('lafs-backup key')")
        key = key.host_key()
    elif key.sealed and not key.opens:
        raise UsageError("this repository's records are sealed: its recovery key was written once, at 'init "
                         "--sealed', and this machine keeps only the host's key, which opens no record. Find the "
                         "copy you moved off this machine ('lafs-backup key --host' prints the host's key)")
    o.rt.reporter.output(key.encode())
    return ExitCode.OK
