"""A directory's body (snapshot.dir_body), written one child at a time, is byte for byte the canonical
JSON of the whole: the same children give the same body, hence the same name, as before."""

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lafs_backup.store.snapshot import Child, dir_body, display_name


def whole(children) -> bytes:
    """The body as one canonical JSON document of every child (what dir_body must equal)."""
    out = {}
    for child in sorted(children, key=lambda c: c.name):
        key = base = display_name(child.name)
        n = 0
        while key in out or key == "":
            n += 1
            key = f"{base}~{n}"
        meta = dict(child.metadata)
        if key.encode("utf-8") != child.name:
            meta["name_b64"] = base64.b64encode(child.name).decode("ascii")
        out[key] = ["dirnode" if child.is_dir else "filenode", {"ro_uri": child.cap, "metadata": meta}]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


names = st.one_of(
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b),
    st.text(min_size=1, max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(["e\u0301", "\u00e9", "a\u2028b", 'q"uote', "back\\slash", "\x7f", "~1", "Z", "a"]).map(
        str.encode),
)
values = st.one_of(st.integers(-2**63, 2**63), st.text(max_size=6), st.booleans(), st.none(),
                   st.lists(st.integers(0, 9), max_size=3))
metadata = st.dictionaries(st.sampled_from(["mode", "mtime_ns", "user", "type", "size", "é", "Z", "a"]), values,
                           max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.text(max_size=10), metadata), max_size=12))
def test_written_one_child_at_a_time_it_is_the_whole_document(entries):
    children = [Child(name, "URI:CHK:" + cap, meta) for name, cap, meta in entries]
    assert dir_body(children) == whole(children)


def test_a_directory_of_colliding_and_undecodable_names():
    children = [Child(n, f"URI:LIT:{i}", {"type": "file"}) for i, n in enumerate(
        [b"e\xcc\x81", b"\xc3\xa9", b"\xff", b"\\xff", b"~1", b"a", b"A"])]
    body = dir_body(children)
    assert body == whole(children)
    assert len(json.loads(body)) == 7


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.text(max_size=10), metadata, st.booleans()), max_size=12))
def test_edges_held_compacted_write_the_same_body(entries):
    """Files' edges wait for their directory compacted (already JSON): the body and the names record
    are byte for byte those of the edges as they were, whatever the names (colliding, undecodable)."""
    from lafs_backup.store.snapshot import child_names, compact

    children = [Child(name, "URI:CHK:" + cap, meta) for name, cap, meta, _ in entries]
    held = [compact(c) if squeeze else c for c, (*_, squeeze) in zip(children, entries)]
    assert dir_body(held) == dir_body(children) == whole(children)
    assert child_names(held) == child_names(children)
