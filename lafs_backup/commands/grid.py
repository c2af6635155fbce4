"""``grid``: create, start, inspect and stop the embedded local grid."""

from __future__ import annotations

import argparse

from ..errors import ExitCode, GridError
from .context import Context


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    grid = ctx.grid(ns.dir)
    if ns.action == "up":
        rep.output(await ctx.ensure_grid(grid))
        return ExitCode.OK
    if ns.action == "down":
        stopped = await ctx.in_thread(grid.stop)
        rep.say(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))
        return ExitCode.OK
    state = grid.load()
    if state is None:
        raise GridError(problem=f"no local grid in {grid.dir} (run 'lafs-backup grid up')")
    rep.output(f"url: {state['url']}")
    rep.output(f"directory: {grid.dir}")
    rep.output(f"encoding: {state['needed']}-of-{state['nodes']}, happy={state['happy']}")
    for name in grid.node_names(state):
        rep.output(f"node {name}: {'running' if grid.alive(state, name) else 'stopped'}")
    if grid.alive(state, "gateway"):
        gw = ctx.make_gateway(state["url"], jobs=1, attempts=1)
        servers = await gw.connected_servers()
        rep.output(f"connected servers: {len(servers)} ({', '.join(sorted(servers))})")
        return ExitCode.OK if len(servers) >= state["happy"] else ExitCode.GRID
    return ExitCode.GRID
