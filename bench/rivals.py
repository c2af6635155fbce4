"""Real trees, lafs-backup beside restic and borg: step by step, interleaved, with the grid's own limit.

Imported by bench/run.py (``--only real``).  The trees are copies, with their metadata, of files
that are on this machine anyway: Debian's documentation, man pages and headers, a Python
environment's site-packages, and tahoe-lafs's unpacked source release (fetched with pip).  Each
step runs for lafs-backup, then restic, then borg, so the machine's load falls on all three alike.
restic and borg (Debian's packages) are installed when missing, and left out with a message where
they cannot be.  The grid's limit is one ``tahoe put`` and one ``tahoe get`` of the tree as one
lz4-compressed tar, through the same gateway.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

PY = sys.executable
PASSWORD = "bench-only-password"


def ensure_debian(*tools: tuple[str, str]) -> set[str]:
    """Install each (command, Debian package) that is missing; return the commands that are there."""
    missing = [pkg for cmd, pkg in tools if shutil.which(cmd) is None]
    if missing:
        r = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True)
    have = {cmd for cmd, _ in tools if shutil.which(cmd) is not None}
    for cmd, pkg in tools:
        if cmd not in have:
            print(f"bench: {cmd} is not installed and could not be (apt-get install {pkg}): left out",
                  file=sys.stderr)
    return have


def copy_tree(sources: list[Path], dest: Path) -> Path:
    """``sources`` copied below ``dest`` with their metadata (cp -a), each under its own name."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for src in sources:
        subprocess.run(["cp", "-a", str(src), str(dest / src.name)], check=True)
    return dest


def tahoe_sdist(work: Path) -> Path:
    """tahoe-lafs's source release, unpacked (fetched once with pip)."""
    out = work / "tahoe-sdist"
    if out.exists():
        return out
    dl = work / "tahoe-dl"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run([PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "tahoe-lafs==1.20.0",
                    "-d", str(dl)], check=True, capture_output=True)
    (archive,) = list(dl.glob("tahoe*lafs-*.tar.gz"))
    with tarfile.open(archive) as t:
        t.extractall(out, filter="tar")
    return out


def real_trees(work: Path) -> dict[str, Path]:
    """The trees to measure: name -> a fresh base copy (each tool gets its own copy of it)."""
    import site

    trees = {}
    docs = [p for p in (Path("/usr/share/doc"), Path("/usr/share/man"), Path("/usr/include")) if p.is_dir()]
    if docs:
        trees["debian docs, man pages, headers"] = copy_tree(docs, work / "base-docs")
    pkgs = [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    if pkgs:
        trees["python site-packages"] = copy_tree(pkgs[:1], work / "base-site")
    try:
        trees["tahoe-lafs 1.20.0 sdist"] = copy_tree([tahoe_sdist(work)], work / "base-sdist")
    except (subprocess.CalledProcessError, ValueError) as e:
        print(f"bench: tahoe-lafs's sdist could not be fetched ({e}): left out", file=sys.stderr)
    return trees


def count(tree: Path) -> tuple[int, int, int, int]:
    """(entries, directories, symlinks, bytes of regular files)."""
    entries = dirs = links = size = 0
    for root, dnames, fnames in os.walk(tree):
        for n in dnames + fnames:
            p = os.path.join(root, n)
            entries += 1
            st = os.lstat(p)
            if os.path.islink(p):
                links += 1
            elif n in dnames:
                dirs += 1
            else:
                size += st.st_size
    return entries, dirs, links, size


def scatter_change(tree: Path, share: float = 0.01, seed: int = 7) -> int:
    """Append a line to ``share`` of the regular files, picked at random across the tree."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and os.access(p, os.W_OK))
    picked = random.Random(seed).sample(files, max(1, int(len(files) * share)))
    for p in picked:
        with open(p, "ab") as f:
            f.write(b"\none more line for the scattered change\n")
    return len(picked)


class Tool:
    """One backup tool's steps on one tree."""

    name = ""

    def __init__(self, work: Path, timed: Callable[..., tuple[float, int, str]]) -> None:
        self.work = work
        self.timed = timed

    def setup(self) -> None: ...

    def backup(self, tree: Path) -> tuple[float, int]: ...

    def restore(self, out: Path) -> tuple[float, int]: ...

    def listing(self) -> tuple[float, int]: ...

    def find(self, name: str) -> tuple[float, int]: ...

    def teardown(self) -> None: ...


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(self.work / "restic-repo"),
                "RESTIC_CACHE_DIR": str(self.work / "restic-cache")}

    def setup(self) -> None:
        shutil.rmtree(self.work / "restic-repo", ignore_errors=True)
        shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
        self.timed(["restic", "init"], env=self.env())

    def backup(self, tree: Path) -> tuple[float, int]:
        w, r, _ = self.timed(["restic", "backup", "-q", str(tree)], env=self.env())
        return w, r

    def restore(self, out: Path) -> tuple[float, int]:
        w, r, _ = self.timed(["restic", "restore", "latest", "--target", str(out)], env=self.env())
        return w, r

    def listing(self) -> tuple[float, int]:
        w, r, _ = self.timed(["restic", "ls", "latest"], env=self.env())
        return w, r

    def find(self, name: str) -> tuple[float, int]:
        w, r, _ = self.timed(["restic", "find", name], env=self.env())
        return w, r


