"""``dump-config``: the merged configuration, as YAML."""

from __future__ import annotations

import argparse

from .. import config as cfg
from ..errors import ExitCode
from ..resources import Opener


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup -c ~/.config/lafs-backup/config.yaml dump-config'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dump-config``."""


async def run(o: Opener, ns: argparse.Namespace) -> int:
    o.rt.reporter.output(cfg.dump(cfg.shown(o.config.tree)), end="")
    return ExitCode.OK
