#!/usr/bin/env python3
"""Benchmark lafs-backup against `tahoe backup` and duplicity, side by side, and write bench/RESULTS.md.

usage: python bench/run.py [--work DIR] [--scale N] [--no-scale] [--no-rivals]
                           [--only check|browse|watch|remote|copy|scale|real|derive|leases|sealed]

``--only real`` measures real trees beside restic and borg (bench/rivals.py); ``--only derive`` a
Python environment with and without derive rules (bench/derive.py); ``--only leases`` the custodian's
full pass over 100 kept backups (bench/custodian.py); ``--only sealed`` a sealed repository's host
beside a plain one (bench/sealed.py).

Each tool gets its own copy of the tree from bench/mktree.py (default
size) and its own fresh local grid of the same shape (3 storage nodes,
2-of-3, happy 3), then: full backup, unchanged rerun, the "1% change" (a
line appended to 22 .txt files, 5 new files) and a full restore.  Peak RSS
of each command is read from wait4().  The scale run makes a tree of N
entries (mostly empty or tiny files) and measures, on one grid: phase one
(warm page cache), the first full backup and its requests, an unchanged
rerun, a full restore beside `tar -x`, `ls -R` and `find` beside a local
`find`, and `diff` of snapshots 1% and ten files apart.  duplicity comes from Debian (installed here
when missing); `tahoe` is the one tahoe-lafs installed with lafs-backup.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MKTREE = HERE / "mktree.py"
PY = sys.executable


#: CPU seconds (user + system) of the last command :func:`timed` ran.
LAST_CPU = [0.0]


def gateway_cpu(gdir: Path) -> float | None:
    """CPU seconds the grid's gateway process has used so far (None: not known)."""
    import json

    try:
        pid = json.loads((gdir / "grid.json").read_text())["processes"]["gateway"]["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, KeyError, ValueError, IndexError, TypeError):
        return None


#: GNU time, which reports the peak RSS of the command alone (see :func:`timed`; Debian's ``time``).
GNU_TIME = "/usr/bin/time"


def timed(cmd: list[str], **kw) -> tuple[float, int, str]:
    """Run a command; return (wall seconds, its own peak RSS in KiB, stdout).

    The peak comes from GNU time when it is installed: a child this process spawns inherits, in its
    own peak, this process's size when it was spawned (Linux carries the high-water mark of the
    memory it leaves at exec), so wait4's figure is never below the benchmark's own (539 MB after
    it listed the million-entry tree).  GNU time is small, and its child's peak is the command's."""
    t0 = time.monotonic()
    peak_file = None
    if os.access(GNU_TIME, os.X_OK):
        import tempfile

        fd, peak_file = tempfile.mkstemp(prefix="bench-peak-")
        os.close(fd)
        cmd = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", peak_file, *cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env=kw.get("env"), cwd=kw.get("cwd"))
    import threading

    outs: dict[str, bytes] = {}

    def drain(name: str, f) -> None:
        outs[name] = f.read()

    threads = [threading.Thread(target=drain, args=(n, f)) for n, f in (("out", p.stdout), ("err", p.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(p.pid, 0)
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss
    if peak_file is not None:
        with open(peak_file) as f:
            fields = f.read().split()
        os.unlink(peak_file)
        if len(fields) >= 3 and fields[-1].isdigit():  # (the command's CPU, not GNU time's own)
            LAST_CPU[0] = float(fields[-3]) + float(fields[-2])
            peak = int(fields[-1])
    p.returncode = code
    if kw.get("check", True) and code not in kw.get("ok", (0,)):
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n"
                         f"{outs.get('err', b'').decode(errors='replace')[-3000:]}")
    return wall, peak, outs.get("out", b"").decode(errors="replace")


def change_one_percent(tree: Path) -> None:
    txts = sorted(p for p in tree.rglob("*.txt") if not p.is_symlink())
    step = max(1, len(txts) // 22)
    for p in txts[::step][:22]:
        with open(p, "ab") as f:
            f.write(b"one more line appended for the 1% change\n")
    for i in range(5):
        (tree / f"new-file-{i}.txt").write_bytes(b"new content %d\n" % i * (200 + 50 * i))


def grid_up(d: Path, home: Path, *shape: str) -> str:
    _, _, out = timed([PY, "-m", "lafs_backup", "grid", "up", "--dir", str(d), *shape], env=env_for(home))
    return out.strip()


def fresh_grid(work: Path, name: str, *shape: str) -> tuple[Path, Path, str, dict[str, str], list[str]]:
    """A new home and a new grid for one section: (home, grid dir, gateway URL, env, lafs-backup command)."""
    home, gdir = work / f"{name}-home", work / f"grid-{name}"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(gdir, ignore_errors=True)
    url = grid_up(gdir, home, *shape)
    return home, gdir, url, env_for(home), [PY, "-m", "lafs_backup", "--url", url]


def grid_down(d: Path, home: Path) -> None:
    timed([PY, "-m", "lafs_backup", "grid", "down", "--dir", str(d)], env=env_for(home), check=False)


def compiled() -> None:
    """Compile lafs-backup's modules, as ``pip install`` leaves them: a command must not pay for
    compiling its own sources (where PYTHONDONTWRITEBYTECODE is set, every command would, each time)."""
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "lafs_backup")], check=True)


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["XDG_STATE_HOME"] = str(home / "state")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["PYTHONPATH"] = str(ROOT)
    return env


def bench_lafs(work: Path, tree: Path) -> dict[str, tuple[float, int]]:
    home = work / "lafs-home"
    gdir = work / "grid-lafs"
    url = grid_up(gdir, home)
    env = env_for(home)
    lb = [PY, "-m", "lafs_backup", "--url", url]
    res = {}
    try:
        w, r, _ = timed(lb + ["backup", str(tree)], env=env)
        res["full backup"] = (w, r)
        w, r, _ = timed(lb + ["backup", str(tree)], env=env)
        res["unchanged rerun"] = (w, r)
        change_one_percent(tree)
        w, r, _ = timed(lb + ["backup", str(tree)], env=env)
        res["after 1% change"] = (w, r)
        out = work / "restore-lafs"
        w, r, _ = timed(lb + ["restore", "latest", "--target", str(out)], env=env)
        res["full restore"] = (w, r)
        subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(out)], check=True)
    finally:
        grid_down(gdir, home)
    return res


