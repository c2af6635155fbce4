#!/usr/bin/env python3
"""The benchmark and test tree: a deterministic directory tree shaped like a user's documents.

usage: python bench/mktree.py DEST [--small N] [--medium N] [--large N] [--seed S]

With the defaults (2,000 small, 40 medium, 3 large) it holds about 2,250 files in
about 100 directories nested up to five deep, 10 symlinks, ~107 MB:

- small files of 64 B to 16 KiB of word-like text (they compress, and they are packed);
- medium files of 128 KiB to 1 MiB, every other one random (incompressible);
- large random files of 16 MiB, and one 8 MiB text log at the top;
- about a tenth of all files repeated under another name elsewhere (for dedup);
- relative symlinks to some of the files.

The same arguments always give byte-identical contents, names and layout.
Tests import :func:`build`; the benchmark runs it as a script.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

_VOCABULARY = (
    "archive backup bucket cache checksum chunk client convergence dedup delta directory "
    "encode erasure file filter gateway generation grid hash index introducer key lease "
    "manifest metadata mutable node object pack queue restore retention server share "
    "snapshot storage tahoe tree upload verify window").split()


def _prose(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of lines of words: compressible like real text."""
    parts: list[str] = []
    total = 0
    while total < size:
        words = rng.choices(_VOCABULARY, k=rng.randint(3, 15))
        line = " ".join(words).capitalize() + ".\n"
        parts.append(line)
        total += len(line)
    return "".join(parts).encode("ascii")[:size]


def _directories(rng: random.Random, count: int) -> list[str]:
    """``count`` relative directory paths ('' is the root), none deeper than five levels."""
    dirs = [""]
    for i in range(count):
        parent = rng.choice(dirs)
        if parent.count("/") >= 4:  # would be a sixth level: start again at the top
            parent = ""
        dirs.append(f"{parent}/d{i:04d}" if parent else f"d{i:04d}")
    return dirs


def build(dest: str | os.PathLike[str], small: int = 2000, medium: int = 40, large: int = 3,
          seed: int = 1) -> Path:
    """Create the tree under ``dest`` (made if missing); return it as a Path."""
    rng = random.Random(seed)
    root = Path(dest)
    dirs = _directories(rng, max(1, small // 20))
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def write(rel: str, data: bytes) -> None:
        (root / rel).write_bytes(data)
        files.append(rel)

    def place(name: str) -> str:
        d = rng.choice(dirs)
        return f"{d}/{name}" if d else name

    for i in range(small):
        write(place(f"f{i:05d}.txt"), _prose(rng, rng.randint(64, 16 << 10)))
    for i in range(medium):
        size = rng.randint(128 << 10, 1 << 20)
        write(place(f"m{i:03d}.bin"), rng.randbytes(size) if i % 2 else _prose(rng, size))
    for i in range(large):
        write(place(f"L{i}.img"), rng.randbytes(16 << 20))
    write("var.log", _prose(rng, 8 << 20))
    originals = list(files)
    for i in range(len(originals) // 10):
        src = rng.choice(originals)
        copy = place(f"dup{i:04d}{os.path.splitext(src)[1]}")
        (root / copy).write_bytes((root / src).read_bytes())
    for i in range(10):
        d = rng.choice(dirs)
        target = rng.choice(originals)
        link = root / d / f"link{i}"
        link.symlink_to(os.path.relpath(root / target, root / d))
    os.utime(root)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--medium", type=int, default=40)
    ap.add_argument("--large", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    build(a.dest, a.small, a.medium, a.large, a.seed)


if __name__ == "__main__":
    main()
