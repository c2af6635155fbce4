"""The derive runner: finds the programs this machine allows and runs one in an empty scratch directory.

A derived file is kept as its recipe only if its program, run on copies of its inputs, makes it again
byte for byte; a restore runs the program again and checks the hash.  What a proof shows is therefore
"this program, given exactly these files and this setting, made these bytes".  The setting is part of
the proof, and is the same at backup and at restore:

* The working directory is a fresh, empty directory (mode 0700, named ``lafs-backup-derive-…``, in
  ``/dev/shm`` for a run of at most 64 MiB of inputs, else in ``TMPDIR``) that holds only the inputs, at their paths, with the mode and modification time the recipe records.
  Nothing else is in it: what the program prints is captured in a separate private directory.
* The environment is exactly::

      PATH=/usr/local/bin:/usr/bin:/bin  LC_ALL=C.UTF-8  LANG=C.UTF-8  TZ=UTC
      HOME=<the scratch directory>  TMPDIR=<a private directory outside it>
      PYTHONHASHSEED=0  PYTHONDONTWRITEBYTECODE=1

  Nothing of the user's environment reaches the program.  ``PYTHONHASHSEED=0`` makes a Python
  program whose output depends on the order of a set give the same bytes at backup and at restore.
* stdin is ``/dev/null``; stdout is ``/dev/null`` or a captured file; the end of stderr is kept for
  the error message.
* The program gets its own session and process group.  When it exits, or when its time is up, the
  whole group is killed, so nothing it started in the background outlives the run.
* It has no network.  As root it runs in a new network namespace, which has only a loopback device
  that is down; if this machine cannot make one, every run fails rather than run with the network.
  Otherwise it runs in a new user namespace (mapped to the user running lafs-backup, so the files it
  makes are theirs) with a new network namespace, if the kernel allows unprivileged user namespaces,
  and with the network if it does not: :func:`network_isolation` says which.  Either way the program
  sees itself as uid 0.

The namespaces are made by util-linux's ``unshare`` program placed before the program's own argv
(``unshare --net -- prog args``, or ``unshare --user --map-root-user --net -- …``): ``unshare``
execs the program in the same process, so the process group, the exit status and the argv the
program sees are its own.  A ``preexec_fn`` that called ``unshare(2)`` would do the same without a
second program, but CPython documents ``preexec_fn`` as unsafe when other threads exist, and this
runner is called from worker threads.  Where ``unshare`` is not installed, a small Python program
(run with ``-I -S``) makes the namespaces through ``ctypes`` and then execs the program instead.
Which way works is found once per process, by a trial run.

Everything here blocks: callers run it in a thread.  File contents are never logged; the argv is
logged at DEBUG.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Sequence

log = logging.getLogger(__name__)

SEARCH_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
#: The name every scratch directory starts with.
PREFIX = "lafs-backup-derive-"
#: The name a captured stdout goes by, as an output (``derive.rules``' ``output: stdout``).
STDOUT = "stdout"
_CHUNK = 1 << 20
_STDERR_TAIL = 4096
_REASON_TAIL = 200
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


class ProgramError(Exception):
    """A derive program cannot be used here; ``reason`` says why, in a few words for users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAllowed(ProgramError):
    """The program is not in ``derive.allowed_programs``."""


class Missing(ProgramError):
    """The program is allowed, but there is no such executable on this machine."""


@dataclass(frozen=True)
class Program:
    #: As the recipe and the rule name it: ``gzip``, ``python3.11``, ``/opt/x/bin/tool``.
    name: str
    #: The absolute path run (as found: a symlink is kept, its target is hashed).
    path: str
    #: Hex SHA-256 of the executable file's bytes.
    sha256: str


