"""One snapshot id everywhere: an id or its start, 'latest', a generation number, the long form of an
id, or a cap all name the same backup; an all-digits word is a generation number when one has it."""

from __future__ import annotations

import pytest

from lafs_backup import history
from lafs_backup.errors import SnapshotError, UsageError
from lafs_backup.history import Backup


def make(n: int) -> list[Backup]:
    return [Backup(f"w/r{i}", i, f"URI:DIR2-CHK:{i}", b"/src", "src", 1000.0 + i, host="h", row=i)
            for i in range(1, n + 1)]


def test_every_form_names_the_same_backup():
    backups = make(5)
    b = backups[2]
    for ref in (b.short_id, b.short_id[:4], b.id, str(b.generation), b.cap):
        assert history.resolve(backups, ref) is b, ref
    assert history.resolve(backups, "latest") is backups[-1]


def test_an_all_digits_word_is_a_generation_when_one_has_it_else_an_id():
    backups = make(3000)
    by_digits = next(b for b in backups if b.short_id[:5].isdigit() and int(b.short_id[:5]) > 3000)
    assert history.resolve(backups, by_digits.short_id[:5]) is by_digits
    assert history.resolve(backups, "1234").generation == 1234  # a generation wins
    with pytest.raises(SnapshotError, match="generation"):
        history.resolve(backups, "0")


def test_an_ambiguous_or_unknown_id_says_so():
    backups = make(3000)
    with pytest.raises(SnapshotError, match="give more of it"):
        history.resolve(backups, _shared_prefix(backups))
    with pytest.raises(SnapshotError, match="no such backup"):
        history.resolve(backups, "w/nosuch")
    with pytest.raises(UsageError, match="an id"):
        history.resolve(backups, "yesterday")


def _shared_prefix(backups: list[Backup]) -> str:
    """A 4-character start that two ids share."""
    seen: dict[str, Backup] = {}
    for b in backups:
        if b.short_id[:4] in seen and not b.short_id[:4].isdigit():
            return b.short_id[:4]
        seen[b.short_id[:4]] = b
    raise AssertionError("no two ids share 4 characters")
