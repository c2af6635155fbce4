"""``dump-config``: the merged configuration, as YAML (or one JSON document)."""

from __future__ import annotations

import argparse
import json

from .. import config as cfg
from ..errors import ExitCode
from ..resources import Opener


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup -c ~/.config/lafs-backup/config.yaml dump-config'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dump-config``."""


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    if rep.json_mode:  # one document
        rep.output(json.dumps(cfg.shown(o.config.tree), sort_keys=True, default=str))
    else:
        rep.output(cfg.dump(cfg.shown(o.config.tree)), end="")
    return ExitCode.OK