def tahoe_env(work: Path, gw: Path) -> dict[str, str]:
    """PATH with a `tahoe` that talks to this grid's gateway (duplicity calls plain `tahoe`)."""
    bindir = work / f"tahoe-bin-{gw.parent.name}"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "tahoe"
    shim.write_text(f"#!/bin/sh\nexec {PY} -m allmydata -d {gw} \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def bench_tahoe_backup(work: Path, tree: Path) -> dict[str, tuple[float, int]]:
    home = work / "tahoe-home"
    gdir = work / "grid-tahoe"
    grid_up(gdir, home)
    env = tahoe_env(work, gdir / "gateway")
    res = {}
    try:
        timed(["tahoe", "create-alias", "bench"], env=env)
        for step in ("full backup", "unchanged rerun", "after 1% change"):
            if step == "after 1% change":
                change_one_percent(tree)
            w, r, _ = timed(["tahoe", "backup", str(tree), "bench:"], env=env, ok=(0, 2))
            res[step] = (w, r)
        out = work / "restore-tahoe"
        w, r, _ = timed(["tahoe", "cp", "-r", "bench:Latest", str(out)], env=env)
        res["full restore"] = (w, r)
    finally:
        grid_down(gdir, home)
    return res


def bench_duplicity(work: Path, tree: Path) -> dict[str, tuple[float, int]]:
    if shutil.which("duplicity") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "duplicity"], check=False, capture_output=True)
        if shutil.which("duplicity") is None:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "duplicity"], check=True, capture_output=True)
    home = work / "dup-home"
    gdir = work / "grid-dup"
    grid_up(gdir, home)
    env = tahoe_env(work, gdir / "gateway")
    env["HOME"] = str(home)  # duplicity's archive cache goes to ~/.cache
    target = "tahoe://bench/dup"
    res = {}
    try:
        timed(["tahoe", "create-alias", "bench"], env=env)
        timed(["tahoe", "mkdir", "bench:dup"], env=env)
        base = ["duplicity", "--no-encryption", "--no-print-statistics"]
        w, r, _ = timed(base + ["full", str(tree), target], env=env)
        res["full backup"] = (w, r)
        w, r, _ = timed(base + ["incremental", str(tree), target], env=env)
        res["unchanged rerun"] = (w, r)
        change_one_percent(tree)
        w, r, _ = timed(base + ["incremental", str(tree), target], env=env)
        res["after 1% change"] = (w, r)
        out = work / "restore-dup"
        w, r, _ = timed(["duplicity", "--no-encryption", "restore", target, str(out)], env=env)
        res["full restore"] = (w, r)
    finally:
        grid_down(gdir, home)
    return res


def make_scale_tree(dest: Path, n: int) -> None:
    """``n`` entries: directories of 1,000; nine files in ten empty, the rest of 1-40 bytes."""
    if (dest / ".complete").exists():
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    per = 1000
    made = 0
    d = 0
    while made < n:
        sub = dest / f"d{d // 100:03d}" / f"e{d:05d}"
        sub.mkdir(parents=True)
        made += 1
        for i in range(min(per - 1, n - made)):
            with open(sub / f"f{i:04d}", "wb") as f:
                if i % 10 == 0:
                    f.write(b"tiny %d %d\n" % (d, i))
            made += 1
        d += 1
    (dest / ".complete").write_text("")


def _scale_change(tree: Path, every: int) -> int:
    """Change every ``every``-th file of a scale tree (a line written into it); returns how many."""
    n = 0
    for d, _, files in sorted(os.walk(tree)):
        for name in sorted(files)[::every]:
            if name.startswith("."):
                continue
            with open(os.path.join(d, name), "ab") as f:
                f.write(b"changed for the diff benchmark\n")
            n += 1
    return n


def _index_loads(err: str) -> tuple[int, int, float]:
    """Chunks, bytes and seconds of the index loads a command logged (-o logging.level=info)."""
    import re

    found = re.findall(r"index: (\d+) chunks \((\d+) bytes\) loaded in ([\d.]+) s", err)
    return (sum(int(c) for c, _, _ in found), sum(int(b) for _, b, _ in found), sum(float(t) for _, _, t in found))