class Borg(Tool):
    name = "borg"
    n = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "BORG_PASSPHRASE": PASSWORD, "BORG_REPO": str(self.work / "borg-repo"),
                "BORG_BASE_DIR": str(self.work / "borg-base"), "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def setup(self) -> None:
        shutil.rmtree(self.work / "borg-repo", ignore_errors=True)
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        self.timed(["borg", "init", "-e", "repokey"], env=self.env())

    def backup(self, tree: Path) -> tuple[float, int]:
        self.n += 1
        w, r, _ = self.timed(["borg", "create", f"::a{self.n}", str(tree)], env=self.env())
        return w, r

    def restore(self, out: Path) -> tuple[float, int]:
        out.mkdir(parents=True, exist_ok=True)
        w, r, _ = self.timed(["borg", "extract", f"::a{self.n}"], env=self.env(), cwd=str(out))
        return w, r

    def listing(self) -> tuple[float, int]:
        w, r, _ = self.timed(["borg", "list", f"::a{self.n}"], env=self.env())
        return w, r

    def find(self, name: str) -> tuple[float, int]:
        w, r, _ = self.timed(["borg", "list", f"::a{self.n}", f"sh:**/{name}"], env=self.env())
        return w, r


class Lafs(Tool):
    name = "lafs-backup"

    def __init__(self, work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple]) -> None:
        super().__init__(work, timed)
        self._grid = grid

    def setup(self) -> None:
        self.home, self.gdir, self.url, self.env, self.lb = self._grid("real-lafs")

    def backup(self, tree: Path) -> tuple[float, int]:
        w, r, _ = self.timed(self.lb + ["backup", str(tree)], env=self.env)
        return w, r

    def queue_only(self, tree: Path) -> tuple[float, int]:
        w, r, _ = self.timed(self.lb + ["backup", str(tree), "--queue-only", str(self.work / "real.queue")],
                             env=self.env)
        return w, r

    def restore(self, out: Path) -> tuple[float, int]:
        w, r, _ = self.timed(self.lb + ["restore", "latest", "--target", str(out)], env=self.env)
        return w, r

    def listing(self) -> tuple[float, int]:
        w, r, _ = self.timed(self.lb + ["ls", "-R", "latest"], env=self.env)
        return w, r

    def find(self, name: str) -> tuple[float, int]:
        w, r, _ = self.timed(self.lb + ["find", name], env=self.env)
        return w, r

    def grid_limit(self, tree: Path) -> tuple[float, float, int]:
        """(put seconds, get seconds, bytes) of the tree as one lz4-compressed tar, through the gateway."""
        tarball = self.work / "real.tar.lz4"
        subprocess.run(f"tar -C {tree.parent} -cf - {tree.name} | lz4 -1 -q -z - {tarball}", shell=True, check=True)
        tahoe = [PY, "-m", "allmydata", "-d", str(self.gdir / "gateway")]
        put_s, _, cap = self.timed(tahoe + ["put", str(tarball)], env=self.env)
        back = self.work / "real.back"
        get_s, _, _ = self.timed(tahoe + ["get", cap.strip(), str(back)], env=self.env)
        size = tarball.stat().st_size
        tarball.unlink()
        back.unlink()
        return put_s, get_s, size


