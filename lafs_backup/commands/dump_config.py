"""``dump-config``: the merged configuration, as YAML."""

from __future__ import annotations

import argparse

from .. import config as cfg
from ..errors import ExitCode
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    tree = dict(ctx.config.tree)
    options = tree.get("source", {}).get("storage_options")
    if options:  # credentials: shown by name only
        tree["source"] = {**tree["source"], "storage_options": {k: "<hidden>" for k in options}}
    ctx.reporter.output(cfg.dump(tree), end="")
    return ExitCode.OK