def bench_scale(work: Path, n: int) -> dict[str, object]:
    """The scale goals, side by side on one tree of ``n`` entries: phase one and the unchanged
    rerun; the first full backup's requests; a full restore against ``tar -x``; ``ls -R`` and
    ``find`` against a local ``find``; ``diff`` of snapshots 1% and 0.01% apart."""
    import json

    tree = work / f"scale-{n}"
    make_scale_tree(tree, n)
    entries = sum(len(ds) + len(fs) for _, ds, fs in os.walk(tree)) + 1
    dirs = sum(len(ds) for _, ds, _ in os.walk(tree)) + 1
    files = entries - dirs
    home, gdir, url, env, lb = fresh_grid(work, "scale")
    info = lb + ["-o", "logging.level=info"]
    out: dict[str, object] = {"entries": entries, "dirs": dirs, "files": files}
    try:
        timed(lb + ["backup", str(tree), "--queue-only"], env=env)  # warms the page cache
        w1, r1, _ = timed(lb + ["backup", str(tree), "--queue-only"], env=env)
        gw_before = gateway_cpu(gdir)
        wf, rf, so = timed(lb + ["--json", "backup", str(tree)], env=env)
        out["full_cpu"] = LAST_CPU[0]
        gw_after = gateway_cpu(gdir)
        out["full_gateway_cpu"] = gw_after - gw_before if gw_before is not None and gw_after is not None else None
        first = json.loads(so.splitlines()[-1])
        wu, ru, so = timed(lb + ["--json", "backup", str(tree)], env=env)
        kept = json.loads(so.splitlines()[-1])["entries_kept"]
        # The same rerun deciding every entry (as every 8th backup in a row does): no trees file.
        for p in (home / "state" / "lafs-backup").glob("*.trees.*"):
            p.unlink()
        wuf, ruf, _ = timed(lb + ["backup", str(tree)], env=env)
        out.update(phase_one_s=w1, phase_one_rss=r1, rate=entries / w1, full_s=wf, full_rss=rf, rerun_s=wu,
                   rerun_rss=ru, rerun_kept=kept, rerun_full_s=wuf, rerun_full_rss=ruf,
                   full_requests=first["requests"], index_chunks=first["index_chunks"])
        print("scale: backups", out, file=sys.stderr, flush=True)

        # Restore against tar -x of the same tree (the tar made beforehand, not timed).
        tar = work / "scale.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(tree), "."], check=True)
        for name in ("scale-restore", "scale-untar"):
            shutil.rmtree(work / name, ignore_errors=True)
        (work / "scale-untar").mkdir()
        wt, rt, _ = timed(["tar", "-xf", str(tar), "-C", str(work / "scale-untar")])
        wr, rr, so = timed(info + ["--json", "restore", first["cap"], "--target", str(work / "scale-restore")], env=env)
        out.update(tar_s=wt, restore_s=wr, restore_rss=rr, restore_requests=json.loads(so.splitlines()[-1])["requests"])
        for name in ("scale-restore", "scale-untar"):
            shutil.rmtree(work / name, ignore_errors=True)
        tar.unlink()
        print("scale: restore", wr, "tar -x", wt, file=sys.stderr, flush=True)

        # Listings against a local find (output to a pipe, read and counted, as a user's | wc -l).
        wfind, _, so = timed(["find", str(tree)])
        lines_find = so.count("\n")
        wls, rls, so = _timed_err(info + ["ls", "-R", first["cap"]], env)
        chunks, size, loaded = _index_loads(so[1])
        wfd, rfd, fo = _timed_err(info + ["find", "f0007", "--snapshot", first["cap"]], env)
        wlfind, _, _ = timed(["find", str(tree), "-name", "f0007"])
        out.update(find_s=wfind, find_lines=lines_find, ls_s=wls, ls_rss=rls, ls_lines=so[0].count("\n"),
                   index_bytes=size, index_load_s=loaded, findcmd_s=wfd, findcmd_rss=rfd, local_find_name_s=wlfind,
                   findcmd_load_s=_index_loads(fo[1])[2])
        print("scale: ls -R", wls, "find", wfind, file=sys.stderr, flush=True)

        # diff of two snapshots 1% apart, and 0.01% apart, and of a snapshot with itself.
        changed = _scale_change(tree, 100)
        wb1, _, so = timed(lb + ["--json", "backup", str(tree)], env=env)
        second = json.loads(so.splitlines()[-1])
        wd1, rd1, so = _timed_err(info + ["diff", first["cap"], second["cap"]], env, ok=(0, 1))
        d1_lines = so[0].count("\n")
        d1_load = _index_loads(so[1])
        few = 0
        for d in sorted(tree.glob("d000/e0000*"))[:1]:
            for f in sorted(d.iterdir())[:10]:
                f.write_bytes(b"changed again\n")
                few += 1
        wb2, rb2, so = timed(lb + ["--json", "backup", str(tree)], env=env)
        third = json.loads(so.splitlines()[-1])
        wd2, rd2, so = _timed_err(info + ["diff", second["cap"], third["cap"]], env, ok=(0, 1))
        d2_lines, d2_load = so[0].count("\n"), _index_loads(so[1])
        wd0, _, so = _timed_err(info + ["diff", third["cap"], third["cap"]], env, ok=(0, 1))
        out.update(changed=changed, diff1_s=wd1, diff1_rss=rd1, diff1_lines=d1_lines, diff1_index=d1_load,
                   second_new_chunks=second["index_chunks_new"], few=few, diff2_s=wd2, diff2_rss=rd2,
                   diff2_lines=d2_lines, diff2_index=d2_load, third_new_chunks=third["index_chunks_new"],
                   diff0_s=wd0, change1_backup_s=wb1, few_backup_s=wb2, few_backup_rss=rb2,
                   few_backup_kept=third["entries_kept"], few_backup_requests=third["requests"])
        print("scale: diff", wd1, wd2, wd0, file=sys.stderr, flush=True)
    finally:
        grid_down(gdir, home)
    return out


