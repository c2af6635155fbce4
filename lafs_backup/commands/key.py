"""``key``: print the repository's recovery key, one line on stdout (and nowhere else)."""

from __future__ import annotations

import argparse

from ..errors import ExitCode, UsageError
from ..resources import Opener


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup key > /media/usb/lafs-backup.key'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``key``."""


async def run(o: Opener, ns: argparse.Namespace) -> int:
    key = await o.repo_key()
    if key is None:
        raise UsageError("there is no repository yet: 'lafs-backup init' or a first backup makes one")
    o.rt.reporter.output(key.encode())
    return ExitCode.OK
