#!/usr/bin/env python3
"""Load times of the web dashboard's pages, for the closing note of issue 32.

usage: python bench/web_load.py [--repeat N] [--fresh N] [--backup ID] [-- GLOBAL-OPTIONS...]
       python bench/web_load.py --million [--work DIR] [--repeat N] [--fresh N] [--compare-with DIR]
       python bench/web_load.py --kept N [--work DIR] [--repeat N]

It starts ``lafs-backup web --port 0`` as a user does, logs in with the URL it
prints, and times whole page loads (request to the last byte, over HTTP on
loopback):

- the page of the backup's largest directory (found from ``ls -R --json``):
  the first load in a fresh web process and the loads after it in the same
  process; with ``--fresh N``, N fresh processes each give a first and a
  second load;
- the status page (``status``'s report over every kept backup), the list of
  backups and the lease timeline, first load and the next ones.

Without ``--million`` or ``--kept`` it measures an existing home and grid:
GLOBAL-OPTIONS (e.g. ``--url http://127.0.0.1:3456/``) go before ``web``, and
the state directories are the environment's (XDG_STATE_HOME, XDG_DATA_HOME).

``--compare-with DIR`` also times the directory page served by the
``lafs_backup`` package found in DIR (a copy of the package before a change,
say; its processes run with DIR as their working directory), in fresh
processes of its own, on the same grid and backup.  Each directory page's
figures include the index chunks its process loaded (from its INFO log) and
its peak memory.

``--million``: the million-entry tree of ``bench/run.py --only scale``
(``make_scale_tree``, kept under WORK as ``scale-1000000``, made if missing),
backed up once with ``lafs-backup backup`` on a fresh local grid (WORK/grid-web),
then measured as above.

``--kept N``: N real backups, on a fresh local grid, of a small tree of which
one file changes before each (so each is a new snapshot): one Python process
runs ``lafs-backup backup`` N times through ``lafs_backup.cli.run`` on one
reactor, which is the command's own path without N interpreter start-ups.
Then the status, backups and leases pages are timed, and ``lafs-backup
status`` and ``lafs-backup list`` as commands.

The grid and its home under WORK are removed at the end (the scale tree is
kept, as bench/run.py keeps it).  Run it under the grid lock, alone on the
machine as far as possible:

    flock /tmp/lafs-grid.lock .venv/bin/python bench/web_load.py --million --fresh 3 --compare-with DIR
    flock /tmp/lafs-grid.lock .venv/bin/python bench/web_load.py --kept 1000

bench/RESULTS.md's "Dashboard" figures (2026-12-06) came from these, DIR
holding a copy of ``lafs_backup`` whose ``Dashboard.lookup`` always used the
browser's lookup (the whole index first: the dashboard before
``read/locate.py``, then ``web/locate.py``), with ``config`` beside it (``core.yaml`` links there).

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: the scale tree, the grids, the environment)

PY = sys.executable


def note(*args: object) -> None:
    print("web_load:", *args, file=sys.stderr, flush=True)


def get(port: int, path: str, cookie: str | None = None) -> tuple[int, bytes, http.client.HTTPResponse, float]:
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, r, time.monotonic() - t0


def lafs(args: list[str], extra: list[str], env: dict[str, str] | None, ok: tuple[int, ...] = (0,)) -> str:
    p = subprocess.run([PY, "-m", "lafs_backup", *extra, *args], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    if p.returncode not in ok:
        raise SystemExit(f"lafs-backup {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


class Web:
    """``lafs-backup web --port 0`` in a process of its own, logged in."""

    def __init__(self, extra: list[str], env: dict[str, str] | None, cwd: str | None = None) -> None:
        t0 = time.monotonic()
        # (its log at INFO names each index load: the chunks a page loaded are counted from it)
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([PY, "-m", "lafs_backup", *extra, "-o", "logging.level=info", "web", "--port",
                                      "0"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        url = urllib.parse.urlsplit(self.proc.stdout.readline().strip())
        self.started = time.monotonic() - t0  # (up to the URL: the interpreter and the listing of backups)
        assert url.port, "no URL printed"
        self.port = url.port
        status, _, r, _ = get(self.port, "/?" + url.query)
        assert status == 303, status
        self.cookie = (r.getheader("Set-Cookie") or "").split(";")[0]

    def load(self, path: str) -> tuple[float, int]:
        code, body, _, took = get(self.port, path, self.cookie)
        assert code == 200, (path, code, body[:500])
        return took, len(body)

    def times(self, path: str, repeat: int) -> dict[str, Any]:
        got = [self.load(path) for _ in range(max(1, repeat))]
        return {"first_s": round(got[0][0], 3), "then_s": [round(t, 3) for t, _ in got[1:]], "bytes": got[-1][1]}

    def index_loads(self) -> dict[str, float]:
        """The index chunks this process loaded so far: how many, their bytes, and the seconds."""
        self.log.seek(0)
        chunks, size, seconds = bench._index_loads(self.log.read())
        return {"chunks": chunks, "mb": round(size / 1e6, 2), "s": round(seconds, 2)}

    def peak_rss_mb(self) -> int | None:
        """The web process's peak resident memory so far (MB; None: not known)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            return round(int(hwm.split()[1]) / 1024)
        except (OSError, StopIteration, ValueError):
            return None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def largest_directories(backup: str, extra: list[str], env: dict[str, str] | None) -> tuple[str, str, int]:
    """The backup's first and last directories (in ``ls -R`` order) of those with the most entries,
    and how many that is."""
    sizes: collections.Counter[str] = collections.Counter()
    for line in lafs(["--json", "ls", "-R", backup], extra, env).splitlines():
        if line.strip():
            sizes[os.path.dirname(json.loads(line).get("path", ""))] += 1
    n = max(sizes.values())
    biggest = [p for p, k in sizes.items() if k == n]
    return biggest[0], biggest[-1], n


