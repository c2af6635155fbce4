"""The derive runner: which programs may run, and a run in its scratch directory (real processes)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time

import pytest

from lafs_backup.system.programs import (
    SEARCH_PATH, Missing, NotAllowed, Program, Programs, Runner, Staged, isolation_for, machine_isolation,
    network_isolation,
)

ALLOWED = ["gzip", "env", "find", "stat", "sh", "sleep", "cat", "true", "/usr/bin/gzip", "/no/such/tool", "a/b"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def program(name: str) -> Program:
    return Programs(ALLOWED).find(name)


def sh(script: str) -> tuple[Program, list[str]]:
    return program("sh"), ["-c", script]


def content(n: int) -> bytes:
    rng = random.Random(n)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(rng.randrange(1, 9))) for _ in range(500)]
    return b"\n".join(rng.choice(words) for _ in range(n))


def marker() -> str:
    """A sleep argument no other process has, to find the sleep by its command line."""
    return f"{700 + random.randrange(200)}.{os.getpid()}{random.randrange(10**6)}"


def running(mark: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if mark.encode() in f.read():
                        return True
            except OSError:
                pass
    return False


def gone(mark: str) -> bool:
    """Whether the processes with ``mark`` are gone, waiting a while for SIGKILL to take effect."""
    for _ in range(400):
        if not running(mark):
            return True
        time.sleep(0.05)
    return False


# -- finding programs ---------------------------------------------------------------------------------

def test_a_program_is_found_in_the_search_path_and_hashed():
    found = program("gzip")
    where = next(os.path.join(d, "gzip") for d in SEARCH_PATH if os.path.isfile(os.path.join(d, "gzip")))
    assert found.name == "gzip" and found.path == where
    with open(where, "rb") as f:
        assert found.sha256 == sha(f.read())


def test_a_symlinked_program_keeps_its_path_and_hashes_its_target():
    found = program("sh")
    assert os.path.islink(found.path) or os.path.isfile(found.path)
    with open(os.path.realpath(found.path), "rb") as f:
        assert found.sha256 == sha(f.read())
    assert found.path in (os.path.join(d, "sh") for d in SEARCH_PATH)


def test_only_listed_programs_are_found():
    with pytest.raises(NotAllowed) as e:
        program("bzip2")
    assert e.value.reason == "bzip2 is not in derive.allowed_programs"
    # A name is listed as it is: the absolute path of an allowed name is not allowed, nor the reverse.
    with pytest.raises(NotAllowed):
        Programs(["gzip"]).find("/usr/bin/gzip")
    with pytest.raises(NotAllowed):
        Programs(["/usr/bin/gzip"]).find("gzip")


def test_an_allowed_program_that_is_not_here_is_missing(tmp_path):
    with pytest.raises(Missing) as e:
        Programs(["no-such-program-here"]).find("no-such-program-here")
    assert "no-such-program-here" in e.value.reason and "/usr/bin" in e.value.reason
    with pytest.raises(Missing):
        program("/no/such/tool")
    with pytest.raises(Missing):
        program("a/b")
    # Not executable, or not a regular file: missing too.
    plain = tmp_path / "plain"
    plain.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(Missing):
        Programs([str(plain)]).find(str(plain))
    with pytest.raises(Missing):
        Programs([str(tmp_path)]).find(str(tmp_path))
    # And the search path is this machine's list, not $PATH.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "tool").write_bytes(b"#!/bin/sh\n")
    (bin_ / "tool").chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_}:{old}"
    try:
        with pytest.raises(Missing):
            Programs(["tool"]).find("tool")
    finally:
        os.environ["PATH"] = old
    assert Programs(["tool"], search=[str(bin_)]).find("tool").path == str(bin_ / "tool")


def test_an_absolute_path_allowed_runs(tmp_path):
    gz = program("/usr/bin/gzip")
    with open("/usr/bin/gzip", "rb") as f:
        assert gz.path == "/usr/bin/gzip" and gz.sha256 == sha(f.read())
    with Runner(60).run(gz, ["-n", "-c", "x"], [Staged("x", "", data=b"hello")], [], capture_stdout=True) as ran:
        assert ran.error is None
        with ran.open("stdout") as f:
            assert subprocess.run(["gzip", "-dc"], input=f.read(), capture_output=True, check=True).stdout == b"hello"


class Counting(Programs):
    def __init__(self, allowed):
        super().__init__(allowed)
        self.hashed = 0

    def _digest(self, fd):
        self.hashed += 1
        return super()._digest(fd)


def test_a_programs_hash_is_computed_once_per_file_version(tmp_path):
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\necho one\n")
    tool.chmod(0o755)
    programs = Counting([str(tool), "gzip"])
    first = programs.find(str(tool))
    assert programs.find(str(tool)) == first and programs.hashed == 1
    assert first.sha256 == sha(tool.read_bytes())
    programs.find("gzip")
    programs.find("gzip")
    assert programs.hashed == 2
    # A new version of the file (another size) is hashed again.
    tool.write_bytes(b"#!/bin/sh\necho two, longer\n")
    second = programs.find(str(tool))
    assert programs.hashed == 3 and second.sha256 == sha(tool.read_bytes()) != first.sha256


# -- running ------------------------------------------------------------------------------------------

def test_gzip_on_a_staged_input_makes_the_same_file_as_gzip_itself(tmp_path):
    data = content(400_000)  # more than one copy chunk
    src = tmp_path / "data.txt"
    src.write_bytes(data)
    reference = subprocess.run(["gzip", "-n", "-9", "-c", str(src)], capture_output=True, check=True).stdout
    staged = Staged("sub/data.txt", str(src), mode=0o600, mtime_ns=1_500_000_000_000_000_000)
    with Runner(60, str(tmp_path)).run(program("gzip"), ["-n", "-k", "-9", "sub/data.txt"], [staged],
                                       ["sub/data.txt.gz"]) as ran:
        assert ran.error is None
        assert ran.inputs == {"sub/data.txt": sha(data)}
        assert ran.outputs == {"sub/data.txt.gz": (sha(reference), len(reference))}
        assert ran.stdout_sha256 is None
        with ran.open("sub/data.txt.gz") as f:
            assert f.read() == reference
        assert ran.path_of("sub/data.txt.gz") == os.path.join(ran.scratch, "sub/data.txt.gz")
        assert os.path.basename(ran.scratch).startswith("lafs-backup-derive-")
        assert os.path.dirname(ran.scratch) == str(tmp_path)
        assert os.stat(ran.scratch).st_mode & 0o777 == 0o700
        scratch = ran.scratch
    assert not os.path.exists(scratch)
    assert os.listdir(tmp_path) == ["data.txt"]  # the private side directory is gone too


def test_a_bytes_source_path_is_copied(tmp_path):
    src = tmp_path / "b\xe9.txt".encode("latin-1").decode("utf-8", "surrogateescape")
    src.write_bytes(b"abc")
    with Runner(60).run(program("cat"), ["x"], [Staged("x", os.fsencode(src))], [], capture_stdout=True) as ran:
        assert ran.error is None and ran.inputs == {"x": sha(b"abc")} and ran.stdout_sha256 == (sha(b"abc"), 3)


def test_stdout_is_captured_outside_the_scratch_tree(tmp_path):
    data = content(5000)
    reference = subprocess.run(["gzip", "-n", "-c"], input=data, capture_output=True, check=True).stdout
    with Runner(60).run(program("gzip"), ["-n", "-c", "in"], [Staged("in", "", data=data)], [],
                        capture_stdout=True) as ran:
        assert ran.error is None
        assert ran.stdout_sha256 == (sha(reference), len(reference))
        with ran.open("stdout") as f:
            assert f.read() == reference
        captured = ran.path_of("stdout")
        assert os.path.isfile(captured)
        assert not os.path.abspath(captured).startswith(os.path.abspath(ran.scratch) + os.sep)
        assert sorted(os.listdir(ran.scratch)) == ["in"]
        side = os.path.dirname(captured)
    assert not os.path.exists(side)


def test_the_environment_is_exactly_the_documented_one(tmp_path):
    os.environ["LAFS_TEST_SECRET"] = "do not pass me on"
    try:
        with Runner(60).run(program("env"), [], [], [], capture_stdout=True) as ran:
            assert ran.error is None
            with ran.open("stdout") as f:
                env = dict(line.split("=", 1) for line in f.read().decode().splitlines())
            scratch = ran.scratch
    finally:
        del os.environ["LAFS_TEST_SECRET"]
    assert set(env) == {"PATH", "LC_ALL", "LANG", "TZ", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["LC_ALL"] == env["LANG"] == "C.UTF-8"
    assert env["TZ"] == "UTC" and env["PYTHONHASHSEED"] == "0" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == scratch
    assert not env["TMPDIR"].startswith(scratch + os.sep) and env["TMPDIR"] != scratch


def test_the_scratch_tree_holds_only_the_inputs(tmp_path):
    (tmp_path / "one").write_bytes(b"1")
    inputs = [Staged("a/b/one", str(tmp_path / "one")), Staged("two", "", data=b"22"), Staged("a/three", "", data=b"")]
    with Runner(60).run(program("find"), [".", "-printf", "%y %m %p\\n"], inputs, [], capture_stdout=True) as ran:
        assert ran.error is None
        with ran.open("stdout") as f:
            listed = sorted(f.read().decode().splitlines())
    assert listed == sorted(["d 700 .", "d 755 ./a", "d 755 ./a/b", "f 644 ./a/b/one", "f 644 ./two", "f 644 ./a/three"])


def test_inputs_get_their_mode_and_mtime():
    mtime_ns = 1_600_000_000_123_456_789
    inputs = [Staged("x", "", data=b"x", mode=0o640, mtime_ns=mtime_ns), Staged("y", "", data=b"y", mode=0o100755)]
    with Runner(60).run(program("stat"), ["-c", "%.9X %.9Y %a", "x", "y"], inputs, [], capture_stdout=True) as ran:
        assert ran.error is None
        with ran.open("stdout") as f:
            x, y = f.read().decode().splitlines()
    assert x == "1600000000.123456789 1600000000.123456789 640"
    assert y == "0.000000000 0.000000000 755"


def test_unsafe_paths_are_refused():
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\0b", "a/."]:
        with pytest.raises(ValueError):
            with Runner(60).run(program("true"), [], [Staged(bad, "", data=b"")], []):
                pass
        with pytest.raises(ValueError):
            with Runner(60).run(program("true"), [], [], [bad]):
                pass


def test_an_unreadable_source_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        with Runner(60, str(tmp_path)).run(program("true"), [], [Staged("x", str(tmp_path / "absent"))], []):
            pass
    assert os.listdir(tmp_path) == []


def test_a_failing_program_gives_its_status_and_the_end_of_its_stderr():
    prog, args = sh("echo first >&2; printf 'the\\nend\\n' >&2; exit 3")
    with Runner(60).run(prog, args, [], ["out"]) as ran:
        assert ran.error == "exit status 3: first the end"
        assert ran.outputs == {"out": None}
    prog, args = sh("head -c 20000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last words >&2; exit 2")
    with Runner(60).run(prog, args, [], []) as ran:
        assert ran.error.startswith("exit status 2: xxx") and ran.error.endswith(" last words")
        assert len(ran.error) <= len("exit status 2: ") + 200
    with Runner(60).run(*sh("exit 4"), [], []) as ran:
        assert ran.error == "exit status 4"
    with Runner(60).run(*sh("kill -9 $$"), [], []) as ran:
        assert ran.error == "killed by signal 9"


def test_outputs_that_are_not_regular_files_are_none():
    prog, args = sh("echo made > real; ln -s real link; ln -s /etc/hostname out; mkdir d; ln -s . dl; mkfifo fifo")
    asked = ["real", "link", "out", "d", "dl/real", "fifo", "absent", "d/absent"]
    with Runner(60).run(prog, args, [], asked) as ran:
        assert ran.error is None
        assert ran.outputs["real"] == (sha(b"made\n"), 5)
        assert all(ran.outputs[o] is None for o in asked[1:])
        with pytest.raises(OSError):
            ran.open("link")
        with pytest.raises(OSError):
            ran.open("dl/real")


def test_directories_a_program_locks_are_still_removed(tmp_path):
    prog, args = sh("mkdir -p d/e && echo x > d/e/f && chmod 0 d/e/f && chmod 0500 d/e d && chmod 0500 .")
    with Runner(60, str(tmp_path)).run(prog, args, [Staged("in", "", data=b"1")], ["d/e/f"]) as ran:
        assert ran.error is None and ran.outputs["d/e/f"] == (sha(b"x\n"), 2)
    assert os.listdir(tmp_path) == []


def test_a_run_that_takes_too_long_is_killed_with_all_it_started():
    first, second = marker(), marker()
    prog, args = sh(f"sleep {first} & echo $! > started; sleep {second}")
    with Runner(2).run(prog, args, [], ["started"]) as ran:
        assert ran.error == "timed out after 2 s"
        assert ran.outputs["started"] is not None  # the background sleep had been started
    assert gone(first) and gone(second)


def test_what_a_program_leaves_running_is_killed_when_it_exits():
    left = marker()
    prog, args = sh(f"sleep {left} > /dev/null 2>&1 & echo $! > started")
    with Runner(60).run(prog, args, [], ["started"]) as ran:
        assert ran.error is None and ran.outputs["started"] is not None
    assert gone(left)


def lines_of(ran) -> list[str]:
    with ran.open("stdout") as f:
        return f.read().decode().splitlines()


def interfaces(lines: list[str]) -> set[str]:
    """The interfaces /proc/net/dev lists (after its two heading lines)."""
    return {line.split(":")[0].strip() for line in lines[2:]}


def test_a_run_has_no_network():
    """As root, a run has only the loopback device, or, where no network namespace can be made, every
    run fails; not as root, the same if user namespaces are available, and the description says so."""
    described = network_isolation()
    with Runner(60).run(program("cat"), ["/proc/net/dev"], [], [], capture_stdout=True) as ran:
        if described in ("a network namespace (root)", "a user and network namespace"):
            assert described.endswith("(root)") == (os.geteuid() == 0)
            assert ran.error is None and interfaces(lines_of(ran)) == {"lo"}
        elif os.geteuid() == 0:
            assert described.startswith("none: running as root, but no network namespace can be made")
            assert ran.error.startswith("cannot cut the program off the network: ")
        else:
            assert described == "none: not root and user namespaces are not available" and ran.error is None


@pytest.mark.parametrize("root, unshare", [(True, None), (False, "/usr/bin/unshare"), (False, None)])
def test_each_way_of_cutting_the_network_works_where_the_kernel_allows(tmp_path, root, unshare):
    """The ways a machine without util-linux's unshare (a ctypes child) or a user without root (a
    user namespace) uses; as root, each of them can be tried here."""
    if unshare and not os.path.exists(unshare):
        pytest.skip("util-linux's unshare is not installed")
    isolation = isolation_for(root, unshare, sys.executable)
    if isolation.description.startswith("none"):
        assert isolation.prefix == () and (isolation.failure is not None) == root
        return
    assert isolation.description == ("a network namespace (root)" if root else "a user and network namespace")
    prog, args = sh("id -u; cat /proc/net/dev; echo made > out; exit 5")
    with Runner(60, isolation=isolation).run(prog, args, [Staged("in", "", data=b"")], ["out"],
                                             capture_stdout=True) as ran:
        assert ran.error == "exit status 5"
        assert ran.outputs["out"] == (sha(b"made\n"), 5)
        assert os.stat(ran.path_of("out")).st_uid == os.geteuid()
        uid, *dev = lines_of(ran)
        assert uid == "0" and interfaces(dev) == {"lo"}


def test_a_root_run_that_cannot_be_cut_off_the_network_fails():
    # ("/bin/false" as util-linux's unshare: the trial run fails the way a kernel without network
    # namespaces makes it fail.)
    isolation = isolation_for(True, "/bin/false")
    assert isolation.failure and isolation.description.startswith("none: running as root")
    with Runner(60, isolation=isolation).run(program("true"), [], [Staged("x", "", data=b"1")], ["x"]) as ran:
        assert ran.error.startswith("cannot cut the program off the network: ")
        assert ran.inputs == {"x": sha(b"1")}


def test_machine_isolation_is_found_once():
    assert machine_isolation() is machine_isolation()
