"""Check what `python -m build` made: the wheel holds every module and data file under
lafs_backup/ (the files git would commit there), and the sdist holds them too.

Usage: python .ci/check_dist.py DIST_DIR SOURCE_ROOT"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def package_files(root: Path) -> set[str]:
    """The files git would commit under lafs_backup/; in a copy without .git (as .ci/run makes,
    holding exactly those files), every file there but bytecode caches."""
    if (root / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "lafs_backup"],
            cwd=root, check=True, capture_output=True).stdout
        names = {n.decode() for n in out.split(b"\0") if n}
    else:
        names = {str(p.relative_to(root)) for p in (root / "lafs_backup").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    return {n for n in names if (root / n).is_file()}


def main(dist: Path, root: Path) -> int:
    wanted = package_files(root)
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"check_dist: expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    with zipfile.ZipFile(wheels[0]) as z:
        in_wheel = {n for n in z.namelist() if n.startswith("lafs_backup/")}
    with tarfile.open(sdists[0]) as t:
        top = t.getnames()[0].split("/")[0]
        in_sdist = {n[len(top) + 1:] for n in t.getnames() if n.startswith(f"{top}/lafs_backup/")}
    problems = 0
    for what, have in (("wheel", in_wheel), ("sdist", in_sdist)):
        missing = sorted(wanted - have)
        for name in missing:
            print(f"check_dist: {what} {wheels[0].name if what == 'wheel' else sdists[0].name} lacks {name}")
        problems += len(missing)
    modules = sum(1 for n in wanted if n.endswith(".py"))
    data = len(wanted) - modules
    wheel_modules = sum(1 for n in in_wheel if n.endswith(".py"))
    print(f"check_dist: source lafs_backup/ has {modules} modules and {data} data files; wheel "
          f"{wheels[0].name} ({wheels[0].stat().st_size} bytes) has {wheel_modules} modules and "
          f"{len(in_wheel) - wheel_modules} data files; {'OK' if not problems else f'{problems} missing'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