class LafsTahoeTree(Lafs):
    """lafs-backup with ``destination.tree: tahoe`` (a Tahoe directory per source directory), on a
    grid of its own: the first backup only, beside the default's, for the README's trade-off."""

    name = "lafs-backup, tree: tahoe"

    def setup(self) -> None:
        self.home, self.gdir, self.url, self.env, self.lb = self._grid("real-lafs-tahoe")
        self.lb = self.lb + ["-o", "destination.tree=tahoe"]


STEPS = ["first backup", "unchanged rerun", "after a scattered 1% change", "full restore", "recursive listing",
         "find one name"]


def bench_real(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
               grid_down: Callable[[Path, Path], None]) -> str:
    """Every real tree, every step, lafs-backup beside restic and borg; a RESULTS.md section."""
    return bench_trees(work, timed, grid, grid_down, real_trees(work), "Real trees", "--only real",
                       "Each tree is a copy (cp -a) of files already on this machine")


def bench_trees(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
                grid_down: Callable[[Path, Path], None], trees: dict[str, Path], title: str, how: str,
                what: str) -> str:
    """Every tree of ``trees`` (label: a base copy), every step, lafs-backup beside restic and borg; a
    RESULTS.md section titled ``title`` (``how``: the command that makes it; ``what``: the trees)."""
    import datetime

    have = ensure_debian(("restic", "restic"), ("borg", "borgbackup"), ("lz4", "lz4"), ("/usr/bin/time", "time"))
    lines = [f"## {title}: lafs-backup beside restic and borg ({datetime.date.today().isoformat()})", "",
             f"`python bench/run.py {how}`.  {what}; "
             "each tool backs up its own copy, step by step and interleaved (lafs-backup, restic, borg), "
             "lafs-backup on a fresh local grid (3 storage nodes, 2-of-3), restic and borg into local "
             "repositories (encrypted, as they always are or as `borg init -e repokey` makes them).  "
             "The scattered change appends a line to 1% of the regular files, chosen at random.  Peak RSS of "
             "each command in parentheses.  The grid's limit: one `tahoe put` (and `get`) of the tree's "
             "lz4-compressed tar through the same gateway; phase one: `backup --queue-only`.", ""]
    for label, base in trees.items():
        # (a Tahoe directory per source directory: measured where a first backup takes seconds, not minutes)
        lines += _one_tree(work, timed, grid, grid_down, have, label, base, with_tahoe_tree=count(base)[0] < 200_000)
    return "\n".join(lines)


