"""``init``: make a repository on the grid and keep its recovery key (mode 0600)."""

from __future__ import annotations

import argparse

from ..errors import ExitCode
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    await ctx.create_repository()
    return ExitCode.OK
