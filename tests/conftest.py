"""Shared fixtures: a real local Tahoe-LAFS grid for the session, and a CLI runner with isolated state."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The project's shared files sit beside the checkout (as CI lays them out);
# LAFS_BACKUP_SHARED points elsewhere.
SHARED = Path(os.environ.get("LAFS_BACKUP_SHARED", ROOT.parent / "shared"))
MKTREE = SHARED / "bench" / "mktree.py"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Grid:
    dir: Path
    url: str

    @property
    def gateway_log(self) -> Path:
        return self.dir / "gateway" / "lafs-backup-node.log"

    def requests(self) -> dict[str, int]:
        """Upload and mkdir requests the gateway has served so far, counted from its own log."""
        text = self.gateway_log.read_text(errors="replace")
        return {
            "put": len(re.findall(r"web: \S+ PUT /uri ", text)),
            "mkdir": len(re.findall(r"web: \S+ POST /uri\?t=mkdir-immutable ", text)),
        }


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(home / "state")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args: list[str], home: Path, timeout: float = 300, check: bool = False,
            input: str | None = None) -> Result:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *args], env=cli_env(home),
                       capture_output=True, text=True, timeout=timeout, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL)
    r = Result(p.returncode, p.stdout, p.stderr)
    if check and p.returncode != 0:
        raise AssertionError(f"lafs-backup {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return r


@pytest.fixture(scope="session")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    """One real local grid (3 storage nodes, 2-of-3, happy 3) for the whole session."""
    home = tmp_path_factory.mktemp("gridhome")
    with local_grid(home) as g:
        yield g


@contextlib.contextmanager
def local_grid(home: Path):
    """Start a grid in ``home``; always stop it again, even when starting failed half way."""
    gdir = home / "grid"
    try:
        r = run_cli(["grid", "up", "--dir", str(gdir)], home, timeout=180)
        assert r.code == 0, r.err
        url = r.out.strip()
        assert url.startswith("http://127.0.0.1:")
        yield Grid(gdir, url)
    finally:
        run_cli(["grid", "down", "--dir", str(gdir)], home, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private state/data home for one test (its own entry cache and queues)."""
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def lb(grid: Grid, home: Path):
    """Run lafs-backup against the session grid with this test's private state."""
    def run(*args: str, check: bool = False, timeout: float = 300) -> Result:
        return run_cli(["--url", grid.url, *args], home, timeout=timeout, check=check)
    return run


def make_tree(dest: Path, small: int = 300, medium: int = 5, large: int = 1) -> Path:
    if not MKTREE.exists():
        pytest.fail(f"{MKTREE} is missing: the tests build their trees with the shared mktree.py; "
                    "clone beside shared/ or set LAFS_BACKUP_SHARED")
    subprocess.run([sys.executable, str(MKTREE), str(dest), "--small", str(small), "--medium",
                    str(medium), "--large", str(large)], check=True)
    return dest