def _one_tree(work: Path, timed: Callable[..., tuple[float, int, str]], grid: Callable[[str], tuple],
              grid_down: Callable[[Path, Path], None], have: set[str], label: str, base: Path,
              with_tahoe_tree: bool = True) -> list[str]:
    """One tree's table and notes (``with_tahoe_tree``: also the first backup with ``destination.tree:
    tahoe``, for the README's trade-off)."""
    entries, dirs, links, size = count(base)
    tools: list[Tool] = [Lafs(work, timed, grid)]
    tools += [t(work, timed) for t, cmd in ((Restic, "restic"), (Borg, "borg")) if cmd in have]
    results: dict[str, dict[str, tuple[float, int]]] = {t.name: {} for t in tools}
    copies = {}
    for t in tools:
        copies[t.name] = copy_tree([base], work / f"tree-{t.name}") / base.name
        t.setup()
    lafs = tools[0]
    assert isinstance(lafs, Lafs)
    phase_one = lafs.queue_only(copies[lafs.name])
    limit = lafs.grid_limit(copies[lafs.name]) if "lz4" in have else None
    # The same first backup with a Tahoe directory per source directory, on a fresh grid of its own,
    # right after the default's.
    tahoe_tree = LafsTahoeTree(work, timed, grid) if with_tahoe_tree else None
    if tahoe_tree is not None:
        tahoe_tree.setup()
        tahoe_copy = copy_tree([base], work / "tree-lafs-tahoe") / base.name
    first_tahoe = None
    changed = 0
    for step in STEPS:
        if step == "after a scattered 1% change":
            for t in tools:
                changed = scatter_change(copies[t.name])
        for t in tools:
            tree = copies[t.name]
            if step in ("first backup", "unchanged rerun", "after a scattered 1% change"):
                results[t.name][step] = t.backup(tree)
                if step == "first backup" and t is lafs and tahoe_tree is not None:
                    first_tahoe = tahoe_tree.backup(tahoe_copy)
                    shutil.rmtree(work / "tree-lafs-tahoe", ignore_errors=True)
            elif step == "full restore":
                out = work / f"restore-{t.name}"
                shutil.rmtree(out, ignore_errors=True)
                results[t.name][step] = t.restore(out)
                shutil.rmtree(out, ignore_errors=True)
            elif step == "recursive listing":
                results[t.name][step] = t.listing()
            else:
                results[t.name][step] = t.find("Makefile")
    try:
        grid_down(lafs.gdir, lafs.home)
        if tahoe_tree is not None:
            grid_down(tahoe_tree.gdir, tahoe_tree.home)
    finally:
        for t in tools:
            shutil.rmtree(work / f"tree-{t.name}", ignore_errors=True)
        shutil.rmtree(work / "tree-lafs-tahoe", ignore_errors=True)
    lines = [f"### {label}: {entries:,} entries, {dirs:,} directories, {links:,} symlinks, "
             f"{size / 2**20:.0f} MiB", ""]
    names = [t.name for t in tools]
    lines += ["| step | " + " | ".join(names) + " | lafs-backup / the faster rival |",
              "|---|" + "---|" * (len(names) + 1)]
    for step in STEPS:
        row = [f"{results[n][step][0]:.2f} s ({results[n][step][1] // 1024} MB)" for n in names]
        rivals = [results[n][step][0] for n in names[1:]]
        ratio = f"{results[names[0]][step][0] / min(rivals):.2f}" if rivals else "-"
        lines.append(f"| {step} | " + " | ".join(row) + f" | {ratio} |")
    lines.append("")
    first = results[names[0]]["first backup"][0]
    note = (f"Phase one alone: {phase_one[0]:.2f} s ({phase_one[1] // 1024} MB).  The scattered "
            f"change touched {changed:,} files.")
    if first_tahoe is not None:
        note += (f"  The first backup with `destination.tree: tahoe` (a Tahoe directory per source directory, on "
                 f"a fresh grid of its own): {first_tahoe[0]:.2f} s ({first_tahoe[1] // 1024} MB), "
                 f"{first_tahoe[0] / first:.2f}x the default's.")
    lines.append(note)
    if limit is not None:
        put_s, get_s, tar_size = limit
        goal = 1.5 * (put_s + phase_one[0])
        lines.append(f"The grid's limit: `tahoe put` of the {tar_size / 2**20:.0f} MiB lz4 tar {put_s:.2f} s, "
                     f"`tahoe get` {get_s:.2f} s.  First backup against 1.5 x (put + phase one) = "
                     f"{goal:.2f} s: {first / goal:.2f}x; full restore against the get: "
                     f"{results[names[0]]['full restore'][0] / get_s:.2f}x.")
    lines.append("")
    return lines