class Programs:
    """The programs this machine allows (``derive.allowed_programs``: names, or absolute paths).

    A bare name is looked up in ``search`` only, never in ``$PATH``, so what runs does not depend on
    the environment lafs-backup was started from.  The executable's hash is computed once per file
    version (path, device, inode, size, mtime) and kept; the instance may be shared between threads.
    """

    def __init__(self, allowed: Sequence[str], search: Sequence[str] = SEARCH_PATH) -> None:
        self.allowed = frozenset(allowed)
        self.search = tuple(search)
        self._hashes: dict[tuple[str, int, int, int, int], str] = {}
        self._lock = threading.Lock()

    def find(self, name: str) -> Program:
        """The program ``name`` names here.  Raises :class:`NotAllowed` if it is not listed exactly,
        :class:`Missing` if it is listed but no regular executable file answers to it."""
        if name not in self.allowed:
            raise NotAllowed(f"{name} is not in derive.allowed_programs")
        if name.startswith("/"):
            if not _executable(name):
                raise Missing(f"{name} is not an executable file")
            path = name
        elif "/" in name or not name or name in (".", ".."):
            raise Missing(f"{name} is neither a program name nor an absolute path")
        else:
            found = _which(name, self.search)
            if found is None:
                raise Missing(f"{name} is not in {', '.join(self.search)}")
            path = found
        try:
            return Program(name, path, self._sha256_of(path))
        except OSError as e:
            raise Missing(f"{name} cannot be read ({e.strerror or e})") from None

    def _sha256_of(self, path: str) -> str:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            # Held while hashing, so that a file is hashed once however many threads ask at once.
            with self._lock:
                digest = self._hashes.get(key)
                if digest is None:
                    digest = self._hashes[key] = self._digest(fd)
            return digest
        finally:
            os.close(fd)

    def _digest(self, fd: int) -> str:
        """The SHA-256 of the open file ``fd``, read from its start."""
        return _hash_fd(fd)[0]


@dataclass(frozen=True)
class Staged:
    """An input placed in the scratch directory before the run."""

    #: Its path inside the scratch directory (relative, no ``.``, ``..`` or empty part, no NUL).
    path: str
    #: The local file to copy from (ignored when ``data`` is given: pass ``""``).
    source: str | bytes
    #: The bytes themselves.
    data: bytes | None = None
    #: The permission bits the copy gets.
    mode: int = 0o644
    #: The copy's access and modification time.
    mtime_ns: int = 0


@dataclass
class Ran:
    """What a run did.  Its files can be read only inside :meth:`Runner.run`'s ``with`` block."""

    #: None: the program exited with status 0.  Else a short reason ("exit status 2: …",
    #: "timed out after 300 s", "killed by signal 9", "cannot cut the program off the network: …").
    error: str | None
    #: Each staged path -> hex SHA-256 of the bytes copied there.
    inputs: dict[str, str]
    #: Each asked output path -> (hex SHA-256, size), or None if the run left no regular file there.
    outputs: dict[str, tuple[str, int] | None]
    scratch: str
    #: When stdout was captured: its (SHA-256, size).
    stdout_sha256: tuple[str, int] | None
    _stdout: str | None = field(default=None, repr=False)

    def path_of(self, output: str) -> str:
        """The file of ``output`` (``"stdout"``: where stdout was captured, if it was)."""
        if output == STDOUT and self._stdout is not None:
            return self._stdout
        check_path(output)
        return os.path.join(self.scratch, output)

    def open(self, output: str) -> BinaryIO:
        """A made output (or the captured stdout) opened for reading.  Raises OSError if the run left
        no regular file there; a symlink on the way is not followed."""
        if output == STDOUT and self._stdout is not None:
            fd = os.open(self._stdout, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        else:
            check_path(output)
            fd = _open_below(self.scratch, output)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.ENOENT, "the run made no regular file there", output)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")