def measure(extra: list[str], env: dict[str, str] | None, repeat: int, fresh: int, backup: str | None = None,
            tree: bool = True, compare_with: str | None = None) -> dict[str, Any]:
    """Every page's load times (see the module docstring)."""
    backups = [json.loads(line) for line in lafs(["--json", "list"], extra, env).splitlines() if line.strip()]
    chosen = backup or max(backups, key=lambda b: b["timestamp"])["id"]
    out: dict[str, Any] = {"backups": len(backups), "backup": chosen}
    pages = {"status": "/", "backups_page": "/backups", "leases": "/leases"}
    if tree:
        largest, last, entries = largest_directories(chosen, extra, env)
        out.update(largest_directory=largest or ".", its_entries=entries)
        page = f"/b/{chosen}/tree/{urllib.parse.quote(largest)}"
        variants: dict[str, tuple[dict[str, str] | None, str | None]] = {"directory": (env, None)}
        if compare_with:  # the same pages served by another copy of the package (e.g. before a change)
            variants["directory_compared"] = ({**(env or os.environ), "PYTHONPATH": compare_with}, compare_with)
        for key, (venv, cwd) in variants.items():
            runs = []
            for i in range(max(1, fresh)):
                web = Web(extra, venv, cwd)
                try:
                    first, size = web.load(page)
                    loaded = web.index_loads()
                    again = [round(web.load(page)[0], 3) for _ in range(max(1, repeat) - 1)]
                    runs.append({"web_start_s": round(web.started, 2), "first_s": round(first, 3), "then_s": again,
                                 "bytes": size, "index_loaded_by_first": loaded, "peak_rss_mb": web.peak_rss_mb()})
                    note(key, runs[-1])
                    if i == 0 and last != largest:
                        # Another directory as large, in the same process, after the first.
                        out[f"another_{key}"] = {"path": last, **web.times(
                            f"/b/{chosen}/tree/{urllib.parse.quote(last)}", repeat)}
                        out[f"another_{key}"]["index_loaded_in_all"] = web.index_loads()
                        note(f"another_{key}", out[f"another_{key}"])
                finally:
                    web.close()
            out[key] = runs
    web = Web(extra, env)
    try:
        out["web_start_s"] = round(web.started, 2)
        for name, path in pages.items():
            out[name] = web.times(path, repeat)
            note(name, out[name])
        out["web_peak_rss_mb"] = web.peak_rss_mb()
    finally:
        web.close()
    return out


def timed_command(args: list[str], extra: list[str], env: dict[str, str], ok: tuple[int, ...]) -> dict[str, Any]:
    wall, rss, _ = bench.timed([PY, "-m", "lafs_backup", *extra, *args], env=env, ok=ok)
    return {"wall_s": round(wall, 2), "cpu_s": round(bench.LAST_CPU[0], 2), "peak_rss_mb": round(rss / 1024)}


