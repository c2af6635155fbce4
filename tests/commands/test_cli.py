"""The CLI in-process: usage errors, exit codes, dump-config, and no tracebacks for bad input."""

from __future__ import annotations

import io

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from lafs_backup.cli import run
from lafs_backup.errors import ExitCode


def call(argv):
    """Run commands that never wait on the reactor synchronously."""
    out, err = io.StringIO(), io.StringIO()
    coro = run(None, argv, out, err)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value, out.getvalue(), err.getvalue()
    raise AssertionError("command waited on the reactor")


def test_dump_config_shows_the_merge(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("operation:\n  jobs: 3\n")
    code, out, _ = call(["-c", str(f), "dump-config", "-o", "grid.nodes=4"])
    assert code == 0
    tree = yaml.safe_load(out)
    assert tree["operation"]["jobs"] == 3 and tree["grid"]["nodes"] == 4
    assert tree["destination"]["url"] is None


def test_options_work_after_the_command_too(tmp_path):
    code, out, _ = call(["dump-config", "--url", "http://h:1/uri"])
    assert code == 0 and yaml.safe_load(out)["destination"]["url"] == "http://h:1/uri"


@pytest.mark.parametrize("argv, fragment", [
    ([], "a command is required"),
    (["frobnicate"], "is not a command"),
    (["restore", "latest"], "--target"),
    (["-o", "nokey", "dump-config"], "expected KEY=VALUE"),
    (["-o", "operation.jobs=x", "dump-config"], "operation.jobs"),
    (["-c", "/nonexistent.yaml", "list"], "does not exist"),
    (["backup", "--queue-only", "--reuse-queue"], "not allowed with"),
])
def test_usage_errors_are_one_line_with_code_2(argv, fragment):
    code, _, err = call(argv)
    assert code == ExitCode.USAGE
    assert fragment in err
    assert "Traceback" not in err


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["backup", "restore", "list", "grid", "dump-config", "-c", "-o", "--url",
                                 "--json", "-t", "x", "=", "--queue-only", "--reuse-queue", "latest",
                                 "up", "--nodes", "-1", "\udcff"]), max_size=5))
def test_fuzzed_arguments_never_give_a_traceback(argv):
    if any(a in ("backup", "restore", "list", "grid") for a in argv):
        # Those would reach the grid; only argument handling is fuzzed here.
        argv = ["-c", "/nonexistent.yaml", *argv]
    code, out, err = call(argv)
    assert "Traceback" not in err
    assert code in (0, ExitCode.USAGE)


def test_the_console_command_with_no_command_is_a_usage_error(capsys):
    from lafs_backup.cli import main

    assert main([]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "a command is required" in err and "usage:" in err
    assert main(["--help"]) == 0


def test_the_reactor_gets_the_configured_threads():
    """Blocking work runs on ``operation.threads`` threads: the reactor's pool is sized before the
    command runs (null: the usable cores, at least 2)."""
    class Reactor:
        sizes: list[int] = []

        def suggestThreadPoolSize(self, n):  # noqa: N802 (Twisted's name)
            self.sizes.append(n)

    out, err = io.StringIO(), io.StringIO()
    coro = run(Reactor(), ["-o", "operation.threads=3", "dump-config"], out, err)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == 0 and Reactor.sizes == [3]
    coro = run(Reactor(), ["dump-config"], out, err)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert len(Reactor.sizes) == 2 and Reactor.sizes[1] >= 2
    coro = run(Reactor(), ["-o", "source.path=s3://bucket/prefix", "dump-config"], out, err)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert Reactor.sizes[2] >= 8  # (a source read over the network: its reads wait on it)
