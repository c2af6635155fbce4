"""The queue format: any name bytes round-trip; incomplete or foreign queues are refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, strategies as st

from lafs_backup.store.entry import Entry
from lafs_backup.errors import QueueError
from lafs_backup.backup.queue import QueueReader, escape, format_entry, parse_entry, unescape, write_queue

names = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
paths = st.lists(names, min_size=1, max_size=4).map(b"/".join)


@given(st.binary(max_size=200))
def test_escape_round_trips_any_bytes(raw):
    text = escape(raw)
    assert "\n" not in text and "\t" not in text and "\r" not in text
    assert unescape(text) == raw


@pytest.mark.parametrize("raw, shown", [
    (b"plain.txt", "plain.txt"),
    ("caf\u00e9".encode(), "caf\u00e9"),
    (b"new\nline", "new\\x0aline"),
    (b"tab\there", "tab\\x09here"),
    (b"back\\slash", "back\\\\slash"),
    (b" lead and trail ", "\\x20lead and trail\\x20"),
    (b"bad\xffutf8", "bad\\xffutf8"),
])
def test_escape_stays_readable(raw, shown):
    assert escape(raw) == shown


@given(paths, st.integers(0, 2**32), st.integers(0, 2**63), st.one_of(st.none(), st.binary(max_size=80)))
def test_entry_lines_round_trip(path, uid, mtime, target):
    kind = "l" if target is not None else "f"
    e = Entry(kind, path, 0o100644 if kind == "f" else 0o120777, uid, uid + 1, 123, mtime, mtime + 1,
              5, 99, 1, target, (("x", b"v\n"),))
    assert parse_entry(format_entry(e)) == e


def test_root_is_written_as_dot():
    e = Entry("d", b"", 0o40755, 0, 0, 0, 1, 1, 1, 1, 2)
    line = format_entry(e)
    assert line.split("\t")[1] == "."
    assert parse_entry(line) == e


@pytest.mark.parametrize("line", [
    "f\tonly\tthree",
    "q\ta\t100644\t0\t0\t0\t0\t0\t0\t0\t1",
    "f\t../x\t100644\t0\t0\t0\t0\t0\t0\t0\t1",
    "f\t/abs\t100644\t0\t0\t0\t0\t0\t0\t0\t1",
    "f\ta\tnotoctal\t0\t0\t0\t0\t0\t0\t0\t1",
    "f\ta\t100644\t0\t0\t0\t0\t0\t0\t0\t1\tnokey",
    "l\ta\t120777\t0\t0\t0\t0\t0\t0\t0\t1",
    "f\ta\\q\t100644\t0\t0\t0\t0\t0\t0\t0\t1",
])
def test_bad_lines_are_value_errors(line):
    with pytest.raises(ValueError):
        parse_entry(line)


@given(st.text(max_size=200))
def test_parser_never_crashes_otherwise(line):
    try:
        parse_entry(line)
    except ValueError:
        pass


def _entries():
    yield Entry("f", b"d/a\nb", 0o100600, 1, 2, 3, 4, 5, 6, 7, 1)
    yield Entry("d", b"d", 0o40755, 1, 2, 0, 4, 5, 6, 8, 2)
    yield Entry("d", b"", 0o40755, 1, 2, 0, 4, 5, 6, 9, 3)


def test_write_is_atomic_private_and_verified(tmp_path):
    q = tmp_path / "q"
    assert write_queue(str(q), b"/src", _entries()) == 3
    assert oct(q.stat().st_mode & 0o777) == "0o600"
    with QueueReader(str(q), expect_source=b"/src") as r:
        assert list(r) == list(_entries())
    with pytest.raises(QueueError, match="made for source"):
        QueueReader(str(q), expect_source=b"/other")


def test_failed_write_keeps_the_previous_queue(tmp_path):
    q = tmp_path / "q"
    write_queue(str(q), b"/src", _entries())
    before = q.read_bytes()

    def broken():
        yield from _entries()
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_queue(str(q), b"/src", broken())
    assert q.read_bytes() == before
    assert os.listdir(tmp_path) == ["q"]


def test_truncated_queue_is_refused(tmp_path):
    q = tmp_path / "q"
    write_queue(str(q), b"/src", _entries())
    data = q.read_bytes()
    q.write_bytes(data[: len(data) // 2])
    with pytest.raises(QueueError, match="incomplete"):
        QueueReader(str(q))
    q.write_bytes(b"hello\n")
    with pytest.raises(QueueError, match="not a lafs-backup queue"):
        QueueReader(str(q))
    with pytest.raises(QueueError, match="does not exist"):
        QueueReader(str(tmp_path / "missing"))


def test_count_mismatch_is_detected(tmp_path):
    q = tmp_path / "q"
    write_queue(str(q), b"/src", _entries())
    lines = q.read_text().splitlines(keepends=True)
    q.write_text("".join(lines[:1] + lines[2:]))  # drop one entry, keep the footer
    with pytest.raises(QueueError, match="end marker says 3"):
        list(QueueReader(str(q)))