# -- the million-entry tree ------------------------------------------------------------------------
def million(work: Path, repeat: int, fresh: int, compare_with: str | None, n: int = 1_000_000) -> dict[str, Any]:
    tree = work / f"scale-{n}"
    t0 = time.monotonic()
    bench.make_scale_tree(tree, n)
    note(f"tree {tree} ready in {time.monotonic() - t0:.1f} s")
    home, gdir, url, env, lb = bench.fresh_grid(work, "web")
    try:
        wall, rss, so = bench.timed(lb + ["--json", "backup", str(tree)], env=env)
        made = json.loads(so.splitlines()[-1])
        note(f"backup {made.get('id')} in {wall:.1f} s")
        out = {"tree": str(tree), "backup_s": round(wall, 1), "backup_rss_mb": round(rss / 1024),
               "index_chunks": made.get("index_chunks")}
        out.update(measure(["--url", url], env, repeat, fresh, made.get("id"), compare_with=compare_with))
        # The same directory listed by the command (a fresh process, as the page's first load).
        path = out["largest_directory"]
        out["ls_command"] = timed_command(["ls", "-l", made["id"], path], ["--url", url], env, (0,))
        return out
    finally:
        bench.grid_down(gdir, home)
        shutil.rmtree(gdir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


# -- many kept backups -----------------------------------------------------------------------------
def make_backups(url: str, env: dict[str, str], tree: Path, n: int) -> None:
    """``n`` backups of ``tree`` (one file changed before each), in this process: ``cli.run`` on one
    reactor, under the environment ``env``.  Prints each backup's seconds (a JSON list) and exits
    (``task.react`` does)."""
    import io

    from twisted.internet import defer, task

    os.environ.update(env)  # (the state directories: read by the commands as the CLI's are)
    from lafs_backup import cli

    took: list[float] = []

    async def go(reactor: Any) -> None:
        for i in range(n):
            (tree / "changing.txt").write_text(f"backup {i}\n" * (1 + i % 7))
            out, err = io.StringIO(), io.StringIO()
            t0 = time.monotonic()
            code = await cli.run(reactor, ["--url", url, "--json", "backup", str(tree)], out=out, err=err)
            took.append(time.monotonic() - t0)
            if code != 0:
                raise SystemExit(f"backup {i} exited {code}: {err.getvalue()[-2000:]}")
            if (i + 1) % 100 == 0:
                note(f"{i + 1} backups, the last {took[-1]:.2f} s, mean {sum(took) / len(took):.2f} s")
        print(json.dumps(took), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


def kept(work: Path, n: int, repeat: int) -> dict[str, Any]:
    home, gdir, url, env, lb = bench.fresh_grid(work, "web-kept")
    tree = work / "web-kept-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    for i in range(20):
        (tree / f"file-{i:02d}.txt").write_text(f"a small file {i}\n" * (i + 1))
    (tree / "sub").mkdir()
    (tree / "sub" / "notes.txt").write_text("notes\n")
    try:
        t0 = time.monotonic()
        # A child process (its reactor stops when it is done; this one goes on to measure).
        p = subprocess.run([PY, __file__, "--make-backups", str(n), "--url", url, "--tree", str(tree)], env=env,
                           stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise SystemExit("making the backups failed")
        took = json.loads(p.stdout)
        made = time.monotonic() - t0
        took.sort()
        out: dict[str, Any] = {"made_s": round(made, 1), "backup_median_s": round(took[len(took) // 2], 3),
                               "backup_max_s": round(took[-1], 3)}
        note("made", out)
        extra = ["--url", url]
        out.update(measure(extra, env, repeat, 1))
        # The commands, as a user or a monitoring check runs them (status: 0-3 are all answers).
        out["status_command"] = [timed_command(["status"], extra, env, (0, 1, 2, 3)) for _ in range(max(1, repeat))]
        out["status_json_command"] = timed_command(["--json", "status"], extra, env, (0, 1, 2, 3))
        out["list_command"] = timed_command(["list"], extra, env, (0,))
        return out
    finally:
        bench.grid_down(gdir, home)
        for p in (gdir, home, tree):
            shutil.rmtree(p, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backup", help="the backup's id (default: the newest)")
    ap.add_argument("--repeat", type=int, default=3, help="loads of each page in one process (the first is cold)")
    ap.add_argument("--fresh", type=int, default=1, help="fresh web processes for the directory page")
    ap.add_argument("--work", default=str(HERE / "work"), help="where trees, grids and homes go")
    ap.add_argument("--million", action="store_true", help="back up and measure the million-entry tree")
    ap.add_argument("--kept", type=int, metavar="N", help="make N backups and measure the status page")
    ap.add_argument("--compare-with", metavar="DIR", help="also time the directory page served by the lafs_backup "
                                                          "package in DIR (e.g. a copy from before a change)")
    ap.add_argument("--make-backups", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="global options for lafs-backup (after --)")
    ns = ap.parse_args()
    work = Path(ns.work).resolve()
    if ns.make_backups:
        make_backups(ns.url, dict(os.environ), Path(ns.tree), ns.make_backups)
        return
    stamp = {"date": time.strftime("%Y-%m-%d"), "loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}
    if ns.million:
        out = million(work, ns.repeat, ns.fresh, ns.compare_with)
    elif ns.kept:
        out = kept(work, ns.kept, ns.repeat)
    else:
        out = measure(ns.extra, None, ns.repeat, ns.fresh, ns.backup, compare_with=ns.compare_with)
    out.update(stamp, loadavg_after=os.getloadavg())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
