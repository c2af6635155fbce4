"""Hooks (``engine/hooks.py``): real processes under the test's reactor, their time limits on a
``Clock``, and the order ``around`` runs them in around a backup that succeeds, fails, or is
found unchanged."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from lafs_backup.config import HooksConfig
from lafs_backup.engine import hooks
from lafs_backup.engine.backup import Made
from lafs_backup.engine.runtime import Runtime
from lafs_backup.errors import ExitCode, GridError, HookError
from lafs_backup.history import Backup
from lafs_backup.report import Reporter, outcome

SOURCE = b"/srv/data"
CAP = "URI:DIR2-CHK:aaaaaaaaaaaaaaaaaaaaaaaaaa:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb:2:3:516"


def backup_record(gen: int = 1) -> Backup:
    return Backup("w/r1", gen, CAP, SOURCE, "data", 1700000000.0 + gen, host="h")


def made(recorded: Backup | None, kept: Backup | None = None) -> Made:
    return Made(CAP, recorded, 1, frozenset(), frozenset(), kept=kept)


def reporter(json_mode: bool = False) -> tuple[Reporter, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Reporter(json_mode=json_mode, out=out, err=err), out, err


def env_of(path: Path) -> dict[str, str]:
    """A hook's environment as ``env -0`` wrote it."""
    pairs = (item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)
    return dict(pairs)


def dump_env(to: Path) -> list[str]:
    return ["sh", "-c", f'env -0 > "{to}"']


# -- the pure parts ---------------------------------------------------------------------------------

def test_the_environment_names_the_source_and_withholds_the_recovery_key():
    base = {b"PATH": b"/bin", b"LAFS_BACKUP_REPO": b"secret-key", b"LAFS_BACKUP_SNAPSHOT": b"stale"}
    env = hooks.environment(base, "before", b"/srv/\xffdata")
    assert env == {b"PATH": b"/bin", b"LAFS_BACKUP_HOOK": b"before", b"LAFS_BACKUP_SOURCE": b"/srv/\xffdata"}
    env = hooks.environment(base, "on_failure", SOURCE, "failed", 3, error=f"GET /uri/{CAP} failed")
    assert env[b"LAFS_BACKUP_RESULT"] == b"failed" and env[b"LAFS_BACKUP_EXIT_CODE"] == b"3"
    assert b"URI:" not in env[b"LAFS_BACKUP_ERROR"] and b"cap>" in env[b"LAFS_BACKUP_ERROR"]


def test_the_after_hook_is_told_success_partial_or_skipped_with_the_listed_id():
    b = backup_record()
    assert hooks.result_of(made(b), 0) == ("success", b.short_id)
    assert hooks.result_of(made(b), 1) == ("partial", b.short_id)
    assert hooks.result_of(made(None, kept=b), 0) == ("skipped", b.short_id)
    assert b.short_id != CAP and len(b.short_id) == 8


def test_a_failed_hook_says_why():
    assert hooks.Ran("before", "pg_dump", 1, last_line="no such db").problem(600) == \
        "exited with code 1 (no such db)"
    assert hooks.Ran("before", "x", None, signal.SIGKILL).problem(600) == "was ended by signal SIGKILL"
    assert "ran longer than source.hooks.timeout (5s)" in hooks.Ran("before", "x", None, 15, True).problem(5)
    assert not hooks.Ran("after", "x", 0, timed_out=True).ok and hooks.Ran("after", "x", 0).ok
    assert hooks.Ran("before", "x", None, last_line="Resource temporarily unavailable").problem(600) == \
        "could not be started (Resource temporarily unavailable)"


# -- real processes -------------------------------------------------------------------------------

async def run(argv: list[str], timeout: float = 60, clock=None, env=None) -> tuple[hooks.Ran, list]:
    from twisted.internet import reactor

    said: list[tuple[str, str]] = []
    ran = await hooks.run_hook(reactor, clock or reactor, "before", argv, env or dict(os.environb), timeout,
                               lambda stream, line: said.append((stream, line)))
    return ran, said


