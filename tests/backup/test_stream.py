"""The stream source (``backup --stdin``): its name rules, its label, its walk from a pipe, and the
pure decisions of ``engine.stream`` (the request, how a command ended); no grid."""

from __future__ import annotations

import os
import signal
import stat
import threading

import pytest

from lafs_backup import arguments
from lafs_backup.backup.select import Selection
from lafs_backup.backup.source import recorded_as
from lafs_backup.backup.stream import StreamSource, checked_name, label_for
from lafs_backup.engine.stream import StreamRequest, how_it_ended, stream_request
from lafs_backup.errors import LafsBackupError, StreamCommandError, UsageError


@pytest.mark.parametrize("bad", ["", "a/b", "/x", ".", "..", "a\0b"])
def test_a_name_that_is_not_one_file_name_is_refused(bad):
    with pytest.raises(UsageError, match="--stdin-filename"):
        checked_name(bad)


def test_the_label_is_never_a_directory_and_source_names_it_back():
    assert checked_name("db.sql") == b"db.sql"
    assert label_for(b"db.sql") == b"stdin://db.sql"
    assert not label_for(b"db.sql").startswith(b"/")  # (every directory's label is absolute)
    assert recorded_as("stdin://db.sql") == b"stdin://db.sql"  # (--source stdin://db.sql)


def test_the_request_from_the_arguments():
    assert stream_request(False, False, None, ["/src"]) is None
    assert stream_request(True, False, None, []) == StreamRequest(b"stdin")
    assert stream_request(True, False, "db.sql", []) == StreamRequest(b"db.sql")
    argv = ["pg_dump", "-U", "me"]
    assert stream_request(False, True, None, argv) == StreamRequest(b"stdin", tuple(argv))
    with pytest.raises(UsageError, match="drop the SOURCE"):
        stream_request(True, False, None, ["/src"])
    with pytest.raises(UsageError, match="after '--'"):
        stream_request(False, True, None, [])
    with pytest.raises(UsageError, match="is a terminal"):
        stream_request(True, False, None, [], stdin_is_tty=True)
    with pytest.raises(UsageError, match="--exclude cannot be given with --stdin"):
        stream_request(True, False, None, [], others=["--exclude"])
    with pytest.raises(UsageError, match="give it with --stdin"):
        stream_request(False, False, "db.sql", [])
    with pytest.raises(UsageError, match="--stdin-filename"):
        stream_request(True, False, "a/b", [])


def test_how_a_command_ended():
    assert how_it_ended(0, None) is None
    assert how_it_ended(3, None) == "exited with code 3"
    assert how_it_ended(None, signal.SIGKILL) == "was ended by signal SIGKILL"
    e = StreamCommandError(program="pg_dump", problem="exited with code 3")
    assert "pg_dump" in e.message and "exited with code 3" in e.message and "nothing was recorded" in e.message


def test_a_command_after_dashes_keeps_its_own_options():
    ns = arguments.parse(["backup", "--tag", "t", "--stdin-from-command", "--", "sh", "-c", "echo hi", "--tag", "x"])
    assert ns.source == ["sh", "-c", "echo hi", "--tag", "x"] and ns.tag == ["t"] and ns.stdin_from_command
    assert arguments.parse(["backup", "a", "--", "-b"]).source == ["a", "-b"]


def _walk(source: StreamSource) -> list:
    warned: list = []
    return list(source.walk(Selection(), lambda p, m: warned.append((p, m)), lambda k, m: None))


def test_the_walk_reads_the_pipe_to_its_end_and_phase_two_reads_it_again(tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), 65536):
                f.write(data[i:i + 65536])
    t = threading.Thread(target=feed)
    t.start()
    src = StreamSource(b"db.sql", r, tmpdir=str(tmp_path), owns_fd=True)
    try:
        entries = _walk(src)
        t.join()
        assert [(e.kind, e.path) for e in entries] == [("f", b"db.sql"), ("d", b"")]
        f_entry = entries[0]
        assert f_entry.size == len(data) and stat.S_IMODE(f_entry.mode) == 0o600 and f_entry.uid == os.getuid()
        assert src.lstat(b"db.sql").st_size == len(data) and stat.S_ISDIR(src.lstat(b"").st_mode)
        for _ in range(2):  # (read twice, as a large file is: its hash, then its upload)
            f = src.open(b"db.sql")
            try:
                got = b"".join(f.pread(1 << 20, off) for off in range(0, len(data), 1 << 20))
            finally:
                f.close()
            assert got == data
        assert _walk(src) == entries  # a walk made again reads nothing more
        with pytest.raises(FileNotFoundError):
            src.lstat(b"other")
        assert os.listdir(tmp_path) == []  # the copy has no name
    finally:
        src.close()
    with pytest.raises(OSError):
        os.fstat(r)  # an owned pipe is closed once read


def test_a_failed_command_stops_the_walk_before_any_entry():
    r, w = os.pipe()
    os.write(w, b"half a dump")
    os.close(w)

    def failed() -> None:
        raise StreamCommandError(program="pg_dump", problem="exited with code 1")
    src = StreamSource(b"stdin", r, finished=failed, owns_fd=True)
    with pytest.raises(LafsBackupError, match="pg_dump"):
        _walk(src)
    with pytest.raises(FileNotFoundError):
        src.open(b"stdin")
    src.close()


def test_each_stream_has_its_own_stat_so_the_cache_never_takes_it_for_another():
    stats = []
    for _ in range(2):
        r, w = os.pipe()
        os.write(w, b"same bytes")
        os.close(w)
        src = StreamSource(b"stdin", r, owns_fd=True)
        _walk(src)
        stats.append(src.lstat(b"stdin"))
        src.close()
    a, b = stats
    assert (a.st_ino, a.st_mtime_ns) != (b.st_ino, b.st_mtime_ns)


def test_a_stream_that_cannot_be_read_is_an_error_naming_it(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # (reading a directory: EISDIR)
    src = StreamSource(b"stdin", fd, owns_fd=True)
    with pytest.raises(LafsBackupError, match=r"Cannot read the stream to back up \(standard input\)"):
        _walk(src)
    src.close()
    with pytest.raises(OSError):
        os.fstat(fd)
