"""Lease renewal by storage index: one full custodian pass against renewing the same objects one request each.

For the issue's benchmark item 6 (issue 29).  On a private embedded grid (3 storage servers, 2-of-3, made in
a temporary directory and stopped at the end, or ``--dir`` of a running one), N small files are uploaded
once through the gateway; the bench keeps their verify caps only and, through one set of Foolscap
connections:

1. a first pass with a new custodian secret (every lease is new),
2. a second pass (every lease is renewed: the custodian's steady state),
3. the baseline: one ``add_lease`` per object and server, the same concurrency, no answer asked.

It prints each one's requests and wall time, and fails when a pass sends more than 1.5 x objects x
servers requests.  Run it under the grid lock: ``flock /tmp/lafs-grid.lock .venv/bin/python bench/leases.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

from lafs_backup.custodian.join import GridClient  # noqa: E402
from lafs_backup.custodian.leases import Renewer  # noqa: E402
from lafs_backup.custodian.secretfile import create_secret_file  # noqa: E402
from lafs_backup.custodian.targets import target_of, verify_cap_of  # noqa: E402
from lafs_backup.grid.local import GridSpec, LocalGrid  # noqa: E402
from lafs_backup.slots import Slots  # noqa: E402


def lafs(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *args], capture_output=True, text=True, check=True,
                       cwd=ROOT)
    return p.stdout.strip()


def upload(url: str, n: int) -> list[str]:
    """N files of 1 KiB (beyond a LIT cap's 55 bytes), each its own CHK object; their verify caps."""
    def put(i: int) -> str:
        req = urllib.request.Request(url + "uri", data=os.urandom(1024), method="PUT")
        with urllib.request.urlopen(req) as r:
            v = verify_cap_of(r.read().decode().strip())
            assert v is not None
            return v
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(put, range(n)))


async def one_request_each(reactor, servers, secret, targets, limit: int) -> int:
    """The baseline: ``add_lease`` for every object at every server, ``limit`` in flight; returns the count."""
    slots = Slots(limit, reactor)
    sent = 0

    async def ask(ss, t, seed):
        try:
            s = secret.for_server(t.storage_index, seed)
            await ss.add_lease(t.storage_index, s.renew, s.cancel)
        finally:
            slots.release()

    running = []
    for t in targets:
        for server in servers:
            await slots.acquire()
            sent += 1
            running.append(defer.Deferred.fromCoroutine(ask(server.get_storage_server(), t, server.get_lease_seed())))
    await defer.gatherResults(running, consumeErrors=True)
    return sent


async def measure(reactor, grid_dir: Path, url: str, n: int, limit: int, work: Path) -> dict:
    t0 = time.monotonic()
    verify_caps = upload(url, n)
    uploaded = time.monotonic() - t0
    targets = [target_of(v) for v in verify_caps]
    furl = LocalGrid(GridSpec(str(grid_dir))).furl()
    client = GridClient(reactor, str(work / "state"), introducer=furl)
    servers = await client.connected(3, 60)
    secret = create_secret_file(str(work / "lease.secret"))
    out: dict = {"objects": n, "servers": len(servers), "limit": limit, "upload_seconds": round(uploaded, 2)}
    try:
        for name in ("first_pass", "second_pass"):
            renewer = Renewer(reactor, client.servers, secret, limit=limit)
            t = time.monotonic()
            done = await renewer.renew(targets)
            out[name] = {"requests": renewer.requests, "seconds": round(time.monotonic() - t, 3),
                         "held_by_3": sum(1 for r in done if r.holding == 3)}
        t = time.monotonic()
        sent = await one_request_each(reactor, servers, secret, targets, limit)
        out["one_add_lease_each"] = {"requests": sent, "seconds": round(time.monotonic() - t, 3)}
    finally:
        await client.stop()
    bound = 1.5 * n * len(servers)
    for name in ("first_pass", "second_pass"):
        out[name]["ratio_to_objects_x_servers"] = round(out[name]["requests"] / (n * len(servers)), 3)
        out[name]["time_ratio_to_baseline"] = round(out[name]["seconds"] / out["one_add_lease_each"]["seconds"], 3)
        assert out[name]["requests"] <= bound, f"{name}: {out[name]['requests']} requests > {bound}"
        assert out[name]["held_by_3"] == n, name
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--limit", type=int, default=32, help="requests in flight (object-at-a-server)")
    ap.add_argument("--dir", type=Path, help="a running embedded grid to use (default: a new private one)")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-leases-") as tmp:
        work = Path(tmp)
        grid_dir = ns.dir or work / "grid"
        url = lafs("grid", "up", "--dir", str(grid_dir), "--nodes", "3", "--needed", "2", "--happy", "3")
        try:
            task.react(lambda r: defer.ensureDeferred(_run(r, grid_dir, url, ns, work)))
        finally:
            if ns.dir is None:
                lafs("grid", "down", "--dir", str(grid_dir))


async def _run(reactor, grid_dir, url, ns, work) -> None:
    out = await measure(reactor, grid_dir, url, ns.objects, ns.limit, work)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
