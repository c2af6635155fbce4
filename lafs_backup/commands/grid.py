"""``grid``: create, start, inspect and stop the embedded local grid."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ExitCode, GridError, UsageError
from ..resources import Opener
from ..system.places import data_dir


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup grid status'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``grid``."""
    p.add_argument("action", choices=["up", "down", "status", "furl", "join"],
                    help="up/down/status: this machine's grid; furl: print its introducer's FURL (a secret); "
                         "join FURL: run a node of a grid made elsewhere")
    p.add_argument("furl", nargs="?", metavar="FURL|FILE|-", help="for join: the grid's introducer FURL, a file "
                    "holding it, or - for stdin (default: LAFS_BACKUP_FURL, then repository.introducer_furl)")
    p.add_argument("--storage", action="store_true", help="for join: run a storage node (default: a gateway)")
    p.add_argument("--listen", metavar="HOST", help="for up (when the grid is made) and join --storage: listen "
                                                    "on every interface, reachable as HOST by other machines")
    p.add_argument("--dir", help="grid directory (default: grid.dir, or the user data directory)")
    p.add_argument("--nodes", type=int, help="storage nodes (grid.nodes; used when creating)")
    p.add_argument("--needed", type=int, help="shares needed, k (grid.needed)")
    p.add_argument("--happy", type=int, help="servers of happiness (grid.happy)")


async def _join(o: Opener, ns: argparse.Namespace) -> int:
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
    furl = furl or os.environ.get("LAFS_BACKUP_FURL") or o.config.repository.introducer_furl
    if not furl or not furl.startswith("pb://"):
        raise UsageError("grid join needs the grid's introducer FURL (pb://...): 'lafs-backup grid furl' on the "
                         "machine that made it prints it")
    kind = "storage" if ns.storage else "gateway"
    d = ns.dir or os.path.join(data_dir(), "joined", f"{kind}-{hashlib.sha256(furl.encode()).hexdigest()[:12]}")
    g = o.config.grid
    node = LocalGrid(GridSpec(d, g.nodes, g.needed, g.happy, listen=ns.listen, join=furl, storage=ns.storage))
    url = await o.ensure_grid(node)
    o.rt.reporter.say(f"lafs-backup: {kind} node of that grid running in {d}")
    if url:
        o.rt.reporter.output(url)
    return ExitCode.OK


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    if ns.action == "join":
        return await _join(o, ns)
    if ns.furl is not None:
        raise UsageError("only 'grid join' takes a FURL")
    grid = o.grid(ns.dir, listen=ns.listen)
    if ns.action == "up":
        made = grid.load()
        if made is not None and ns.listen and made.get("listen") != ns.listen:
            # (its nodes' addresses are written into their configurations, and into the FURL users hold)
            was = f"listening as {made['listen']}" if made.get("listen") else "on this machine's loopback only"
            rep.say(f"lafs-backup: the grid in {grid.dir} was made {was}, and stays so: --listen applies when a "
                    f"grid is made (a grid to be reached as {ns.listen} is made in another --dir)")
        rep.output(await o.ensure_grid(grid))
        return ExitCode.OK
    if ns.action == "furl":
        furl = grid.furl()
        if furl is None:
            raise GridError(problem=f"no local grid in {grid.dir} (run 'lafs-backup grid up')")
        rep.output(furl)
        return ExitCode.OK
    if ns.action == "down":
        stopped = await o.rt.in_thread(grid.stop)
        rep.say(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))
        return ExitCode.OK
    state = grid.load()
    if state is None:
        raise GridError(problem=f"no local grid in {grid.dir} (run 'lafs-backup grid up')")
    doc: dict[str, Any] = {"type": "grid", "url": state["url"], "directory": str(grid.dir),
                           "needed": state["needed"], "nodes": state["nodes"], "happy": state["happy"],
                           "running": {name: grid.alive(state, name) for name in grid.node_names(state)}}
    code = ExitCode.GRID
    if grid.alive(state, "gateway"):
        gw = o.make_gateway(state["url"], jobs=1, attempts=1)
        servers = sorted(await gw.connected_servers())
        doc["connected_servers"] = servers
        code = ExitCode.OK if len(servers) >= state["happy"] else ExitCode.GRID
    if rep.json_mode:  # one document
        rep.record(doc)
        return code
    rep.output(f"url: {doc['url']}")
    rep.output(f"directory: {doc['directory']}")
    rep.output(f"encoding: {state['needed']}-of-{state['nodes']}, happy={state['happy']}")
    for name, alive in doc["running"].items():
        rep.output(f"node {name}: {'running' if alive else 'stopped'}")
    if "connected_servers" in doc:
        servers = doc["connected_servers"]
        rep.output(f"connected servers: {len(servers)} ({', '.join(servers)})")
    return code
