"""Paths as printed and as typed back: one escaping and its exact inverse."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from lafs_backup.errors import UsageError
from lafs_backup.names import parsed, shown


@given(st.binary(max_size=64))
def test_parsed_undoes_shown_for_any_bytes(raw: bytes) -> None:
    assert parsed(shown(raw)) == raw


@given(st.binary(max_size=32), st.binary(max_size=32))
def test_printed_names_are_unambiguous(a: bytes, b: bytes) -> None:
    line = shown(a)
    assert line.isprintable() and "\n" not in line
    assert (shown(a) == shown(b)) == (a == b)


@given(st.lists(st.binary(max_size=16).filter(lambda n: b"/" not in n), min_size=1, max_size=4))
def test_a_path_is_its_names_joined(parts: list[bytes]) -> None:
    assert shown(b"/".join(parts)) == "/".join(map(shown, parts))


@pytest.mark.parametrize("raw, line", [
    (b"caf\xc3\xa9.txt", "caf\u00e9.txt"),  # UTF-8: as it is
    (b"caf\xe9.txt", "caf\\xe9.txt"),  # not UTF-8: the byte
    (b"back\\slash", "back\\\\slash"),  # a backslash, doubled
    (b"a\nb\x7f", "a\\x0ab\\x7f"),  # control characters
    (b"tab\there", "tab\\x09here"),
])
def test_examples(raw: bytes, line: str) -> None:
    assert shown(raw) == line and parsed(line) == raw


@pytest.mark.parametrize("bad", ["back\\slash", "end\\", "x\\x4", "a\\q\\\\b"])
def test_a_lone_backslash_is_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        parsed(bad)


def test_a_name_typed_as_is_is_its_bytes() -> None:
    assert parsed("notes/todo.txt") == b"notes/todo.txt"
    assert parsed("caf\udce9.txt") == b"caf\xe9.txt"  # (argv's surrogateescape)
