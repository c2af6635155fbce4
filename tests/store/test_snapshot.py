"""The grid-side format: LIT caps, exact names through NFC normalisation, deterministic bodies."""

from __future__ import annotations

import base64
import json
import unicodedata

import pytest
from hypothesis import given, strategies as st

from lafs_backup.store.entry import Entry
from lafs_backup.caps import lit_cap, lit_data
from lafs_backup.store.snapshot import BadSnapshot, Child, dir_body, edge_metadata, parse_children, salted_body


def test_lit_caps_match_tahoe():
    assert lit_cap(b"hello") == "URI:LIT:nbswy3dp"  # measured against the gateway
    assert lit_cap(b"") == "URI:LIT:"
    with pytest.raises(ValueError):
        lit_cap(b"x" * 56)


@given(st.binary(max_size=55))
def test_lit_round_trip(data):
    assert lit_data(lit_cap(data)) == data


def _listing(body: bytes):
    """What the gateway gives back: keys NFC-normalised, metadata verbatim."""
    children = {unicodedata.normalize("NFC", k): v for k, v in json.loads(body).items()}
    return ["dirnode", {"children": children}]


def _child(name: bytes, i: int = 0) -> Child:
    e = Entry("f", name, 0o100644, 0, 0, 1, 1, 1, 1, 1, 1)
    return Child(name, lit_cap(bytes([i % 256])), edge_metadata(e))


def test_nfc_and_nfd_spellings_stay_two_files():
    nfc, nfd = "caf\u00e9".encode(), "cafe\u0301".encode()
    body = dir_body([_child(nfc, 1), _child(nfd, 2)])
    back = {n.name: n.cap for n in parse_children(_listing(body))}
    assert back == {nfc: lit_cap(b"\x01"), nfd: lit_cap(b"\x02")}


names = st.binary(min_size=1, max_size=30).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


@given(st.lists(names, unique=True, max_size=8))
def test_any_names_come_back_exactly(ns):
    body = dir_body([_child(n, i) for i, n in enumerate(ns)])
    back = [n.name for n in parse_children(_listing(body))]
    assert back == sorted(ns)


def test_body_is_deterministic_and_covers_names_and_metadata():
    a = dir_body([_child(b"x"), _child(b"y")])
    assert a == dir_body([_child(b"y"), _child(b"x")])
    assert a != dir_body([_child(b"x"), _child(b"z")])  # a rename changes the directory
    e = Entry("f", b"x", 0o100600, 0, 0, 1, 1, 1, 1, 1, 1)
    assert a != dir_body([Child(b"x", lit_cap(b"\x00"), edge_metadata(e)), _child(b"y")])


@pytest.mark.parametrize("name", [b"..", b".", b"a/b", b"", b"a\0b"])
def test_unsafe_names_are_refused(name):
    meta = {"name_b64": base64.b64encode(name).decode()}
    listing = ["dirnode", {"children": {"x": ["filenode", {"ro_uri": "URI:LIT:", "metadata": meta}]}}]
    with pytest.raises(BadSnapshot):
        parse_children(listing)


def test_duplicate_exact_names_are_refused():
    meta = {"name_b64": base64.b64encode(b"same").decode()}
    listing = ["dirnode", {"children": {
        "a": ["filenode", {"ro_uri": "URI:LIT:", "metadata": meta}],
        "b": ["dirnode", {"ro_uri": "URI:DIR2-LIT:", "metadata": meta}]}}]
    with pytest.raises(BadSnapshot, match="twice"):
        parse_children(listing)


def test_salted_directory_body_differs_only_in_an_unread_key():
    e = Entry("f", b"a", 0o100644, 1, 2, 3, 4, 5, 6, 7, 1)
    children = [Child(b"b", "URI:LIT:aa", edge_metadata(e)), Child(b"a", "URI:LIT:bb", edge_metadata(e))]
    body = dir_body(children)
    salted = salted_body(body, "00ff")
    assert salted != body and salted_body(body, "01ff") != salted
    plain, mixed = json.loads(body), json.loads(salted)
    assert mixed["a"][1]["metadata"].pop("salt") == "00ff"  # the first entry carries it
    assert mixed == plain
    assert salted_body(b"{}", "00ff") == b"{}"  # nothing to salt: stored as a LIT cap anyway


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)


@given(_json_values)
def test_the_edge_encoder_made_once_writes_the_canonical_bytes(value):
    """Directory bodies encode each edge with an encoder made once: the bytes are canonical_json's, for
    any JSON value (names and metadata name the same directory, by their hash, run after run)."""
    from lafs_backup.store import snapshot

    edge = ["filenode", {"ro_uri": "URI:CHK:x", "metadata": value}]
    assert snapshot._edge_json(edge).encode("utf-8") == snapshot.canonical_json(edge)
    if isinstance(value, str):
        assert snapshot._string(value) == snapshot._canonical(value)
