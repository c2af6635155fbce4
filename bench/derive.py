"""Derived files on real Python environments: a backup with the shipped rules beside one without.

Imported by bench/run.py (``--only derive``).  The trees are the site-packages of the Python that runs
the benchmark (the test environment, which pip filled) and, where there is one, Debian's
/usr/lib/python3/dist-packages (compiled by Debian's py3compile when its packages were installed),
each backed up where it is: a pyc names its source by the path it was compiled at, so a copy
elsewhere would keep its pycs as bytes (docs/derived.md says so).  Each side gets a fresh home and a
fresh local grid (3 storage nodes, 2-of-3), and runs: the first backup, an unchanged rerun, and a full
restore, which the side with rules checks file by file against the tree.  Nothing in the tree is
written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import shutil
import sysconfig
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "config" / "derive-examples.yaml"


def _summary(out: str) -> dict:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{") and '"summary"' in x][-1]


def _tree_digest(root: Path) -> dict[str, str]:
    """Path -> SHA-256 of every regular file below ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                h = hashlib.sha256()
                with open(p, "rb") as f:  # (in chunks: the commands this process starts next inherit its size)
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[str(p.relative_to(root))] = h.hexdigest()
    return out


def bench_derive(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
                 grid_down: Callable[[Path, Path], None]) -> str:
    trees = [("the test environment's site-packages", Path(sysconfig.get_paths()["purelib"]))]
    debian = Path("/usr/lib/python3/dist-packages")
    if any(debian.rglob("*.pyc")):
        trees.append(("Debian's dist-packages", debian))
    lines = [f"## Derived files: Python environments ({datetime.date.today().isoformat()})", "",
             "`python bench/run.py --only derive`.  Each tree is backed up in place, once without derive rules "
             "and once with the shipped examples (`config/derive-examples.yaml`: pycs and gzip), each on a "
             "fresh local grid (3 storage nodes, 2-of-3), on this 2-core machine.  Stored: the contents and "
             "index the first backup added, after compression.  Peak RSS in parentheses.", ""]
    done: list[Path] = []
    for label, tree in trees:
        lines += _one_tree(work, timed, grid, grid_down, label, tree, done)
    for target in done:
        shutil.rmtree(target, ignore_errors=True)
    return "\n".join(lines)


def _one_tree(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
              grid_down: Callable[[Path, Path], None], label: str, tree: Path, done: list[Path]) -> list[str]:
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    size = sum(p.stat().st_size for p in files)
    pycs = [p for p in files if p.suffix == ".pyc"]
    pyc_size = sum(p.stat().st_size for p in pycs)
    for p in files:  # (the page cache warm for both sides alike)
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass
    results: dict[str, dict[str, object]] = {}
    for side in ("without rules", "with rules"):
        home, gdir, url, env, lb = grid(f"derive-{'with' if side == 'with rules' else 'without'}-{tree.name}")
        conf = ["-c", str(EXAMPLES)] if side == "with rules" else []
        r: dict[str, object] = {}
        try:
            w, rss, out = timed(lb + conf + ["--json", "backup", str(tree)], env=env)
            s = _summary(out)
            r.update(first=(w, rss), added=s["bytes_added"], derived=s.get("derived", 0),
                     derived_bytes=s.get("bytes_derived", 0), not_derived=s.get("derived_not", {}))
            w, rss, _ = timed(lb + conf + ["--json", "backup", str(tree)], env=env)
            r["rerun"] = (w, rss)
            target = work / f"derive-restore-{'with' if conf else 'without'}-{tree.name}-{os.getpid()}"
            shutil.rmtree(target, ignore_errors=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            w, rss, _ = timed(lb + conf + ["restore", "latest", "--target", str(target)], env=env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            r["restore"] = (w, rss)
            # (the restore's CPU, the programs it ran included: they are its children, and it waits for them)
            r["restore_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            if conf:
                want, got = _tree_digest(tree), _tree_digest(target)
                r["identical"] = want == got
                r["differing"] = sorted(k for k in want if got.get(k) != want[k])[:5]
            # (Removed only at the end: a file system that just deleted thousands of files makes the
            # next thousands slowly, which would be the next restore's cost, not its own.)
            done.append(target)
        finally:
            grid_down(gdir, home)
        results[side] = r
    a, b = results["without rules"], results["with rules"]

    def t(r: dict, k: str) -> str:
        w, rss = r[k]
        return f"{w:.1f} s ({rss // 1024} MB)"

    def ratio(k: str) -> float:
        return b[k][0] / a[k][0]

    fewer = 1 - b["added"] / a["added"]
    return [
        f"### {label}: {tree} ({len(files)} files, {size / 1e6:.0f} MB; {len(pycs)} pycs, {pyc_size / 1e6:.0f} MB)",
        "",
        "| | without rules | with rules | with / without |", "|---|---|---|---|",
        f"| bytes stored | {a['added'] / 1e6:.1f} MB | {b['added'] / 1e6:.1f} MB | {1 - fewer:.2f} "
        f"({fewer:.0%} fewer) |",
        f"| first backup | {t(a, 'first')} | {t(b, 'first')} | {ratio('first'):.2f}x |",
        f"| unchanged rerun | {t(a, 'rerun')} | {t(b, 'rerun')} | {ratio('rerun'):.2f}x |",
        f"| full restore | {t(a, 'restore')} | {t(b, 'restore')} | {ratio('restore'):.2f}x |",
        f"| its CPU (user + system, with the programs it ran) | {a['restore_cpu']:.1f} s | {b['restore_cpu']:.1f} s "
        f"| {b['restore_cpu'] / a['restore_cpu']:.2f}x |", "",
        f"With rules, {b['derived']} files ({b['derived_bytes'] / 1e6:.1f} MB) were stored as recipes; "
        f"{sum(b['not_derived'].values())} matched a rule but were stored as bytes: "
        + (", ".join(f"{n} {why}" for why, n in sorted(b["not_derived"].items(), key=lambda kv: -kv[1])) or "none")
        + ".  The restore with rules remade them all and was "
        + ("identical to the tree, file by file (SHA-256)." if b.get("identical")
           else f"NOT identical to the tree: {b.get('differing')}"), ""]
