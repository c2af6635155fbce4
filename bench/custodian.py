"""The custodian's benchmark (issue 29, "Done means" item 6): one full pass over 100 kept backups.

usage: python bench/custodian.py [--backups N] [--repeats R] [--work DIR] [--no-results]

On a private embedded grid (3 storage nodes, 2-of-3, happy 3) the host makes a repository, a custodian
inbox (``custodian init``), and N backups of the standard tree (bench/mktree.py), with the "1% change"
of bench/run.py between two.  Each backup publishes its lease manifest into the inbox.  Then, in one
process, a custodian reads the inbox (N manifests) and joins the grid, and through one set of Foolscap
connections, R times, interleaved:

1. the baseline: one ``add_lease`` per distinct object and server, 32 in flight, no answer asked;
2. a full pass (``custodian pass``): from a new custodian object (its manifests resolved anew), every
   distinct object of every kept backup, their manifests and its directories, each once;
3. a census pass (``custodian pass --census``): the same, asking every server which shares it holds.

It reports the distinct objects, the servers, each one's requests and best time, and the ratios the
issue bounds: requests at most 1.5 x (distinct objects x servers), time at most 1.5 x the baseline's.
Run it under the grid lock: ``flock /tmp/lafs-grid.lock .venv/bin/python bench/custodian.py``; it
writes its section of bench/RESULTS.md (``bench/run.py --only leases`` does the same).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
TITLE = "Custodian: one full pass over"


def build(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
          backups: int) -> tuple[dict, Path, Path]:
    """The host's side: a fresh grid, a repository, the custodian's inbox and key, and ``backups``
    backups of the standard tree with the 1% change between two.  Returns (what it measured, the grid's
    directory, the home)."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from mktree import build as make_tree
    from run import change_one_percent

    from lafs_backup.grid.local import GridSpec, LocalGrid

    tree = work / "tree-custodian"
    shutil.rmtree(tree, ignore_errors=True)
    make_tree(tree)
    home, gdir, url, env, lb = grid("custodian")
    keyfile = home / "custodian.key"
    timed(lb + ["init"], env=env)
    timed(lb + ["custodian", "init", "--key", str(keyfile), "--introducer", LocalGrid(GridSpec(str(gdir))).furl()],
          env=env)
    times = []
    for i in range(backups):
        if i:
            change_one_percent(tree)
        times.append(timed(lb + ["backup", str(tree)], env=env)[0])
        if i % 10 == 9:
            print(f"custodian bench: {i + 1} backups, the last {times[-1]:.2f} s", file=sys.stderr, flush=True)
    shutil.rmtree(tree, ignore_errors=True)
    return {"backups": backups, "url": url, "keyfile": str(keyfile), "first_backup_seconds": round(times[0], 2),
            "backup_seconds_after": round(sum(times[1:]) / max(1, len(times) - 1), 2),
            "build_seconds": round(sum(times), 1)}, gdir, home


async def measure(reactor, url: str, keyfile: str, work: Path, repeats: int) -> dict:
    """The custodian's side, in this process: see the module's docstring."""
    sys.path.insert(0, str(HERE))
    from leases import one_request_each

    from lafs_backup import config as cfg
    from lafs_backup.custodian.join import GridClient
    from lafs_backup.custodian.keyfile import read_key
    from lafs_backup.custodian.leases import Renewer
    from lafs_backup.custodian.policy import Rules, kept
    from lafs_backup.custodian.service import Custodian
    from lafs_backup.custodian.state import StateDir
    from lafs_backup.custodian.targets import target_of
    from lafs_backup.grid.gateway import Gateway, make_http_client

    key = read_key(keyfile)
    gw = Gateway(url, make_http_client(reactor, 4), reactor, cfg.load([], []).operation.retry, 2)
    store = StateDir(str(work / "custodian-state"))
    rules = Rules()

    def custodian() -> Custodian:
        return Custodian(gw, key, store, rules, reactor.seconds)

    seen = await custodian().observe()
    client = GridClient(reactor, str(work / "custodian-grid"), introducer=key.furl)
    servers = await client.connected(3, 60)
    secret = key.lease_secret(keyfile)
    sent: dict = {}

    async def renew(targets, census=True):
        renewer = Renewer(reactor, client.servers, secret, limit=32)
        done = await renewer.renew(targets, census=census)
        sent.update(requests=renewer.requests, calls=dict(renewer.calls))
        return done

    out: dict = {"manifests": len(seen.new), "servers": len(servers), "limit": 32, "runs": []}
    try:
        for _ in range(repeats):
            run: dict = {}
            c = custodian()
            t = time.monotonic()
            keep = kept(c.state, reactor.seconds(), rules)
            found = c.objects(keep)
            caps = found.objects | found.manifests | await c.directories()
            targets = list({x.storage_index: x for x in map(target_of, caps)}.values())
            run["resolve_seconds"] = time.monotonic() - t
            out.update(kept=len(keep), distinct=len(targets), references=sum(len(v) for v in found.each.values()),
                       manifest_objects=len(found.manifests))
            t = time.monotonic()
            run["baseline"] = {"requests": await one_request_each(reactor, servers, secret, targets, 32),
                               "seconds": time.monotonic() - t}
            for name, census in (("pass", False), ("census", True)):
                c = custodian()  # (nothing resolved yet: the pass resolves every chain itself)
                t = time.monotonic()
                p = await c.renew(renew, census=census)
                run[name] = {"seconds": time.monotonic() - t, "objects": p.objects, "requests": sent["requests"],
                             "calls": sent["calls"], "renewed": p.renewed, "short": len(p.short),
                             "lost": len(p.lost), "unanswered": p.unanswered}
            out["runs"].append(run)
            print("custodian bench:", json.dumps(run), file=sys.stderr, flush=True)
    finally:
        await client.stop()
    for name in ("baseline", "pass", "census"):
        best = min(r[name]["seconds"] for r in out["runs"])
        out[name] = dict(out["runs"][0][name], seconds=round(best, 3),
                         all_seconds=[round(r[name]["seconds"], 3) for r in out["runs"]])
    out["resolve_seconds"] = round(min(r["resolve_seconds"] for r in out["runs"]), 3)
    return out