@pytest_twisted.ensureDeferred
async def test_a_hook_runs_without_a_shell_and_its_output_is_said_line_by_line():
    ran, said = await run(["sh", "-c", 'echo "one $0"; echo two >&2; printf three; exit 3', "$HOME;x"])
    assert ran.code == 3 and not ran.ok
    assert sorted(said) == [("stderr", "two"), ("stdout", "one $HOME;x"), ("stdout", "three")]
    ran, said = await run(["echo", "$HOME", "*", ";"])  # no shell expands anything
    assert ran.ok and said == [("stdout", "$HOME * ;")]


@pytest_twisted.ensureDeferred
async def test_a_missing_program_is_a_failure_like_a_shells():
    ran, said = await run(["/nonexistent/pg_dump", "mydb"])
    assert ran.code == 127 and "No such file" in ran.last_line


@pytest_twisted.ensureDeferred
async def test_the_time_limit_runs_on_the_clock_and_stops_the_whole_process_group(tmp_path):
    clock = Clock()
    pidfile = tmp_path / "pid"
    # A shell that started a child: killing the shell alone would leave the child holding the pipes.
    task = Deferred.fromCoroutine(run(["sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; wait'], timeout=600,
                                      clock=clock))
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await sleep(0.05)
    child = int(pidfile.read_text())
    clock.advance(599)
    await sleep(0.2)
    assert not task.called  # (its time is not up)
    t0 = time.monotonic()
    clock.advance(1)
    ran, _ = await task
    assert ran.timed_out and not ran.ok and ran.signal == signal.SIGTERM
    assert time.monotonic() - t0 < 10  # the clock's limit, not the minute of sleep
    for _ in range(100):  # the child of the shell went with it
        if not alive(child):
            break
        await sleep(0.05)
    assert not alive(child)


@pytest_twisted.ensureDeferred
async def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    clock = Clock()
    ready = tmp_path / "ready"
    code = f"import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(ready)!r},'w').close(); time.sleep(60)"
    task = Deferred.fromCoroutine(run([sys.executable, "-c", code], timeout=10, clock=clock))
    for _ in range(200):
        if ready.exists():
            break
        await sleep(0.05)
    clock.advance(10)
    await sleep(0.3)
    assert not task.called  # SIGTERM is ignored
    clock.advance(hooks.KILL_GRACE)
    ran, _ = await task
    assert ran.timed_out and ran.signal == signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_a_hook_that_leaves_a_process_holding_its_output_is_over_when_it_exits(tmp_path):
    clock = Clock()
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    task = Deferred.fromCoroutine(run(["sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; echo started'], clock=clock))
    try:
        for _ in range(200):
            await sleep(0.05)
            clock.advance(hooks.PIPES_GRACE)  # (the grace runs once the hook itself has exited)
            if task.called:
                break
        ran, said = await task
        assert ran.ok and said == [("stdout", "started")]
        assert time.monotonic() - t0 < 10  # not the minute the background sleep holds the pipes
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


# -- around a backup ----------------------------------------------------------------------------

def runtime(rep: Reporter) -> Runtime:
    from twisted.internet import reactor

    return Runtime(reactor, rep)


@pytest_twisted.ensureDeferred
async def test_before_then_backup_then_after_with_the_snapshot_id(tmp_path):
    rep, out, err = reporter()
    order: list[str] = []
    b = backup_record()

    async def backup() -> Made:
        order.append("backup" if (tmp_path / "before.env").exists() else "backup without before")
        return made(b)

    conf = HooksConfig(dump_env(tmp_path / "before.env"), dump_env(tmp_path / "after.env"),
                       dump_env(tmp_path / "failure.env"))
    got = await hooks.around(runtime(rep), conf, SOURCE, backup)
    assert got.backup is b and order == ["backup"]
    before, after = env_of(tmp_path / "before.env"), env_of(tmp_path / "after.env")
    assert before["LAFS_BACKUP_SOURCE"] == "/srv/data" and before["LAFS_BACKUP_HOOK"] == "before"
    assert "LAFS_BACKUP_RESULT" not in before
    assert after["LAFS_BACKUP_RESULT"] == "success" and after["LAFS_BACKUP_EXIT_CODE"] == "0"
    assert after["LAFS_BACKUP_SNAPSHOT"] == b.short_id
    assert not (tmp_path / "failure.env").exists()
    assert outcome(rep) == ExitCode.OK


@pytest_twisted.ensureDeferred
async def test_a_failing_before_hook_stops_the_backup_and_runs_on_failure(tmp_path):
    rep, out, err = reporter()
    called = []

    async def backup() -> Made:
        called.append(1)
        return made(backup_record())

    conf = HooksConfig(["sh", "-c", "echo 'pg_dump: error: connection refused' >&2; exit 2"],
                       dump_env(tmp_path / "after.env"), dump_env(tmp_path / "failure.env"))
    with pytest.raises(HookError) as e:
        await hooks.around(runtime(rep), conf, SOURCE, backup)
    assert not called and not (tmp_path / "after.env").exists()
    assert e.value.exit_code == ExitCode.FAILED
    assert "before hook (sh) exited with code 2 (pg_dump: error: connection refused)" in e.value.message
    assert "nothing was recorded" in e.value.message
    failure = env_of(tmp_path / "failure.env")
    assert failure["LAFS_BACKUP_RESULT"] == "failed" and failure["LAFS_BACKUP_EXIT_CODE"] == "4"
    assert "connection refused" in failure["LAFS_BACKUP_ERROR"]
    assert "hook before: pg_dump: error: connection refused" in err.getvalue()  # its output, through the reporter


@pytest_twisted.ensureDeferred
async def test_a_failed_backup_runs_on_failure_with_its_exit_code(tmp_path):
    rep, out, err = reporter(json_mode=True)

    async def backup() -> Made:
        raise GridError(problem="the gateway does not answer")

    conf = HooksConfig((), dump_env(tmp_path / "after.env"),
                       ["sh", "-c", f'echo failed with $LAFS_BACKUP_EXIT_CODE; env -0 > "{tmp_path}/failure.env"'])
    with pytest.raises(GridError):
        await hooks.around(runtime(rep), conf, SOURCE, backup)
    failure = env_of(tmp_path / "failure.env")
    assert failure["LAFS_BACKUP_EXIT_CODE"] == str(int(ExitCode.GRID)) and failure["LAFS_BACKUP_RESULT"] == "failed"
    assert "does not answer" in failure["LAFS_BACKUP_ERROR"]
    assert not (tmp_path / "after.env").exists()
    # In JSON mode the hook's output is a JSON line, not raw text on stdout.
    assert '{"hook": "on_failure", "line": "failed with 3", "stream": "stdout", "type": "hook"}' in out.getvalue()


@pytest_twisted.ensureDeferred
async def test_a_failing_after_hook_is_a_warning_and_the_backup_stays(tmp_path):
    rep, out, err = reporter()
    b = backup_record()

    async def backup() -> Made:
        return made(b)

    conf = HooksConfig((), ["sh", "-c", "echo cannot unmount >&2; exit 1"], dump_env(tmp_path / "failure.env"))
    got = await hooks.around(runtime(rep), conf, SOURCE, backup)
    assert got.backup is b
    assert outcome(rep) == ExitCode.PARTIAL
    assert f"the after hook (sh) exited with code 1 (cannot unmount); the backup {b.short_id} stays" in err.getvalue()
    assert not (tmp_path / "failure.env").exists()  # the backup did not fail


@pytest_twisted.ensureDeferred
async def test_the_after_hook_of_a_skipped_backup_is_told_so(tmp_path):
    rep, out, err = reporter()
    last = backup_record(4)

    async def backup() -> Made:
        return made(None, kept=last)

    await hooks.around(runtime(rep), HooksConfig((), dump_env(tmp_path / "after.env")), SOURCE, backup)
    after = env_of(tmp_path / "after.env")
    assert after["LAFS_BACKUP_RESULT"] == "skipped" and after["LAFS_BACKUP_SNAPSHOT"] == last.short_id
    assert after["LAFS_BACKUP_EXIT_CODE"] == "0"


@pytest_twisted.ensureDeferred
async def test_no_hooks_no_processes(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    rep, out, err = reporter()
    b = backup_record()

    async def backup() -> Made:
        return made(b)

    # (a reactor that cannot run processes is never asked to when no hook is set)
    got = await hooks.around(Runtime(MemoryReactorClock(), rep), HooksConfig(), SOURCE, backup)
    assert got.backup is b
