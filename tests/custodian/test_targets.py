"""What the custodian takes (custodian/targets.py): verify caps and storage indexes, never a cap that reads."""

from __future__ import annotations

import os

import pytest
from allmydata import uri

from lafs_backup.custodian.targets import (Kind, NotAVerifyCap, ReadCapRefused, Target, target_of, target_of_index,
                                           verify_cap_of)


def caps() -> dict[str, str]:
    """One read (or write) cap of every kind Tahoe makes, with made-up keys."""
    key, ueb, fp = os.urandom(16), os.urandom(32), os.urandom(32)
    chk = uri.CHKFileURI(key, ueb, 2, 3, 12345)
    sdmf = uri.WriteableSSKFileURI(os.urandom(16), fp)
    mdmf = uri.WriteableMDMFFileURI(os.urandom(16), fp)
    return {
        "chk": chk.to_string().decode(),
        "dir2-chk": uri.ImmutableDirectoryURI(chk).to_string().decode(),
        "sdmf": sdmf.to_string().decode(),
        "sdmf-ro": sdmf.get_readonly().to_string().decode(),
        "mdmf": mdmf.to_string().decode(),
        "mdmf-ro": mdmf.get_readonly().to_string().decode(),
        "dir2": uri.DirectoryURI(sdmf).to_string().decode(),
        "dir2-ro": uri.DirectoryURI(sdmf).get_readonly().to_string().decode(),
        "dir2-mdmf": uri.MDMFDirectoryURI(mdmf).to_string().decode(),
        "dir2-mdmf-ro": uri.MDMFDirectoryURI(mdmf).get_readonly().to_string().decode(),
    }


def test_every_verify_cap_gives_its_storage_index_and_kind():
    for name, cap in caps().items():
        v = verify_cap_of(cap)
        assert v is not None and "Verifier" in v, name
        t = target_of(v)
        assert t.storage_index == uri.from_string(cap).get_storage_index(), name
        assert t.kind is (Kind.IMMUTABLE if name in ("chk", "dir2-chk") else Kind.MUTABLE), name
        # The verify cap of a verify cap is itself.
        assert verify_cap_of(v) == v


def test_an_immutable_verify_cap_tells_its_encoding():
    c = caps()
    for name in ("chk", "dir2-chk"):
        t = target_of(verify_cap_of(c[name]))
        assert (t.needed, t.total) == (2, 3), name
    assert target_of(verify_cap_of(c["dir2"])).total is None


@pytest.mark.parametrize("name", sorted(caps()) + ["lit", "dir2-lit"])
def test_a_cap_that_reads_is_refused_without_repeating_it(name):
    lit = uri.LiteralFileURI(b"some bytes")
    cap = {**caps(), "lit": lit.to_string().decode(),
           "dir2-lit": uri.LiteralDirectoryURI(lit).to_string().decode()}[name]
    with pytest.raises(ReadCapRefused) as e:
        target_of(cap)
    text = str(e.value)
    assert "verify caps and storage indexes only" in text
    assert cap not in text and cap.split(":")[2] not in text
    assert text.startswith("The custodian") and "URI:" in text  # its type is named: "a URI:CHK: cap"
    with pytest.raises(ReadCapRefused):
        target_of_index(cap)  # a cap handed where a storage index goes is judged as a cap


def test_a_lit_cap_has_nothing_to_keep():
    assert verify_cap_of(uri.LiteralFileURI(b"tiny").to_string().decode()) is None


@pytest.mark.parametrize("value", ["", "hello", "pb://abc@tcp:1/x", "URI:CHK-Verifier:short", "URI:SECRET:xyz"])
def test_other_values_are_not_verify_caps(value):
    with pytest.raises(NotAVerifyCap) as e:
        target_of(value)
    assert value not in str(e.value) or value == ""


def test_bare_storage_indexes():
    si = os.urandom(16)
    t = target_of_index(si)
    assert t == Target(si, Kind.UNKNOWN)
    assert target_of_index(t.name) == t and len(t.name) == 26
    assert target_of_index(t.name, Kind.MUTABLE).kind is Kind.MUTABLE
    assert repr(t) == f"Target({t.name}, unknown)"
    for bad in (b"short", "notbase32!" * 3, t.name + "a"):
        with pytest.raises(NotAVerifyCap):
            target_of_index(bad)