class Runner:
    """Runs one program at a time per call, each in its own scratch directory (see the module's
    docstring for the setting a run gets)."""

    def __init__(self, timeout: float, scratch_root: str | None = None, *,
                 isolation: "Isolation | None" = None) -> None:
        self.timeout = timeout
        self.scratch_root = scratch_root
        #: How runs are cut off the network (None: this machine's way, found on first use).
        self.isolation = isolation

    @contextmanager
    def run(self, program: Program, args: Sequence[str], inputs: Sequence[Staged], outputs: Sequence[str],
            capture_stdout: bool = False) -> Iterator[Ran]:
        """Stage ``inputs``, run ``program`` with ``args``, hash ``outputs``; yield the :class:`Ran`.
        The scratch directory is removed when the block ends.  Raises ValueError for an unsafe path,
        OSError if an input cannot be read or the scratch directory cannot be made; a program that
        fails, or cannot be started, is a :attr:`Ran.error`."""
        for path in [s.path for s in inputs] + list(outputs):
            check_path(path)
        isolation = self.isolation or machine_isolation()
        root = self.scratch_root or _scratch_root(inputs)
        made: list[str] = []
        try:
            made.append(scratch := tempfile.mkdtemp(prefix=PREFIX, dir=root))
            made.append(side := tempfile.mkdtemp(prefix=PREFIX, suffix="-side", dir=root))
            tmp = os.path.join(side, "tmp")
            os.mkdir(tmp, 0o700)
            hashes = {s.path: _stage(scratch, s) for s in inputs}
            stdout = os.path.join(side, STDOUT) if capture_stdout else None
            if isolation.failure is not None:
                error: str | None = f"cannot cut the program off the network: {isolation.failure}"
            else:
                argv = [*isolation.prefix, program.path, *args]
                error = self._execute(argv, scratch, side, _environment(scratch, tmp), stdout)
            made_outputs = {o: _hash_output(scratch, o) for o in outputs}
            captured = _hash_fd_at(stdout) if stdout is not None else None
            yield Ran(error, hashes, made_outputs, scratch, captured, stdout)
        finally:
            for d in made:
                remove_tree(d)

    def _execute(self, argv: list[str], cwd: str, side: str, env: dict[str, str], stdout: str | None) -> str | None:
        """Run ``argv`` to its end or its time limit; the error text, or None for exit status 0."""
        log.debug("derive: running %s", shlex.join(argv))
        err_path = os.path.join(side, "stderr")
        with open(err_path, "xb") as err, open(stdout or os.devnull, "xb" if stdout else "wb") as out:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        close_fds=True, start_new_session=True)
            except OSError as e:
                return f"cannot start {argv[0]}: {e.strerror or e}"
        timed_out = not _wait_unreaped(proc.pid, time.monotonic() + self.timeout)
        # The leader is not reaped yet, so its group id cannot have been reused: this kills only what
        # the program left behind (or, on timeout, the program and everything it started).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        status = proc.wait()
        if timed_out:
            return f"timed out after {self.timeout:g} s"
        if status < 0:
            return f"killed by signal {-status}"
        if status > 0:
            tail = _tail(err_path)
            return f"exit status {status}: {tail}" if tail else f"exit status {status}"
        return None


#: Runs whose inputs hold at most this many bytes get their scratch directory in memory (:data:`SHM`).
IN_MEMORY = 64 << 20
SHM = "/dev/shm"


def _scratch_root(inputs: Sequence[Staged]) -> str:
    """Where a run's scratch directory goes: a small run's in memory, when this machine has a
    writable ``/dev/shm`` (a disk file system that creates and deletes thousands of small files a
    second spends its time finding free inodes); any other in ``TMPDIR``."""
    size = 0
    for s in inputs:
        if s.data is not None:
            size += len(s.data)
        else:
            try:
                size += os.stat(s.source).st_size
            except OSError:
                return tempfile.gettempdir()  # (staging says what is wrong)
    if size <= IN_MEMORY and os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK):
        return SHM
    return tempfile.gettempdir()


