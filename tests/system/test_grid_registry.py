"""The registry of grids: a grid is known again by most of its storage servers, however its gateway is
reached, as it grows or loses servers; another grid sharing a server is another grid; the file."""

from __future__ import annotations

import os
import stat
import threading

from hypothesis import given
from hypothesis import strategies as st

from lafs_backup.system import grids
from lafs_backup.system.grids import Grid, identify

A = ["v0-a1", "v0-a2", "v0-a3", "v0-a4"]
nodeids = st.sets(st.text("abcdefgh", min_size=1, max_size=4).map(lambda t: "v0-" + t), min_size=1, max_size=8)


def test_a_grid_is_known_again_by_most_of_its_servers():
    first = identify(A, [])
    assert first.id.startswith("g") and len(first.id) == 17 and first.servers == frozenset(A)
    assert identify(A[:1], [first]).id == first.id  # a gateway that knows one of them so far
    grown = identify([*A[1:], "v0-a5"], [first])  # one server gone, one new
    assert grown.id == first.id and grown.servers == frozenset([*A, "v0-a5"])
    # Half is not most: a grid that shares servers with it (announced to both introducers) is another.
    assert identify(["v0-a1", "v0-a2", "v0-b1", "v0-b2"], [first]).id != first.id
    assert identify(["v0-b1"], [first]).id != first.id
    assert identify(A, []).id == first.id  # the registry lost: the same servers give the same id


@given(nodeids, nodeids)
def test_any_part_of_a_known_grid_is_that_grid_and_a_stranger_is_not(servers, others):
    known = identify(sorted(servers), [])
    part = sorted(servers)[: max(1, len(servers) // 2)]
    assert identify(part, [known]).id == known.id
    strangers = others - servers
    if strangers:
        assert identify(sorted(strangers), [known]).id != known.id


def test_a_url_leads_to_the_grid_it_led_to_last():
    a, b = Grid("ga", frozenset(["v0-a"])), Grid("gb", frozenset(["v0-b"]))
    known = grids.with_url([a, b], a, "http://127.0.0.1:3456/")
    assert grids.by_url(known, "http://127.0.0.1:3456/").id == "ga"
    known = grids.with_url(known, b, "http://127.0.0.1:3456/")  # the gateway there now fronts b
    assert grids.by_url(known, "http://127.0.0.1:3456/").id == "gb"
    assert grids.by_url(known, "http://localhost:3456/") is None
    assert all("3456" not in u for g in known for u in g.urls)  # digests only


def test_the_registry_file_is_private_written_when_it_changes_and_shared_by_threads(tmp_path):
    path = str(tmp_path / "state" / "grids.json")
    first = grids.record(path, A, "http://127.0.0.1:1/")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = os.stat(path).st_mtime_ns, os.stat(path).st_ino
    assert grids.record(path, A[:2], "http://127.0.0.1:1/").id == first.id
    assert (os.stat(path).st_mtime_ns, os.stat(path).st_ino) == before  # nothing changed: not written
    found: list[str] = []
    threads = [threading.Thread(target=lambda i=i: found.append(grids.record(path, A[i:i + 2], f"http://h:{i}/").id))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(found) == {first.id}
    (only,) = grids.load(path)
    assert only.servers == frozenset(A) and len(only.urls) == 4
    assert sorted(os.listdir(tmp_path / "state")) == ["grids.json", "grids.json.lock"]
    (tmp_path / "state" / "grids.json").write_text("not json")
    assert grids.load(path) == [] and grids.record(path, A, "http://127.0.0.1:1/").id == first.id
