"""Shared fixtures: a real local Tahoe-LAFS grid for the session, and a CLI runner with isolated state."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import mktree  # noqa: E402  (the project's own tree generator, shared with the benchmark)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Grid:
    dir: Path
    url: str
    _read: int = 0  # bytes of the gateway log counted so far (whole lines)
    _counts: dict[str, int] = field(default_factory=lambda: {"put": 0, "mkdir": 0})

    @property
    def gateway_log(self) -> Path:
        return self.dir / "gateway" / "lafs-backup-node.log"

    def requests(self) -> dict[str, int]:
        """Upload and mkdir requests the gateway has served so far, counted from its own log
        (read on from where the last call stopped: cheap enough to poll)."""
        with open(self.gateway_log, "rb") as f:
            f.seek(self._read)
            chunk = f.read()
        chunk = chunk[:chunk.rfind(b"\n") + 1]
        self._read += len(chunk)
        self._counts["put"] += len(re.findall(rb"web: \S+ PUT /uri ", chunk))
        self._counts["mkdir"] += len(re.findall(rb"web: \S+ POST /uri\?t=mkdir-immutable ", chunk))
        return dict(self._counts)


def json_lines(text: str) -> list:
    """The JSON lines of a command's output (``list --json``, ``ls --json``...), one value each."""
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(home / "state")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args: list[str], home: Path, timeout: float = 300, check: bool = False,
            input: str | None = None, env: dict[str, str] | None = None) -> Result:
    p = subprocess.run([sys.executable, "-m", "lafs_backup", *args], env={**cli_env(home), **(env or {})},
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
def local_grid(home: Path, nodes: int = 3, needed: int = 2, happy: int = 3):
    """Start a grid in ``home``; always stop it again, even when starting failed half way."""
    gdir = home / "grid"
    try:
        r = run_cli(["grid", "up", "--dir", str(gdir), "--nodes", str(nodes), "--needed", str(needed),
                     "--happy", str(happy)], home, timeout=180)
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


def make_tree(dest: Path, small: int = 300, medium: int = 5, large: int = 1, seed: int = 1) -> Path:
    """The benchmark tree's shape at a smaller size (bench/mktree.py), deterministic by ``seed``."""
    return mktree.build(dest, small=small, medium=medium, large=large, seed=seed)


def cache_backups(db_path: Path) -> int:
    """Open an entry cache read-only, as another process would: sqlite's integrity check passes and
    every stored row names a cap (never a placeholder).  Returns the number of backups recorded."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT COUNT(*) FROM objects WHERE cap NOT LIKE 'URI:%'").fetchone()[0] == 0
        return db.execute("SELECT COUNT(*) FROM backups").fetchone()[0]
    finally:
        db.close()


def restored_ok(url: str, home: Path, src: Path, dest: Path, ref: str = "latest") -> None:
    """Restore ``ref`` into ``dest``: identical to ``src`` in bytes and metadata."""
    from treecompare import differences

    run_cli(["--url", url, "restore", ref, "--target", str(dest)], home, check=True)
    assert differences(src, dest) == []


def check_ok(url: str, home: Path) -> None:
    """Every recorded backup checks clean (the grid's happiness learned from the gateway)."""
    r = run_cli(["--url", url, "check"], home)
    assert r.code == 0, r.err + r.out


def restamp(url: str, home: Path, stamps: dict[int, float]) -> None:
    """Give backups other times (generation -> UTC timestamp), where they are recorded: the
    repository's records (their link metadata) and the entry cache (as a test of retention or of
    leases needs backups made long ago)."""
    import json
    import urllib.request

    from lafs_backup.repository import RepoKey

    def listing(cap: str) -> dict:
        with urllib.request.urlopen(f"{url}uri/{cap}?t=json") as r:
            return json.load(r)[1]["children"]

    (keyfile,) = (home / "state" / "lafs-backup" / "repositories").glob("*.key")
    root = RepoKey.decode(keyfile.read_text()).writecap
    writers = listing(root)["writers"][1]["rw_uri"]
    for _, (_, winfo) in listing(writers).items():
        wcap = winfo["rw_uri"]
        for name, (_, info) in listing(wcap).items():
            meta = info["metadata"]
            if meta.get("generation") in stamps:
                meta = {**meta, "time": stamps[meta["generation"]]}
                meta.pop("tahoe", None)
                body = json.dumps({name: ["dirnode", {"ro_uri": info["ro_uri"], "metadata": meta}]}).encode()
                req = urllib.request.Request(f"{url}uri/{wcap}?t=set_children", data=body, method="POST")
                urllib.request.urlopen(req).read()
    (db_path,) = [p for p in (home / "state" / "lafs-backup").glob("entry-cache.*.sqlite")]
    db = sqlite3.connect(db_path)
    for gen, ts in stamps.items():
        db.execute("UPDATE backups SET ts=? WHERE generation=?", (ts, gen))
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def s3():
    """A real S3 API on loopback (moto's server, in this process): a boto3 client and the
    storage options that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _host, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        yield client, {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                                   "region_name": "us-east-1"}}
    finally:
        server.stop()
