"""``init``: make a repository on the grid and keep its recovery key (mode 0600)."""

from __future__ import annotations

import argparse

from ..errors import ExitCode
from ..resources import Opener


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup init'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``init``."""


async def run(o: Opener, ns: argparse.Namespace) -> int:
    await o.create_repository()
    return ExitCode.OK
