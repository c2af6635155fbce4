"""Sealed records as values: the key pair, the keys' text form, entries sealed and opened, the host's
listing of its own sealed backups, and which backups fall out of the window."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lafs_backup import history
from lafs_backup.engine.sealing import beyond
from lafs_backup.errors import UsageError
from lafs_backup.history import Backup
from lafs_backup.repository import (KEY_PREFIX, SEALED_KEY_PREFIX, Record, RepoKey, is_sealed, open_entry,
                                    seal_entry, writer_name)
from lafs_backup.sealing import OpenKey, SealError

WRITECAP = "URI:DIR2:aaaaaaaaaaaaaaaaaaaaaaaaaa:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
CUSTODIAN = "URI:DIR2-RO:cccccccccccccccccccccccccc:dddddddddddddddddddddddddddddddddddddddddddddddddddd"


def recovery() -> RepoKey:
    k = OpenKey.generate()
    return RepoKey(WRITECAP, "pb://x@tcp:h:1/y", 2, 3, 3, k.public.text, k.text, CUSTODIAN)


@given(st.binary(max_size=4096))
def test_a_box_opens_with_the_private_half_only(data):
    k, other = OpenKey.generate(), OpenKey.generate()
    box = k.public.seal(data)
    assert data == k.open(box) and (len(data) < 16 or data not in box)
    with pytest.raises(SealError):
        other.open(box)
    with pytest.raises(SealError):
        k.open(box[:-1] + bytes([box[-1] ^ 1]))


def test_keys_round_trip_and_the_host_key_opens_nothing():
    rec = recovery()
    text = rec.encode()
    assert text.startswith(SEALED_KEY_PREFIX) and RepoKey.decode(text) == rec
    host = rec.host_key()
    assert host.sealed and not host.opens and host.custodian is None and host.writecap == WRITECAP
    assert RepoKey.decode(host.encode()) == host and rec.open not in host.encode()
    plain = RepoKey(WRITECAP)
    assert plain.encode().startswith(KEY_PREFIX) and not RepoKey.decode(plain.encode()).sealed
    # (a key never shows its caps or its private half when printed)
    assert WRITECAP not in repr(rec) and rec.open not in repr(rec) and rec.open not in repr(rec.opener())


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-3],                                              # cut short
    lambda t: t.replace(SEALED_KEY_PREFIX, KEY_PREFIX),            # a sealed key passed off as a plain one
    lambda t: RepoKey.encode(dataclasses.replace(RepoKey.decode(t), open=OpenKey.generate().text)),  # halves differ
])
def test_a_damaged_or_mismatched_key_is_refused_without_repeating_it(mangle):
    text = recovery().encode()
    with pytest.raises(UsageError) as e:
        RepoKey.decode(mangle(text))
    assert "URI:" not in str(e.value) and text[20:40] not in str(e.value)


def test_an_entry_sealed_by_the_host_opens_with_the_recovery_key_only():
    rec = recovery()
    meta = Record("URI:DIR2-CHK:x:y:2:3:10", "ann", b"/home/ann", 1.5e9, 7, ("daily",)).metadata()
    child, sealed = seal_entry(rec.host_key(), "URI:DIR2-CHK:x:y:2:3:10", meta, "w1", "r1")
    assert child.startswith("URI:LIT:") and is_sealed(sealed)
    shown = repr(sealed)
    assert "ann" not in shown and "daily" not in shown and "URI:" not in shown
    opened = open_entry(rec.opener(), sealed)
    assert opened == ("URI:DIR2-CHK:x:y:2:3:10", meta, "w1", "r1")
    assert open_entry(OpenKey.generate(), sealed) is None
    assert open_entry(rec.opener(), {"lafs_backup_sealed": 1, "box": "not base64!"}) is None


def test_a_sealed_repositorys_writer_names_tell_neither_host_nor_source():
    rec = recovery()
    name = writer_name("ann-laptop", b"/home/ann", rec)
    assert "ann" not in name and name == writer_name("ann-laptop", b"/home/ann", rec.host_key())
    assert name != writer_name("ann-laptop", b"/home/bob", rec) != writer_name("bob", b"/home/ann", rec)
    assert writer_name("ann-laptop", b"/home/ann").startswith("ann-laptop.")


def _b(i: int, record: str | None = "r", cap: str | None = None, sent: bool = True) -> Backup:
    return Backup(f"local:{i}", i, cap or f"URI:DIR2-CHK:{i}", b"/src", "src", 1000.0 + i, host="h", row=i,
                  writer="w" if record else None, record=f"{record}{i}" if record else None, sent=sent)


def test_the_window_keeps_the_newest_and_never_seals_what_the_owner_could_not_read_back():
    mine = [_b(1), _b(2, record=None), _b(3), _b(4, sent=False), _b(5)]
    keep, seal = beyond(mine, 1)
    # (2: the repository does not record it yet; 4: the custodian does not have its record yet)
    assert [b.row for b in keep] == [5] and [b.row for b in seal] == [1, 3]
    keep, seal = beyond(mine, 3)
    assert [b.row for b in keep] == [3, 4, 5] and [b.row for b in seal] == [1]
    sealed = dataclasses.replace(_b(1), cap=history.sealed_cap(_b(1)))
    assert beyond([sealed, _b(2)], 1)[1] == []  # (sealed already)


def test_a_host_lists_its_own_sealed_backups_from_its_cache_and_cannot_read_them():
    old = _b(1)
    sealed = dataclasses.replace(old, cap=history.sealed_cap(old))
    assert sealed.sealed and sealed.short_id == old.short_id and not old.sealed
    merged = history.merge([sealed, _b(2)], [], {}, None, [("w", "r1"), ("w", "r2"), ("other", "x")])
    assert [(b.id, b.sealed) for b in merged] == [("w/r1", True), ("w/r2", False)]
    j = history.as_json(merged[0])
    assert j["cap"] is None and j["sealed"] is True and j["id"] == old.short_id
    # Leases of sealed backups are the custodian's: no warning tells the host to renew them.
    assert history.expiring_warning([sealed], 1e12, 31) is None
