"""The pure decisions of ``rewrite`` (engine/prune.py): edges taken exactly as made, the objects kept
files use, which index records each chunk keeps."""

from __future__ import annotations

import json

from lafs_backup.engine import prune
from lafs_backup.store.snapshot import Child, dir_body


def meta(kind: str, **more: object) -> dict:
    return {"lafs_backup": 1, "type": kind, "mode": 0o644, "mtime_ns": 1, "ctime_ns": 1, **more}


CHILDREN = [
    Child(b"a.txt", "URI:LIT:", meta("file", size=0)),
    Child(b"caf\xc3\xa9", "URI:CHK:plain", meta("file", size=9000)),
    Child(b"bad\xff", "URI:LIT:mfrgg", meta("file", size=3)),
    Child(b"packed", "URI:DIR2-CHK:marker", meta("file", size=50, pack={"cap": "URI:CHK:pack", "offset": 0,
                                                                           "length": 50})),
    Child(b"zipped", "URI:LIT:", meta("file", size=5000, enc="zstd", object="URI:CHK:obj")),
    Child(b"sub", "lafs-backup-dir:00", meta("dir")),
]


def listing(body: bytes) -> list:
    return ["dirnode", {"children": json.loads(body)}]


def test_a_directory_that_loses_nothing_is_its_own_body_again_and_names_are_exact():
    body = dir_body(CHILDREN)
    edges = prune.edges_of(listing(body))
    assert prune.body_of(edges) == body
    assert sorted(e.name for e in edges) == sorted(c.name for c in CHILDREN)
    # Tahoe's own link times, where a gateway's listing adds them, are not part of it.
    raw = json.loads(body)
    raw["a.txt"][1]["metadata"]["tahoe"] = {"linkcrtime": 1.0}
    assert prune.body_of(prune.edges_of(["dirnode", {"children": raw}])) == body
    # One edge less: the body dir_body makes of the rest.
    kept = [e for e in edges if e.name != b"packed"]
    assert prune.body_of(kept) == dir_body([c for c in CHILDREN if c.name != b"packed"])


def test_the_objects_a_kept_file_uses():
    by = {e.name: e for e in prune.edges_of(listing(dir_body(CHILDREN)))}
    assert prune.objects_of(by[b"packed"], True) == ["URI:CHK:pack"]
    assert prune.objects_of(by[b"zipped"], False) == ["URI:CHK:obj"]
    assert prune.objects_of(by["café".encode()], True) == ["URI:CHK:plain"]  # linked from objects/ alone
    assert prune.objects_of(by["café".encode()], False) == []  # (the tree links it)
    assert prune.objects_of(by[b"a.txt"], True) == [] and prune.objects_of(by[b"sub"], True) == []
    assert by[b"sub"].is_dir and not by[b"packed"].is_dir and by[b"packed"].size == 50


def test_objects_directory_keeps_only_what_is_used():
    linked = {"pack-000000": "P1", "pack-000001": "P2", "object-000000": "O1"}
    assert prune.objects_kept(linked, {"P1", "P2", "O1", "X"}) is None
    assert prune.objects_kept(linked, {"P2"}) == (["P2"], [])


def test_index_chunks_keep_their_live_records_and_take_the_new_ones_in_place():
    records = [("d1", b"{}", b""), ("old", b"{1}", b"n"), ("d2", b"{}", b"")]
    assert prune.chunk_kept(records, {"d1", "old", "d2"}, {}) is None
    assert prune.chunk_kept(records, {"d1", "new", "d2"}, {"old": [("new", b"{2}", b"m")]}) == [
        ("d1", b"{}", b""), ("new", b"{2}", b"m"), ("d2", b"{}", b"")]
    # A record of a directory the new tree does not hold (removed, or an older version) goes.
    assert prune.chunk_kept(records, {"d1"}, {}) == [("d1", b"{}", b"")]
