"""``grid``: create, start, inspect and stop the embedded local grid."""

from __future__ import annotations

import argparse

from ..errors import ExitCode, GridError, UsageError
from .context import Context, data_dir


async def _join(ctx: Context, ns: argparse.Namespace) -> int:
    """Run a gateway (the default) or a storage node of a grid made on another machine."""
    import hashlib
    import os

    from ..grid.local import GridSpec, LocalGrid

    furl = ns.furl
    if furl == "-":  # from stdin, so that the FURL (a secret) never sits on a command line
        import sys

        furl = sys.stdin.readline().strip()
    elif furl and os.path.isfile(furl):  # or from a file that holds it
        with open(furl, encoding="utf-8") as f:
            furl = f.read().strip()
    furl = furl or os.environ.get("LAFS_BACKUP_FURL") or ctx.config.repository.introducer_furl
    if not furl or not furl.startswith("pb://"):
        raise UsageError("grid join needs the grid's introducer FURL (pb://...): 'lafs-backup grid furl' on the "
                         "machine that made it prints it")
    kind = "storage" if ns.storage else "gateway"
    d = ns.dir or os.path.join(data_dir(), "joined", f"{kind}-{hashlib.sha256(furl.encode()).hexdigest()[:12]}")
    g = ctx.config.grid
    node = LocalGrid(GridSpec(d, g.nodes, g.needed, g.happy, listen=ns.listen, join=furl, storage=ns.storage))
    url = await ctx.ensure_grid(node)
    ctx.reporter.say(f"lafs-backup: {kind} node of that grid running in {d}")
    if url:
        ctx.reporter.output(url)
    return ExitCode.OK


async def run(ctx: Context, ns: argparse.Namespace) -> int:
    rep = ctx.reporter
    if ns.action == "join":
        return await _join(ctx, ns)
    if ns.furl is not None:
        raise UsageError("only 'grid join' takes a FURL")
    grid = ctx.grid(ns.dir, listen=ns.listen)
    if ns.action == "up":
        rep.output(await ctx.ensure_grid(grid))
        return ExitCode.OK
    if ns.action == "furl":
        furl = grid.furl()
        if furl is None:
            raise GridError(problem=f"no local grid in {grid.dir} (run 'lafs-backup grid up')")
        rep.output(furl)
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
