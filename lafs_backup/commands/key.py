"""``key``: print the repository's recovery key, one line on stdout (and nowhere else)."""

from __future__ import annotations

import argparse

from ..errors import ExitCode, UsageError
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    key = await ctx.repo_key()
    if key is None:
        raise UsageError("there is no repository yet: 'lafs-backup init' or a first backup makes one")
    ctx.reporter.output(key.encode())
    return ExitCode.OK
