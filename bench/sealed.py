#!/usr/bin/env python3
"""What a sealed repository costs the host, beside a plain one, side by side on one grid.

usage: python bench/sealed.py [--work DIR] [--rounds N]

Three homes on one fresh local grid (3 storage nodes, 2-of-3): a plain repository (``lafs-backup
init``), a plain one with a custodian (``custodian init``: each backup publishes its lease manifest),
and a sealed one (``init --sealed``, its custodian's inbox included).  Each
backs up its own copy of the standard tree (bench/mktree.py), step by step and interleaved: the first
backup, then ``--rounds`` times an unchanged rerun and the "1% change" of bench/run.py.  A sealed
backup does more after the upload: it walks the new snapshot once (the custodian's manifest and the
window both use the walk), publishes the manifest with the sealed record, and drops from the entry
cache what only older backups reach.  Wall time and peak RSS of each command; the section "Sealed
repositories" of bench/RESULTS.md gets the medians.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
from pathlib import Path

from run import HERE, MKTREE, PY, change_one_percent, env_for, grid_down, grid_up, timed, update_section


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(HERE / "work" / "sealed"))
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = Path(a.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = work / "tree"
    subprocess.run([PY, str(MKTREE), str(base)], check=True, stdout=subprocess.DEVNULL)
    gdir, ghome = work / "grid", work / "grid-home"
    url = grid_up(gdir, ghome)
    furl = (gdir / "introducer" / "private" / "introducer.furl").read_text().strip()
    try:
        modes = {"plain": [], "custodian": [],
                 "sealed": ["--sealed", "--recovery-key", str(work / "recovery.key"), "--custodian-key",
                            str(work / "custodian.key"), "--introducer", furl]}
        times: dict[tuple[str, str], list[tuple[float, int]]] = {}
        trees = {}
        for mode, init in modes.items():
            trees[mode] = work / f"tree-{mode}"
            subprocess.run(["cp", "-a", str(base), str(trees[mode])], check=True)
            timed([PY, "-m", "lafs_backup", "--url", url, "init", *init], env=env_for(work / mode), cwd=str(work))
            if mode == "custodian":
                timed([PY, "-m", "lafs_backup", "--url", url, "custodian", "init", "--key",
                       str(work / "plain-custodian.key"), "--introducer", furl], env=env_for(work / mode))

        def step(name: str) -> None:
            for mode in modes:
                if name == "after 1% change":
                    change_one_percent(trees[mode])
                w, r, _ = timed([PY, "-m", "lafs_backup", "--url", url, "backup", str(trees[mode])],
                                env=env_for(work / mode))
                times.setdefault((mode, name), []).append((w, r))

        step("first backup")
        for _ in range(a.rounds):
            step("unchanged rerun")
            step("after 1% change")
    finally:
        grid_down(gdir, ghome)
    rows = []
    for name in ("first backup", "unchanged rerun", "after 1% change"):
        med = {m: statistics.median(w for w, _ in times[(m, name)]) for m in modes}
        rss = max(r for _, r in times[("sealed", name)]) // 1024
        rows.append(f"| {name} | {med['plain']:.2f} s | {med['custodian']:.2f} s | {med['sealed']:.2f} s ({rss} MB) "
                    f"| {med['sealed'] / med['plain']:.2f} | {med['sealed'] / med['custodian']:.2f} |")
    text = "\n".join([
        f"## Sealed repositories: the host's cost ({datetime.date.today().isoformat()})",
        "",
        "`python bench/sealed.py` (or `python bench/run.py --only sealed`).  One fresh local grid (3 storage nodes, "
        "2-of-3); three homes, a plain repository, a plain one with a custodian, and a sealed one (with its "
        "custodian's inbox), each backing up its own copy of the standard tree, interleaved: the first backup, then "
        f"{a.rounds} rounds of an unchanged rerun and the 1% change; medians (peak RSS of the sealed runs).  A sealed "
        "backup also walks its new snapshot once, publishes its manifest with the sealed record into the inbox, "
        "and drops from the entry cache what only older backups reach.",
        "",
        "| step | plain | plain, custodian | sealed | sealed / plain | sealed / plain with custodian |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    update_section("Sealed repositories", text)
    print(text)


if __name__ == "__main__":
    main()