def _timed_err(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, int, tuple[str, str]]:
    """:func:`timed` that also returns stderr: (wall, peak RSS KiB, (stdout, stderr))."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    import threading

    outs: dict[str, bytes] = {}
    threads = [threading.Thread(target=lambda n=n, f=f: outs.__setitem__(n, f.read()))
               for n, f in (("out", p.stdout), ("err", p.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(p.pid, 0)
    for t in threads:
        t.join()
    code = os.waitstatus_to_exitcode(status)
    err = outs["err"].decode(errors="replace")
    if code not in ok:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{err[-3000:]}")
    return time.monotonic() - t0, usage.ru_maxrss, (outs["out"].decode(errors="replace"), err)


def _secs(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.1f} s"


def scale_section(s: dict) -> str:
    """The RESULTS.md section of one scale run."""
    req = s["full_requests"]
    mb = lambda kib: f"{kib // 1024} MB"  # noqa: E731
    rerun_ratio = s["rerun_s"] / s["phase_one_s"]
    restore_ratio = s["restore_s"] / s["tar_s"]
    ls_ratio = (s["ls_s"] - s["index_load_s"]) / s["find_s"]
    find_ratio = (s["findcmd_s"] - s["findcmd_load_s"]) / s["local_find_name_s"]
    lines = [f"## Scale: {s['entries']:,} entries ({datetime.date.today().isoformat()})", "",
             f"`make_scale_tree`: {s['dirs']:,} directories of 1,000 entries, {s['files']:,} files, nine in ten "
             "empty and the rest of 1-40 bytes (stored inline in their caps).  One run, all steps side by side "
             "on one fresh grid.", "",
             "| step | time | beside | ratio | target | peak RSS |", "|---|---|---|---|---|---|",
             f"| phase one, warm cache | {s['phase_one_s']:.1f} s ({s['rate']:,.0f} entries/s) | | | | "
             f"{mb(s['phase_one_rss'])} |",
             f"| first full backup | {s['full_s']:.1f} s | | | | {mb(s['full_rss'])} |",
             f"| unchanged rerun | {s['rerun_s']:.1f} s | phase one {s['phase_one_s']:.1f} s | {rerun_ratio:.2f} | "
             f"<= 1.5: {'met' if rerun_ratio <= 1.5 else 'NOT met'} | {mb(s['rerun_rss'])} |",
             f"| unchanged rerun deciding every entry (every 8th in a row) | {s['rerun_full_s']:.1f} s | phase one "
             f"{s['phase_one_s']:.1f} s | {s['rerun_full_s'] / s['phase_one_s']:.2f} | | {mb(s['rerun_full_rss'])} |",
             f"| backup after the 1% change (every directory changed) | {s['change1_backup_s']:.1f} s | | | | |",
             f"| backup after the {s['few']}-file change | {s['few_backup_s']:.1f} s | phase one "
             f"{s['phase_one_s']:.1f} s | {s['few_backup_s'] / s['phase_one_s']:.2f} | | {mb(s['few_backup_rss'])} |",
             f"| full restore | {s['restore_s']:.1f} s | `tar -x` {s['tar_s']:.1f} s | {restore_ratio:.2f} | "
             f"<= 3: {'met' if restore_ratio <= 3 else 'NOT met'} | {mb(s['restore_rss'])} |",
             f"| `ls -R` ({s['ls_lines']:,} lines) | {s['ls_s']:.1f} s, index load {s['index_load_s']:.1f} s | "
             f"`find` {s['find_s']:.2f} s ({s['find_lines']:,} lines) | {ls_ratio:.1f} (without the load) | "
             f"<= 2 + load: {'met' if ls_ratio <= 2 else 'NOT met'} | {mb(s['ls_rss'])} |",
             f"| `find f0007` | {s['findcmd_s']:.1f} s, index load {s['findcmd_load_s']:.1f} s | `find -name f0007` "
             f"{s['local_find_name_s']:.2f} s | {find_ratio:.1f} (without the load) | <= 2 + load: "
             f"{'met' if find_ratio <= 2 else 'NOT met'} | {mb(s['findcmd_rss'])} |",
             f"| `diff` of snapshots {s['changed']:,} files apart (1%) | {s['diff1_s']:.1f} s "
             f"({s['diff1_lines']:,} lines) | | | | {mb(s['diff1_rss'])} |",
             f"| `diff` of snapshots {s['few']} files apart | {s['diff2_s']:.1f} s ({s['diff2_lines']} lines) | "
             f"| {s['diff2_s'] / s['diff1_s']:.2f} of the 1% diff | | {mb(s['diff2_rss'])} |",
             f"| `diff` of a snapshot with itself | {s['diff0_s']:.1f} s | | | | |", "",
             f"First full backup, gateway requests: {req}: "
             f"{req.get('mkdir', 0) / s['dirs']:.3f} mkdir per directory, "
             f"{req.get('put', 0) / s['files']:.5f} PUT per file.  Its CPU: lafs-backup {s['full_cpu']:.1f} s, "
             f"the gateway {_secs(s['full_gateway_cpu'])} (the storage nodes the rest of the machine's two cores).  "
             f"The index: {s['index_chunks']} chunks, {s['index_bytes'] / 1e6:.1f} MB stored "
             f"(loaded by `ls -R` in {s['index_load_s']:.1f} s).  Restore requests: {s['restore_requests']}.",
             "",
             f"The 1% change rewrote every directory (a file in a hundred, in each): its backup stored "
             f"{s['second_new_chunks']} new index chunks of {s['index_chunks']}, and its diff loaded "
             f"{s['diff1_index'][0]} chunks ({s['diff1_index'][1] / 1e6:.1f} MB).  The {s['few']}-file change "
             f"stored {s['third_new_chunks']} new chunks, and its diff loaded {s['diff2_index'][0]} "
             f"({s['diff2_index'][1] / 1e6:.1f} MB) beside the chunks the two snapshots share.", "",
             f"The unchanged rerun kept the whole tree ({s['rerun_kept']:,} entries below the root not looked "
             f"at again); the {s['few']}-file backup kept {s['few_backup_kept']:,} entries whole and sent "
             f"{s['few_backup_requests']}.", ""]
    return "\n".join(lines)


def _change_one_document(tree: Path, night: int) -> None:
    """A night's work on one document: one text file in one directory edited, one added beside it."""
    txts = sorted(p for p in tree.rglob("*.txt") if not p.is_symlink() and p.parent != tree)
    doc = txts[len(txts) // 2]
    with open(doc, "ab") as f:
        f.write(b"edited on night %d\n" % night)
    (doc.parent / f"notes-{night}.txt").write_bytes(b"notes of night %d\n" % night * 20)


def _check_workload(work: Path, base: Path, name: str, change, kept: int) -> dict[str, float]:
    tree = work / f"tree-check-{name}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(base, tree, symlinks=True)
    home = work / f"check-home-{name}"
    shutil.rmtree(home, ignore_errors=True)
    gdir = work / f"grid-check-{name}"
    shutil.rmtree(gdir, ignore_errors=True)
    url = grid_up(gdir, home)
    env = env_for(home)
    lb = [PY, "-m", "lafs_backup", "--url", url]
    try:
        for i in range(kept):
            if i:
                change(tree, i)
            timed(lb + ["backup", str(tree)], env=env)
        import json

        runs = [json.loads(ln) for ln in timed(lb + ["--json", "check"], env=env)[2].splitlines()
                if '"checked"' in ln]
        distinct, newest_objects = sum(r["objects"] for r in runs), runs[0]["objects"]
        newest, every, one_by_one = [], [], []
        for _ in range(2):  # interleaved, so that drift hits both alike
            newest.append(timed(lb + ["check", str(kept)], env=env)[0])
            every.append(timed(lb + ["check"], env=env)[0])
            one_by_one.append(sum(timed(lb + ["check", str(g)], env=env)[0] for g in range(1, kept + 1)))
    finally:
        grid_down(gdir, home)
    return {"newest": min(newest), "every": min(every), "one_by_one": min(one_by_one),
            "distinct": distinct, "newest_objects": newest_objects}


def bench_check(work: Path, base: Path, kept: int = 8) -> str:
    """``check`` of every kept backup against ``check`` of the newest alone, ``kept`` backups of the
    standard tree: after a night's work on one document each (they share nearly every object),
    and after the "1% change" each (22 files in as many directories: each backup makes about a
    third of the directories anew)."""
    lines = [f"## check: every kept backup against the newest ({datetime.date.today().isoformat()})", "",
             f"{kept} backups of the standard tree; best of two interleaved runs of each.  \"Distinct\" "
             "counts the objects (storage indexes) of all the backups together.", "",
             f"| backups made after | distinct objects / newest's | `check {kept}` (newest) | `check` (all) "
             "| all / newest | target <= 1.5 | ms per distinct object (newest, all) "
             "| one `check GEN` per backup (as before) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, label, change in (("document", "one document edited each night", _change_one_document),
                                ("percent", "the 1% change each time", lambda t, i: change_one_percent(t))):
        r = _check_workload(work, base, name, change, kept)
        ratio = r["every"] / r["newest"]
        lines.append(
            f"| {label} | {int(r['distinct'])} / {int(r['newest_objects'])} "
            f"({r['distinct'] / r['newest_objects']:.2f}) | {r['newest']:.2f} s | {r['every']:.2f} s | {ratio:.2f} "
            f"| {'met' if ratio <= 1.5 else 'not met'} | {1000 * r['newest'] / r['newest_objects']:.1f}, "
            f"{1000 * r['every'] / r['distinct']:.1f} | {r['one_by_one']:.2f} s "
            f"({r['one_by_one'] / r['newest']:.2f}) |")
    lines += ["", "Each distinct object costs one check however many backups hold it; where the "
              "backups themselves differ in more objects (the 1% change rewrites about a third of the "
              "directories each time), the cost follows their distinct objects.", ""]
    return "\n".join(lines)


def _mounted(lb: list[str], env: dict[str, str], mnt: Path) -> subprocess.Popen:
    p = subprocess.Popen(lb + ["mount", str(mnt)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (mnt / "snapshots").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the mount did not appear: {p.communicate()[1].decode(errors='replace')}")
        time.sleep(0.05)
    return p


def bench_browse(work: Path, entries: int = 100_000, big_mib: int = 256) -> str:
    """ls -R of a snapshot of ``entries`` entries (beside a local find of the same tree), the
    requests of a dump of one packed file, the first listing through the mount, and the mount's
    read throughput of a large file beside a restore of it."""
    import json
    import re
    import signal

    tree = work / f"scale-{entries}"
    make_scale_tree(tree, entries)
    big = work / "tree-big"
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir(parents=True)
    with open(big / "large.bin", "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1 << 20))
    (big / "small").mkdir()
    (big / "small" / "note.txt").write_bytes(b"a small packed file\n" * 10)
    home, gdir, url, env, lb = fresh_grid(work, "browse")
    try:
        many = timed(lb + ["backup", str(tree)], env=env)[2].strip()
        large = timed(lb + ["backup", str(big)], env=env)[2].strip()
        w_find, _, _ = timed(["find", str(tree)])
        w_ls, r_ls, out = timed(lb + ["ls", "-R", many], env=env)
        listed = len(out.splitlines())
        w_ls1, _, _ = timed(lb + ["ls", many], env=env)
        p = subprocess.run(lb + ["-o", "logging.level=info", "dump", large, "small/note.txt"], env=env,
                           capture_output=True, stdin=subprocess.DEVNULL)
        counts = json.loads(re.search(r"dump: gateway requests (\{.*\})", p.stderr.decode()).group(1)
                            .replace("'", '"'))
        restores, reads, firsts = [], [], []
        for i in range(2):  # interleaved, so that drift hits both alike
            out_dir = work / f"browse-restore-{i}"
            shutil.rmtree(out_dir, ignore_errors=True)
            restores.append(timed(lb + ["restore", large, "--target", str(out_dir)], env=env)[0])
            shutil.rmtree(out_dir, ignore_errors=True)
            mnt = work / f"browse-mnt-{i}"
            mnt.mkdir(exist_ok=True)
            m = _mounted(lb, env, mnt)
            try:
                snaps = mnt / "snapshots"
                t0 = time.monotonic()
                name = sorted(x for x in os.listdir(snaps) if x != "latest")[0]  # the many-entry backup
                os.listdir(snaps / name)
                firsts.append(time.monotonic() - t0)
                newest = snaps / os.readlink(snaps / "latest")
                t0 = time.monotonic()
                with open(newest / "large.bin", "rb") as f:
                    while f.read(1 << 20):
                        pass
                reads.append(time.monotonic() - t0)
            finally:
                m.send_signal(signal.SIGTERM)
                m.wait(timeout=30)
    finally:
        grid_down(gdir, home)
    mib = big_mib
    rate_restore, rate_mount = mib / min(restores), mib / min(reads)
    return "\n".join([
        f"## Browse: ls, dump and mount ({datetime.date.today().isoformat()})", "",
        "| measure | value | beside | target |", "|---|---|---|---|",
        f"| `ls -R` of a snapshot of {entries:,} entries ({listed:,} lines) | {w_ls:.2f} s (peak RSS "
        f"{r_ls // 1024} MB) | local `find` of the same tree: {w_find:.2f} s | |",
        f"| `ls` of its root (one directory, whole command) | {w_ls1:.2f} s | | |",
        f"| first listing through the mount (a backup's root) | {1000 * min(firsts):.0f} ms | | |",
        f"| requests of `dump` of one packed file (by cap) | {sum(counts.values())} ({counts}) | the snapshot "
        "root, the tree and one directory, then one Range read of the pack | |",
        f"| reading a {mib} MiB file through the mount | {rate_mount:.1f} MiB/s | `restore` of it: "
        f"{rate_restore:.1f} MiB/s | mount / restore = {rate_mount / rate_restore:.2f} (>= 0.8: "
        f"{'met' if rate_mount / rate_restore >= 0.8 else 'not met'}) |",
        "", f"Best of two interleaved runs for the mount read and the restore "
        f"(restore {', '.join(f'{x:.2f}' for x in restores)} s; mount read {', '.join(f'{x:.2f}' for x in reads)} s).",
        ""])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a running process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_watch(work: Path, entries: int = 40_000, settle: float = 1.0, changes: int = 5,
                idle: float = 60.0) -> str:
    """``watch`` on a tree of ``entries`` entries: change-to-snapshot latency, the requests and CPU
    of a one-file change beside a full unchanged rerun (``backup``) of the same tree, idle CPU."""
    import json
    import queue
    import signal
    import threading

    tree = work / f"scale-{entries}"
    make_scale_tree(tree, entries)
    home, gdir, url, env, lb = fresh_grid(work, "watch")
    try:
        p = subprocess.Popen(lb + ["--json", "watch", str(tree), "--settle", str(settle), "--min-interval", "0"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             text=True)
        events: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [events.put(json.loads(x)) for x in p.stdout], daemon=True).start()

        def snapshot() -> dict:
            while True:
                ev = events.get(timeout=600)
                if ev.get("type") == "snapshot":
                    return ev

        first = snapshot()
        time.sleep(2 * settle)
        # A full unchanged rerun of the same tree, by a separate backup (the watcher idles meanwhile).
        t0 = time.monotonic()
        b = subprocess.Popen(lb + ["--json", "backup", str(tree)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        out = b.stdout.read()
        _, _, usage = os.wait4(b.pid, 0)
        rerun_wall = time.monotonic() - t0
        rerun_cpu = usage.ru_utime + usage.ru_stime
        rerun = json.loads(out.decode().splitlines()[-1])
        rerun_requests = sum(rerun["requests"].values())
        time.sleep(2 * settle)
        rounds = []
        files = sorted(p_ for p_ in tree.rglob("f*") if p_.stat().st_size > 0)
        for i in range(changes):
            target = files[(i * 997) % len(files)]
            cpu0 = _cpu_seconds(p.pid)
            t0 = time.monotonic()
            with open(target, "ab") as f:  # past 55 bytes, so it is stored in a pack (not a LIT cap)
                f.write(b"changed %d: one more line, long enough that the file needs a pack of its own\n" % i)
            ev = snapshot()
            latency = time.monotonic() - t0
            rounds.append((latency, ev["seconds"], ev["requests_total"], _cpu_seconds(p.pid) - cpu0, ev["requests"]))
            time.sleep(settle)
        cpu0 = _cpu_seconds(p.pid)
        time.sleep(idle)
        idle_cpu = (_cpu_seconds(p.pid) - cpu0) * 60 / idle
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        grid_down(gdir, home)
    lat = sorted(r[0] for r in rounds)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    one_cpu = med([r[3] for r in rounds])
    one_req = med([r[2] for r in rounds])
    return "\n".join([
        f"## Watch: continuous backup ({datetime.date.today().isoformat()})", "",
        f"A tree of {entries:,} entries (`make_scale_tree`: {entries // 1000} directories of 1,000), watched with "
        f"`--settle {settle:g}`; the first round (a full backup) took {first['seconds']:.1f} s.  Each one-file "
        f"change appends a line to one file, which then needs a pack; {changes} changes, medians.", "",
        "| measure | one-file change (incremental round) | full unchanged rerun (`backup`) | ratio |",
        "|---|---|---|---|",
        f"| gateway requests | {one_req} | {rerun_requests} | |",
        f"| CPU of lafs-backup | {one_cpu:.3f} s | {rerun_cpu:.2f} s | {one_cpu / rerun_cpu:.3f} |",
        f"| wall time | {med([r[1] for r in rounds]):.2f} s (the round) | {rerun_wall:.2f} s (the command) | |",
        "",
        f"Change-to-snapshot latency (the write to the snapshot's record, `--settle {settle:g}` included): "
        f"median {med(lat):.2f} s, min {lat[0]:.2f} s, max {lat[-1]:.2f} s.  Requests of one round: "
        f"{rounds[len(rounds) // 2][4]}.", "",
        f"Idle: {idle_cpu:.3f} s of CPU per minute (measured over {idle:g} s with nothing changing).", ""])


def bench_remote(work: Path) -> str:
    """A backup of a bucket (moto's S3 server on loopback) beside a backup of the same files from a local
    directory, each to its own fresh grid; then an unchanged rerun of each."""
    import json

    import boto3
    import yaml
    from moto.server import ThreadedMotoServer

    tree = work / "tree"
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    local = work / "tree-local-files"
    shutil.rmtree(local, ignore_errors=True)
    for p in files:
        dst = local / p.relative_to(tree)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    size = sum(p.stat().st_size for p in files)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                              region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for p in files:
            client.put_object(Bucket="bench", Key="tree/" + str(p.relative_to(tree)), Body=p.read_bytes())
        conf = work / "s3.yaml"
        conf.write_text(yaml.safe_dump({"source": {"storage_options": {
            "key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}}}))
        out = {}
        for name, src in (("local directory", str(local)), ("S3 bucket (moto)", "s3://bench/tree")):
            home, gdir, _url, env, lb = fresh_grid(work, f"remote-{len(out)}")
            lb += ["-c", str(conf), "--json"]
            try:
                w1, r1, o1 = timed(lb + ["backup", src], env=env)
                w2, r2, o2 = timed(lb + ["backup", src], env=env)
            finally:
                grid_down(gdir, home)
            s1, s2 = json.loads(o1.splitlines()[-1]), json.loads(o2.splitlines()[-1])
            assert s1["files"] == len(files) and s2["bytes_read"] == 0, (s1, s2)
            out[name] = (w1, r1, w2, r2)
    finally:
        server.stop()
    (lw1, lr1, lw2, _), (bw1, br1, bw2, _) = out["local directory"], out["S3 bucket (moto)"]
    mb = size / 1e6
    return "\n".join([
        f"## Sources: a bucket beside a local directory ({datetime.date.today().isoformat()})", "",
        f"The benchmark tree's {len(files):,} regular files ({mb:.1f} MB), once in a local directory and once in "
        "an S3 bucket served by moto on loopback, each backed up to its own fresh grid, one after the other.", "",
        "| source | full backup | throughput | peak RSS | unchanged rerun |", "|---|---|---|---|---|",
        f"| local directory | {lw1:.2f} s | {mb / lw1:.1f} MB/s | {lr1 // 1024} MB | {lw2:.2f} s |",
        f"| S3 bucket (moto) | {bw1:.2f} s | {mb / bw1:.1f} MB/s | {br1 // 1024} MB | {bw2:.2f} s |",
        "", f"Bucket / local: full backup {bw1 / lw1:.2f}x, unchanged rerun {bw2 / lw2:.2f}x (the rerun lists "
        "the bucket and reads no object).  moto is a Python server on the same two cores: a real S3 endpoint "
        "answers listings and ranged reads at its own pace.", ""])


def bench_copy(work: Path) -> str:
    """``copy`` of a backup of the benchmark tree from a 2-of-3 grid to a 3-of-5 grid, beside a full restore of
    the same snapshot from the first grid; then a second copy (nothing new)."""
    import json

    tree = work / "tree"
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    home, ga, url_a, env, lb = fresh_grid(work, "copy-a")
    gb = work / "grid-copy-b"
    shutil.rmtree(gb, ignore_errors=True)
    url_b = grid_up(gb, home, "--nodes", "5", "--needed", "3", "--happy", "5")
    try:
        timed(lb + ["backup", str(tree)], env=env)
        target = work / "copy-restore"
        shutil.rmtree(target, ignore_errors=True)
        wr, rr, _ = timed(lb + ["restore", "latest", "--target", str(target)], env=env)
        wc, rc, out = timed(lb + ["--json", "copy", "--to-url", url_b], env=env)
        summary = json.loads(out.splitlines()[-1])
        w2, _, out2 = timed(lb + ["--json", "copy", "--to-url", url_b], env=env)
        again = json.loads(out2.splitlines()[-1])
    finally:
        grid_down(ga, home)
        grid_down(gb, home)
    mb = size / 1e6
    return "\n".join([
        f"## Copy: a second grid ({datetime.date.today().isoformat()})", "",
        f"A backup of the benchmark tree ({mb:.1f} MB in regular files) on a 2-of-3 grid, copied to a fresh "
        "3-of-5 grid (every cap differs, so every directory is rebuilt), beside a full restore of the same "
        "snapshot from the first grid.  Both grids run on this machine's two cores.", "",
        "| operation | time | throughput | peak RSS |", "|---|---|---|---|",
        f"| full restore from grid 1 | {wr:.2f} s | {mb / wr:.1f} MB/s | {rr // 1024} MB |",
        f"| copy to grid 2 | {wc:.2f} s | {mb / wc:.1f} MB/s | {rc // 1024} MB |",
        f"| second copy (nothing new) | {w2:.2f} s | | |", "",
        f"Copy / restore: {wc / wr:.2f}x.  The copy stored {summary['objects_copied']} objects "
        f"({summary['bytes_copied'] / 1e6:.1f} MB, packs and large files) and made {summary['directories_made']} "
        f"directories; requests on grid 2: {summary['requests_destination']}.  The second copy stored "
        f"{again['objects_copied']} objects and sent {again['requests_destination']} to grid 2.", ""])


def bench_generated(work: Path, n: int) -> str:
    """The standard tree and the scale tree (``n`` entries), lafs-backup beside restic and borg, step by
    step as the real trees are (bench/rivals.py); a RESULTS.md section."""
    sys.path.insert(0, str(HERE))
    from rivals import bench_trees

    standard = work / "generated-standard"
    if not standard.exists():
        subprocess.run([PY, str(MKTREE), str(standard)], check=True, stdout=subprocess.DEVNULL)
    scale = work / f"scale-{n}"  # (bench_scale's: made once, kept between runs)
    make_scale_tree(scale, n)
    trees = {"the standard tree (mktree.py)": standard, f"the scale tree ({n:,} entries, make_scale_tree)": scale}
    return bench_trees(work, timed, lambda name: fresh_grid(work, name), grid_down, trees, "Generated trees",
                       "--only generated", "The trees bench/run.py makes: mktree.py's default tree, and "
                       "make_scale_tree's (directories of 1,000 entries, nine files in ten empty)")


def update_section(title_start: str, text: str) -> None:
    """Replace (or add) the section of RESULTS.md whose heading starts with ``title_start``."""
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    parts = old.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [x for x in sections if not x.startswith("## " + title_start)] + [text.rstrip() + "\n"]
    path.write_text(head.rstrip() + "\n\n" + "\n".join(x.rstrip() + "\n" for x in sections))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--scale", type=int, default=1_000_000)
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-rivals", action="store_true")
    ap.add_argument("--only", metavar="SECTION", choices=["check", "browse", "watch", "remote", "copy", "scale", "real", "generated",
                                                        "derive", "leases", "sealed"],
                    help="measure only this section and update it in RESULTS.md")
    a = ap.parse_args()
    compiled()
    if a.only:
        work = Path(a.work).resolve()
        shutil.rmtree(work / "tree", ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        if a.only == "real":
            sys.path.insert(0, str(HERE))
            from rivals import bench_real

            update_section("Real trees:", bench_real(work, timed, lambda name: fresh_grid(work, name), grid_down))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "generated":
            update_section("Generated trees:", bench_generated(work, a.scale))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "derive":
            sys.path.insert(0, str(HERE))
            from derive import bench_derive

            update_section("Derived files:", bench_derive(work, timed, lambda name: fresh_grid(work, name), grid_down))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "sealed":
            sys.path.insert(0, str(HERE))
            import sealed

            sys.argv = [sys.argv[0], "--work", str(work / "sealed")]
            sealed.main()
            return
        if a.only == "leases":
            sys.path.insert(0, str(HERE))
            from custodian import TITLE, bench_custodian

            update_section(TITLE, bench_custodian(work, timed, lambda name: fresh_grid(work, name), grid_down))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "scale":
            update_section("Scale:", scale_section(bench_scale(work, a.scale)))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "copy":
            subprocess.run([PY, str(MKTREE), str(work / "tree")], check=True, stdout=subprocess.DEVNULL)
            update_section("Copy:", bench_copy(work))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "remote":
            subprocess.run([PY, str(MKTREE), str(work / "tree")], check=True, stdout=subprocess.DEVNULL)
            update_section("Sources:", bench_remote(work))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "watch":
            update_section("Watch:", bench_watch(work))
            print((HERE / "RESULTS.md").read_text())
            return
        if a.only == "browse":
            update_section("Browse:", bench_browse(work))
            print((HERE / "RESULTS.md").read_text())
            return
        subprocess.run([PY, str(MKTREE), str(work / "tree")], check=True, stdout=subprocess.DEVNULL)
        update_section("check:", bench_check(work, work / "tree"))
        print((HERE / "RESULTS.md").read_text())
        return
    work = Path(a.work).resolve()
    for p in work.glob("*"):
        if not p.name.startswith("scale-") or p.name == "scale-home":
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    work.mkdir(parents=True, exist_ok=True)
    base = work / "tree"
    subprocess.run([PY, str(MKTREE), str(base)], check=True, stdout=subprocess.DEVNULL)

    def fresh_copy(name: str) -> Path:
        dst = work / name
        shutil.copytree(base, dst, symlinks=True)
        return dst

    results = {"lafs-backup": bench_lafs(work, fresh_copy("tree-lafs"))}
    print("lafs-backup:", results["lafs-backup"], file=sys.stderr, flush=True)
    if not a.no_rivals:
        results["tahoe backup"] = bench_tahoe_backup(work, fresh_copy("tree-tahoe"))
        print("tahoe backup:", results["tahoe backup"], file=sys.stderr, flush=True)
        results["duplicity"] = bench_duplicity(work, fresh_copy("tree-dup"))
        print("duplicity:", results["duplicity"], file=sys.stderr, flush=True)
    scale = None if a.no_scale else bench_scale(work, a.scale)
    generated = None if a.no_rivals or a.no_scale else bench_generated(work, a.scale)
    kept = None
    if scale is None and (HERE / "RESULTS.md").exists():
        # Keep the last scale run's section (it is long to repeat), saying so.
        old = (HERE / "RESULTS.md").read_text()
        if "\n## Scale" in old:
            kept = "## Scale" + old.split("\n## Scale", 1)[1].split("\n## ", 1)[0]
    write_results(results, scale, kept)
    if generated is not None:
        update_section("Generated trees:", generated)
    print((HERE / "RESULTS.md").read_text())


def write_results(results: dict, scale: dict | None, kept_scale: str | None = None) -> None:
    steps = ["full backup", "unchanged rerun", "after 1% change", "full restore"]
    lines = [f"# Benchmark results ({datetime.date.today().isoformat()})", "",
             "Produced by `python bench/run.py` on this machine (2 cores), all tools in one run, each on",
             "its own copy of the default `mktree.py` tree (2,248 files, 101 directories, 10 symlinks,",
             "107 MB) and its own fresh local grid (3 storage nodes, 2-of-3, happy 3).", "",
             "| tool | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
    for tool, res in results.items():
        lines.append(f"| {tool} | " + " | ".join(
            f"{res[s][0]:.2f} s ({res[s][1] // 1024} MB)" if s in res else "-" for s in steps) + " |")
    lines += ["", "Times are wall clock; peak RSS of the command in parentheses.", ""]
    if "tahoe backup" in results and "duplicity" in results:
        lb, tb, dp = results["lafs-backup"], results["tahoe backup"], results["duplicity"]

        def ratio(b: dict, s: str) -> float:
            return lb[s][0] / b[s][0]

        checks = [
            ("full backup", "duplicity", dp, 0.5), ("full backup", "tahoe backup", tb, 0.1),
            ("unchanged rerun", "tahoe backup", tb, 0.5), ("after 1% change", "tahoe backup", tb, 0.5),
            ("full restore", "duplicity", dp, 0.5), ("full restore", "tahoe backup (tahoe cp -r)", tb, 0.2),
        ]
        lines += ["| target | ratio measured | limit | met |", "|---|---|---|---|"]
        for step, name, other, limit in checks:
            r = ratio(other, step)
            lines.append(f"| {step}: lafs-backup / {name} | {r:.3f} | {limit} | {'yes' if r <= limit else 'NO'} |")
        lines.append("")
    if scale:
        lines += [scale_section(scale)]
    elif kept_scale:
        if "(from an earlier run)" not in kept_scale:
            kept_scale = kept_scale.replace("\n", " (from an earlier run)\n", 1)
        lines += [kept_scale.rstrip(), ""]
    # The sections measured apart (--only ...) and the notes of earlier runs are kept as they are.
    path = HERE / "RESULTS.md"
    kept = []
    if path.exists():
        for sec in path.read_text().split("\n## ")[1:]:
            if not sec.startswith("Scale"):
                kept.append("## " + sec.rstrip() + "\n")
    path.write_text("\n".join(lines).rstrip() + "\n\n" + "\n".join(kept))


if __name__ == "__main__":
    main()
