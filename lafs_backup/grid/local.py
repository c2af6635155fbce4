"""The embedded local grid: create, start, inspect and stop a real Tahoe-LAFS grid on this machine.

One introducer, N storage nodes and a gateway live under one directory,
described by ``grid.json``; by default they listen on 127.0.0.1 only, or
(``listen``) on every interface, reachable at that host name, so that other
machines can join.  The same machinery runs the nodes of a machine that
*joins* a grid made elsewhere (``join``: its introducer's FURL): a gateway,
or a storage node.  Nodes run as detached ``tahoe run`` processes; the pid
and kernel start time of each are recorded, so ``down`` stops exactly the
processes this grid started and nothing that reused a pid.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..errors import GridError, UsageError
from ..system.paths import replacing

log = logging.getLogger(__name__)

STATE = "grid.json"


@dataclass(frozen=True)
class GridSpec:
    dir: str
    nodes: int = 3
    needed: int = 2
    happy: int = 3
    #: Host name other machines reach this grid at (None: loopback only).
    listen: str | None = None
    #: Join the grid whose introducer this is, instead of making one.
    join: str | None = None
    #: When joining: run a storage node (else a gateway).
    storage: bool = False


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _free_port() -> int:
    """A free port on 127.0.0.1 outside the kernel's ephemeral range.

    A port the kernel hands out for outgoing connections could be taken by
    one of them before the node binds it (or when the grid restarts later).
    """
    import random

    lo, hi = _ephemeral_range()
    a, b = (10000, lo - 1) if lo > 11000 else (hi + 1, 65535)
    for _ in range(200):
        port = random.randint(a, b)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # fall back to any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_start(pid: int) -> str | None:
    """The kernel start time of ``pid`` (clock ticks since boot), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):  # zombie or dead
        return None
    return rest[19].decode()


def _edit_cfg(path: str, storage: bool) -> None:
    """Adjust a new node's tahoe.cfg for a grid that lives on one machine.

    Foolscap, not the HTTPS storage protocol: with Tahoe 1.20's HTTPS
    protocol, an upload whose client was killed leaves its shares
    "incoming" on the servers for 30 minutes (the gateway's abort gets a
    404), and every retry of the same content fails as unhappy meanwhile.
    """
    with open(path) as f:
        text = f.read()
    text = text.replace("[client]\n", "[client]\nforce_foolscap = true\n", 1)
    text = text.replace("[storage]\n", "[storage]\nforce_foolscap = true\n", 1)
    if storage:
        text = re.sub(r"(?m)^reserved_space = .*$", "reserved_space = 100M", text)
    with open(path, "w") as f:
        f.write(text)


def _tahoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "allmydata", *args]


