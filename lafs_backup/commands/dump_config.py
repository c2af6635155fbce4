"""``dump-config``: the merged configuration, as YAML."""

from __future__ import annotations

import argparse

from .. import config as cfg
from ..errors import ExitCode
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    ctx.reporter.output(cfg.dump(cfg.shown(ctx.config.tree)), end="")
    return ExitCode.OK