def section(built: dict, m: dict) -> str:
    """The section of RESULTS.md."""
    n, s = m["distinct"], m["servers"]
    bound = n * s
    base = m["baseline"]["seconds"]
    rows = []
    for label, key in (("full pass (`custodian pass`: one `add_lease` per object and server)", "pass"),
                       ("census pass (`custodian pass --census`: `allocate_buckets`, or `add_lease` with "
                        "`slot_readv` for a mutable object)", "census"),
                       ("baseline: one `add_lease` per object and server, nothing else", "baseline")):
        r = m[key]
        req, sec = r["requests"], r["seconds"]
        rows.append(f"| {label} | {req} ({req / bound:.2f}) | {sec:.2f} s ({sec / base:.2f}) | "
                    f"{', '.join(f'{x:.2f}' for x in r['all_seconds'])} |")
    p = m["pass"]
    met_req = p["requests"] <= 1.5 * bound
    met_time = p["seconds"] <= 1.5 * base
    return "\n".join([
        f"## {TITLE} {built['backups']} kept backups ({datetime.date.today().isoformat()})", "",
        "`python bench/custodian.py` (or `python bench/run.py --only leases`), issue 29's item 6.  On a private "
        f"grid (3 storage nodes, 2-of-3, happy 3, all on this 2-core machine) the host made {built['backups']} "
        "backups of the standard tree (bench/mktree.py), the \"1% change\" of bench/run.py between two, each "
        "publishing its lease manifest into the custodian's inbox.  A custodian then read the inbox "
        f"({m['manifests']} manifests), joined the grid, and through one set of Foolscap connections (32 "
        f"requests in flight) renewed everything {len(m['pass']['all_seconds'])} times, interleaved with the "
        "baseline; best time, each run's in the last column.  A pass's time includes resolving every "
        f"manifest chain anew ({m['resolve_seconds']:.2f} s of it) and listing the custodian's directories.", "",
        f"Distinct objects: **{n}** (the {m['kept']} backups reference {m['references']} objects in all; "
        f"{m['manifest_objects']} of the distinct ones are manifests), servers: **{s}**, so distinct objects x "
        f"servers = {bound}.", "",
        "| renewal | requests (/ objects x servers) | time (/ baseline) | each run |",
        "|---|---|---|---|", *rows, "",
        f"Bounds (issue 29): requests at most 1.5 x {bound} = {1.5 * bound:.0f}: "
        f"**{'met' if met_req else 'NOT met'}** ({p['requests'] / bound:.2f}); time at most 1.5 x the "
        f"baseline's: **{'met' if met_time else 'NOT met'}** ({p['seconds'] / base:.2f}).  Each distinct object "
        f"was renewed once: {p['objects']} objects, {p['requests']} requests.", "",
        f"The census pass answers which shares each server holds ({m['census']['renewed']} of "
        f"{m['census']['objects']} objects held, {m['census']['short']} short, {m['census']['lost']} lost) for "
        f"{m['census']['seconds'] / base:.2f} x the baseline's time: `allocate_buckets` costs a server more "
        "than `add_lease` (a free-space query, and Foolscap's reference to the canary), and no cheaper call "
        "of the Foolscap storage protocol says which shares a server holds (`get_buckets` and `slot_readv` "
        "cost more still, measured).  So a full pass renews with `add_lease` alone and says nothing of "
        "shares; the census runs in the slow rotation (`custodian run`), which renews a slice at each "
        "reading of the inbox with it, so that every object's shares are counted once a round "
        "(`custodian.renew_every`, 7 days), at the same one request per object and server.", "",
        f"Building the backups: the first {built['first_backup_seconds']:.2f} s, each later one "
        f"{built['backup_seconds_after']:.2f} s on average ({built['build_seconds']:.0f} s in all).", ""])


def bench_custodian(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
                    grid_down: Callable[[Path, Path], None], backups: int = 100, repeats: int = 3) -> str:
    """Build, measure (in a process of its own: it runs a reactor), and return the section."""
    built, gdir, home = build(work, timed, grid, backups)
    shutil.rmtree(work / "custodian-measure", ignore_errors=True)  # (a custodian of an earlier run's grid)
    try:
        _, _, out = timed([PY, str(Path(__file__).resolve()), "--measure", built["url"], built["keyfile"],
                           "--work", str(work / "custodian-measure"), "--repeats", str(repeats)],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        grid_down(gdir, home)
    m = json.loads(out)
    print(json.dumps({"built": built, "measured": m}, indent=1), file=sys.stderr)
    return section(built, m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backups", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--no-results", action="store_true", help="print the section; do not write RESULTS.md")
    ap.add_argument("--measure", nargs=2, metavar=("URL", "KEYFILE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    if a.measure:
        from twisted.internet import defer, task

        async def go(reactor) -> None:
            print(json.dumps(await measure(reactor, a.measure[0], a.measure[1], work, a.repeats)))
        task.react(lambda r: defer.ensureDeferred(go(r)))
        return
    sys.path.insert(0, str(HERE))
    from run import fresh_grid, grid_down, timed, update_section

    text = bench_custodian(work, timed, lambda name: fresh_grid(work, name), grid_down, a.backups, a.repeats)
    if a.no_results:
        print(text)
    else:
        update_section(TITLE, text)
        print(text)


if __name__ == "__main__":
    main()