def check_path(path: str) -> None:
    """Raise ValueError unless ``path`` is a plain relative path inside the scratch directory."""
    if (not isinstance(path, str) or not path or path.startswith("/") or "\0" in path
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise ValueError(f"not a safe relative path: {path!r}")


def _environment(scratch: str, tmp: str) -> dict[str, str]:
    return {"PATH": ":".join(SEARCH_PATH), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC",
            "HOME": scratch, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def _which(name: str, search: Sequence[str]) -> str | None:
    for d in search:
        path = os.path.join(d, name)
        if _executable(path):
            return path
    return None


def _executable(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111) and os.access(path, os.X_OK)


def _stage(scratch: str, staged: Staged) -> str:
    """Copy one input into place; the SHA-256 of the bytes written."""
    parts = staged.path.split("/")
    here = scratch
    for part in parts[:-1]:
        here = os.path.join(here, part)
        try:
            os.mkdir(here, 0o755)
            os.chmod(here, 0o755)  # (whatever the umask)
        except FileExistsError:
            pass
    digest = hashlib.sha256()
    fd = os.open(os.path.join(scratch, staged.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        if staged.data is not None:
            digest.update(staged.data)
            out.write(staged.data)
        else:
            with open(staged.source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        out.flush()
        os.fchmod(fd, stat.S_IMODE(staged.mode))
        os.utime(fd, ns=(staged.mtime_ns, staged.mtime_ns))
    return digest.hexdigest()


def _open_below(root: str, rel: str) -> int:
    """Open ``root``/``rel`` for reading without following a symlink at any step (O_NONBLOCK, so that
    a FIFO the program left does not hang the open)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *dirs, last = rel.split("/")
        for part in dirs:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _hash_output(scratch: str, rel: str) -> tuple[str, int] | None:
    try:
        fd = _open_below(scratch, rel)
    except OSError:
        return None
    try:
        return _hash_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _hash_fd_at(path: str) -> tuple[str, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        size += len(chunk)
        offset += len(chunk)
    return digest.hexdigest(), size


def _tail(path: str) -> str:
    """The end of a captured stderr, as one line of at most 200 characters."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - _STDERR_TAIL))
        text = f.read(_STDERR_TAIL).decode("utf-8", "replace")
    return " ".join(text.split())[-_REASON_TAIL:]


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for child ``pid`` to exit, leaving it a zombie so its process group id stays its own.
    False if ``deadline`` (``time.monotonic``) passed first."""
    pause = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, 0.05)


def remove_tree(path: str) -> None:
    """Remove a scratch directory and all in it, even directories a program left without write or
    search permission.  A failure is logged, not raised: the run's result stands."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for here, dirs, _files in os.walk(path, onerror=lambda e: None):
        for d in [here] + [os.path.join(here, d) for d in dirs]:
            try:
                st = os.lstat(d)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
            except OSError:
                pass
    try:
        os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(path)
    except OSError as e:
        log.warning("derive: cannot remove the scratch directory %s: %s", path, e.strerror or e)


# -- cutting a run off the network -------------------------------------------------------------------

#: The fallback when util-linux's unshare is not installed: make the namespaces, map the user if a user
#: namespace was made, then exec the program (argv[2:]).  Exit status 125 if the namespaces fail.
_TRAMPOLINE = """\
import ctypes, os, sys
flags = int(sys.argv[1])
uid, gid = os.geteuid(), os.getegid()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(flags) != 0:
    sys.stderr.write("unshare: " + os.strerror(ctypes.get_errno()) + "\\n")
    sys.exit(125)
if flags & 0x10000000:
    for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class Isolation:
    """How runs are cut off the network: the argv put before the program's, a description for users,
    and, when runs must not happen at all (root without network namespaces), why."""

    prefix: tuple[str, ...]
    description: str
    failure: str | None = None


def isolation_for(root: bool, unshare: str | None, python: str | None = None) -> Isolation:
    """The way to cut runs off the network for a user who is (or is not) ``root``, with util-linux's
    ``unshare`` at ``unshare`` (None: not installed; then ``python`` runs the ctypes fallback).  Tries
    it once, with a run that writes a file."""
    flags = CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET
    if unshare is not None:
        prefix: tuple[str, ...] = (unshare, "--net", "--") if root else (
            unshare, "--user", "--map-root-user", "--net", "--")
    elif python:
        prefix = (python, "-I", "-S", "-c", _TRAMPOLINE, str(flags))
    else:
        prefix = ()
    problem = _try(prefix) if prefix else "neither util-linux's unshare nor Python is available"
    if problem is None:
        return Isolation(prefix, "a network namespace (root)" if root else "a user and network namespace")
    if root:
        return Isolation((), f"none: running as root, but no network namespace can be made ({problem})", problem)
    return Isolation((), "none: not root and user namespaces are not available")


def _try(prefix: Sequence[str]) -> str | None:
    """None if ``prefix`` runs a program that writes a file its user owns; else what went wrong."""
    with tempfile.TemporaryDirectory(prefix=PREFIX) as d:
        try:
            done = subprocess.run([*prefix, "/bin/sh", "-c", ": > probe"], cwd=d, env=_environment(d, d),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  close_fds=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        if done.returncode != 0:
            return " ".join(done.stderr.decode("utf-8", "replace").split())[-_REASON_TAIL:] or \
                f"exit status {done.returncode}"
        try:
            owner = os.lstat(os.path.join(d, "probe")).st_uid
        except OSError as e:
            return f"the trial run made no file ({e.strerror})"
        if owner != os.geteuid():
            return "the files a run makes would not be this user's"
    return None


_machine: Isolation | None = None
_machine_lock = threading.Lock()


def machine_isolation() -> Isolation:
    """This machine's way (found by a trial run on first use, then kept)."""
    global _machine
    with _machine_lock:
        if _machine is None:
            _machine = isolation_for(os.geteuid() == 0, _which("unshare", SEARCH_PATH), sys.executable or None)
            log.debug("derive: runs are cut off the network by: %s", _machine.description)
        return _machine


def network_isolation() -> str:
    """What cuts a derive run off the network on this machine, in a few words: "a network namespace
    (root)", "a user and network namespace", or "none: …" and why."""
    return machine_isolation().description