class LocalGrid:
    """An embedded grid rooted at ``spec.dir``."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.dir = os.path.abspath(spec.dir)
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Stop a start-up running in another thread: its ``tahoe`` subprocess is killed at once and
        it raises :class:`GridError`; a half-made grid is discarded by the next start."""
        self._stop.set()

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise GridError(problem="start-up interrupted")

    # -- state -----------------------------------------------------------------
    def _state_path(self) -> str:
        return os.path.join(self.dir, STATE)

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self._state_path()) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except OSError as e:  # (not the grid's state, but where it is: a file, a directory not ours...)
            raise UsageError(f"the embedded grid's directory {self.dir} (grid.dir) cannot be used: "
                             f"{e.strerror or e}")
        except ValueError as e:
            raise GridError(problem=f"{self._state_path()} is unreadable ({e}); remove the grid directory")

    def _save(self, state: dict[str, Any]) -> None:
        with replacing(self._state_path()) as f:
            json.dump(state, f, indent=1)

    def _lock(self) -> int:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "grid.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @property
    def url(self) -> str | None:
        st = self.load()
        return st["url"] if st else None

    def node_names(self, state: dict[str, Any]) -> list[str]:
        if state.get("join"):
            return [state["node"]]
        return ["introducer"] + [f"storage{i}" for i in range(1, state["nodes"] + 1)] + ["gateway"]

    def alive(self, state: dict[str, Any], name: str) -> bool:
        p = state.get("processes", {}).get(name)
        return bool(p) and _proc_start(p["pid"]) == p["start"]

    # -- create ------------------------------------------------------------------
    def _run(self, args: list[str]) -> None:
        """Run one ``tahoe`` command to its end; a cancel kills it at once."""
        p = subprocess.Popen(_tahoe(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        while p.poll() is None:
            if self._stop.wait(0.05):
                p.kill()
                p.wait()
                raise GridError(problem="start-up interrupted")
        output = p.stdout.read() if p.stdout is not None else ""
        if p.returncode != 0:
            raise GridError(problem=f"'tahoe {args[0]}' failed: {output.strip()[-500:]}")

    def _where(self, port: int) -> list[str]:
        """``--port`` and ``--location`` of a node listening on ``port``."""
        if self.spec.listen:
            return ["--port", f"tcp:{port}", "--location", f"tcp:{self.spec.listen}:{port}"]
        return ["--port", f"tcp:{port}:interface=127.0.0.1", "--location", f"tcp:127.0.0.1:{port}"]

    def _create_joined(self) -> dict[str, Any]:
        """A node of a grid made elsewhere: a gateway, or a storage node."""
        spec = self.spec
        assert spec.join is not None
        wport = _free_port()
        name = "storage" if spec.storage else "gateway"
        state: dict[str, Any] = {"creating": True, "join": True, "node": name, "nodes": spec.nodes,
                                 "needed": spec.needed, "happy": spec.happy, "processes": {},
                                 "url": None if spec.storage else f"http://127.0.0.1:{wport}/"}
        self._save(state)
        nd = os.path.join(self.dir, name)
        if spec.storage:
            port = _free_port()
            self._run(["create-node", *self._where(port), "--webport", "none", "-i", spec.join,
                       "-n", f"storage-{socket.gethostname()}-{port}", nd])
        else:
            self._run(["create-node", "--no-storage", "--listen", "none", "--webport",
                       f"tcp:{wport}:interface=127.0.0.1", "-i", spec.join, "-n", "gateway",
                       "--shares-needed", str(spec.needed), "--shares-happy", str(spec.happy),
                       "--shares-total", str(spec.nodes), nd])
        _edit_cfg(os.path.join(nd, "tahoe.cfg"), storage=spec.storage)
        del state["creating"]
        self._save(state)
        return state

    def furl(self) -> str | None:
        """The introducer's FURL of this grid (a secret: whoever has it can join), if it made one."""
        path = os.path.join(self.dir, "introducer", "private", "introducer.furl")
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def _create(self) -> dict[str, Any]:
        if self.spec.join:
            return self._create_joined()
        spec = self.spec
        d = self.dir
        log.info("creating a local grid in %s", d)
        run = self._run

        wport = _free_port()
        state: dict[str, Any] = {
            "creating": True, "nodes": spec.nodes, "needed": spec.needed, "happy": spec.happy,
            "url": f"http://127.0.0.1:{wport}/", "processes": {}, "listen": spec.listen}
        self._save(state)
        iport = _free_port()
        run(["create-introducer", *self._where(iport), os.path.join(d, "introducer")])
        # The introducer writes its FURL when it first starts.
        self._spawn(state, "introducer")
        self._save(state)
        furl_path = os.path.join(d, "introducer", "private", "introducer.furl")
        for _ in range(600):
            if os.path.exists(furl_path) and os.path.getsize(furl_path) > 0:
                break
            self._sleep(0.05)
        else:
            raise GridError(problem="the introducer did not start; see "
                            f"{d}/introducer/lafs-backup-node.log")
        with open(furl_path) as f:
            furl = f.read().strip()
        for i in range(1, spec.nodes + 1):
            port = _free_port()
            nd = os.path.join(d, f"storage{i}")
            run(["create-node", *self._where(port), "--webport", "none", "-i", furl,
                 "-n", f"storage{i}", nd])
            _edit_cfg(os.path.join(nd, "tahoe.cfg"), storage=True)
        run(["create-node", "--no-storage", "--listen", "none", "--webport",
             f"tcp:{wport}:interface=127.0.0.1", "-i", furl, "-n", "gateway",
             "--shares-needed", str(spec.needed), "--shares-happy", str(spec.happy),
             "--shares-total", str(spec.nodes), os.path.join(d, "gateway")])
        _edit_cfg(os.path.join(d, "gateway", "tahoe.cfg"), storage=False)
        del state["creating"]
        self._save(state)
        return state

    def _discard_partial(self, state: dict[str, Any]) -> None:
        """Remove what an interrupted creation left behind (only this grid's own node dirs)."""
        import shutil

        for name in self.node_names(state):
            p = state.get("processes", {}).get(name)
            if p and self.alive(state, name):
                os.kill(p["pid"], signal.SIGKILL)
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        os.unlink(self._state_path())

    # -- start/stop ------------------------------------------------------------------
    def _spawn(self, state: dict[str, Any], name: str) -> None:
        nd = os.path.join(self.dir, name)
        # A pid file left by a killed node would make tahoe refuse to start.
        for leftover in ("running.process", "running.process.lock"):
            try:
                os.unlink(os.path.join(nd, leftover))
            except FileNotFoundError:
                pass
        logf = open(os.path.join(nd, "lafs-backup-node.log"), "ab")
        try:
            env = dict(os.environ, PYTHONUNBUFFERED="1")  # the node log is read live by tests
            p = subprocess.Popen(_tahoe("run", "--allow-stdin-close", nd), stdin=subprocess.DEVNULL, env=env,
                                 stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True)
        finally:
            logf.close()
        start = None
        for _ in range(50):
            start = _proc_start(p.pid)
            if start:
                break
            self._sleep(0.01)
        if start is None:
            raise GridError(problem=f"node {name} exited at once; see {nd}/lafs-backup-node.log")
        state["processes"][name] = {"pid": p.pid, "start": start}

    def start_processes(self) -> tuple[dict[str, Any], bool]:
        """Create the grid if needed and start every node that is not running.

        Returns (state, whether anything was started).
        """
        fd = self._lock()
        try:
            state = self.load()
            if state is not None and state.get("creating"):
                self._discard_partial(state)
                state = None
            if state is None:
                state = self._create()
            started = False
            for name in self.node_names(state):
                if not self.alive(state, name):
                    self._spawn(state, name)
                    started = True
                    if name == "introducer":
                        self._sleep(0.3)  # let it bind before the others dial it
            self._save(state)
            return state, started
        finally:
            os.close(fd)

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Stop this grid's own processes; return the names stopped."""
        fd = self._lock()
        try:
            state = self.load()
            if state is None:
                return []
            stopped = []
            procs = state.get("processes", {})
            for name in reversed(self.node_names(state)):
                if self.alive(state, name):
                    try:
                        os.kill(procs[name]["pid"], signal.SIGTERM)
                        stopped.append(name)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + timeout
            for name in stopped:
                while self.alive(state, name) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self.alive(state, name):
                    os.kill(procs[name]["pid"], signal.SIGKILL)
            state["processes"] = {}
            self._save(state)
            return stopped
        finally:
            os.close(fd)

    def kill_node(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one node (for fault tests)."""
        state = self.load()
        if state and self.alive(state, name):
            os.kill(state["processes"][name]["pid"], sig)
            for _ in range(300):
                if not self.alive(state, name):
                    break
                time.sleep(0.05)


async def wait_connected(connected: Callable[[], Awaitable[list[str]]], want: int, timeout: float,
                         sleep: Callable[[float], Awaitable[None]], now: Callable[[], float]) -> list[str]:
    """Poll ``connected()`` until it lists ``want`` servers; raise :class:`GridError` after ``timeout``."""
    deadline = now() + timeout
    last: list[str] = []
    problem = ""
    while True:
        try:
            last = await connected()
            problem = ""
        except Exception as e:  # gateway still starting: connection refused
            problem = f" (gateway: {getattr(e, 'reason', '') or e})"
        if len(last) >= want:
            return last
        if now() >= deadline:
            raise GridError(problem=(f"only {len(last)} of {want} required storage servers connected "
                                     f"after {timeout:.0f}s{problem}"))
        await sleep(0.25)
