"""Lease manifests (custodian/manifest.py): whole or delta, chains resolved, verify caps only, envelopes
that name no host or source."""

from __future__ import annotations

import os

import pytest
from allmydata import uri
from hypothesis import given, settings
from hypothesis import strategies as st

from lafs_backup.custodian.manifest import (Last, Manifest, ManifestError, folder_name, forget_envelope,
                                            is_folder, manifest_envelope, plan, read_envelope, read_forget,
                                            resolve)


def verify_cap(i: int) -> str:
    chk = uri.CHKFileURI(i.to_bytes(16, "big"), bytes(32), 2, 3, 1000 + i)
    return chk.get_verify_cap().to_string().decode()


def read_cap(i: int) -> str:
    return uri.CHKFileURI(i.to_bytes(16, "big"), bytes(32), 2, 3, 1000 + i).to_string().decode()


def manifest_cap(i: int) -> str:
    return read_cap(10_000 + i)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sets(st.integers(0, 60), max_size=30), min_size=1, max_size=40), st.integers(1, 8))
def test_a_chain_resolves_to_every_backups_objects(backups, full_every):
    """Whatever the backups reference, each manifest's chain resolves to exactly its objects; no chain
    is longer than ``full_every``."""
    store: dict[str, Manifest] = {}
    last = None
    for n, objects in enumerate(backups):
        caps = {verify_cap(i) for i in objects}
        m = plan(caps, last, full_every)
        cap = manifest_cap(n)
        store[cap] = Manifest.decode(m.encode())
        assert store[cap] == m and m.depth < full_every and m.whole == (m.depth == 0)
        assert m.whole == (n % full_every == 0)
        last = Last(cap, frozenset(caps), m.depth)
    memo: dict = {}
    for n, objects in enumerate(backups):
        assert resolve(manifest_cap(n), store.__getitem__, memo) == {verify_cap(i) for i in objects}
        assert resolve(manifest_cap(n), store.__getitem__) == {verify_cap(i) for i in objects}


def test_a_small_change_makes_a_small_manifest():
    caps = {verify_cap(i) for i in range(500)}
    first = plan(caps, None)
    second = plan(caps | {verify_cap(999)}, Last(manifest_cap(0), frozenset(caps), first.depth))
    assert second.added == {verify_cap(999)} and not second.removed and second.objects == 501
    assert len(second.encode()) * 100 < len(first.encode())


@pytest.mark.parametrize("bad", ["read", "previous", "junk", "not-json"])
def test_a_manifest_with_a_cap_that_reads_is_refused_without_showing_it(bad):
    good = Manifest(frozenset({verify_cap(1)}), objects=1)
    body = {"read": Manifest(frozenset({verify_cap(1), read_cap(2)}), objects=2).encode(),
            "previous": Manifest(frozenset(), previous="URI:DIR2:abc:def", objects=0, depth=1).encode(),
            "junk": good.encode().replace(b"URI:CHK-Verifier:", b"URI:XYZ:"),
            "not-json": b"\x00hello"}[bad]
    with pytest.raises(ManifestError) as e:
        Manifest.decode(body)
    assert read_cap(2) not in str(e.value) and "abc" not in str(e.value)


def test_a_chain_that_does_not_add_up_is_refused():
    whole = Manifest(frozenset({verify_cap(1)}), objects=1)
    liar = Manifest(frozenset({verify_cap(2)}), previous=manifest_cap(0), objects=5, depth=1)
    store = {manifest_cap(0): whole, manifest_cap(1): liar}
    with pytest.raises(ManifestError, match="resolves to 2 objects"):
        resolve(manifest_cap(1), store.__getitem__)
    loop = {manifest_cap(0): Manifest(frozenset(), previous=manifest_cap(0), depth=1)}
    with pytest.raises(ManifestError, match="longer than"):
        resolve(manifest_cap(0), loop.__getitem__)


def test_envelopes_name_the_record_alone():
    repo = "URI:DIR2:" + os.urandom(8).hex()
    folder = folder_name(repo, "ann.3f2a9c0d51e7")
    assert is_folder(folder) and "ann" not in folder
    assert folder != folder_name("URI:DIR2:other", "ann.3f2a9c0d51e7")  # keyed: no guess can be confirmed
    record = "20261202T023012.481516Z.g41"
    env = manifest_envelope(record, 1234)
    assert set(env) == {"lafs_backup_manifest", "record", "size"}
    assert read_envelope(env, record) == 1234 and read_envelope(env, "other") is None
    assert read_forget(forget_envelope(folder, record)) == (folder, record)
    assert read_forget({"lafs_backup_forget": 1, "folder": "../x", "record": record}) is None
