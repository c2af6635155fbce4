"""The copier over in-memory gateways: a snapshot copied to a second grid through the store's writer
(salted when refused as unhappy, mapped only once confirmed), read back the same, resumed from its map."""

from __future__ import annotations

import pytest
import pytest_twisted

from builders import run, tree
from fakes import FakeCache, FakeGateway
from lafs_backup.engine.copier import Copier
from lafs_backup.errors import GatewayError
from lafs_backup.read.reader import Reader
from lafs_backup.store.encode import SALT_MARK


class _Grid(FakeGateway):
    """Lists each child with the type of its cap, as Tahoe does (a packed file's edge names the marker
    directory, whatever type its body gave it)."""

    async def get_json(self, cap: str, path=()):
        listing = await super().get_json(cap, path)
        for child in listing[1]["children"].values():
            if child[1]["ro_uri"].startswith("URI:DIR2"):
                child[0] = "dirnode"
        return listing


async def _everything(gw: FakeGateway, cap: str, use_index: bool = True) -> list:
    """Every entry of a snapshot read back: path, kind, the metadata that is not a cap, content."""
    reader = Reader(gw, use_index=use_index)
    try:
        top, _ = await reader.root(cap)
        out, todo = [], [(b"", top)]
        while todo:
            path, node = todo.pop()
            for child in await reader.children(node):
                rel = path + b"/" + child.name
                meta = {k: v for k, v in child.metadata.items() if k not in ("pack", "object")}
                data: list[bytes] = []
                if child.kind == "f":
                    await reader.content(child, data.append)
                elif child.kind == "d":
                    todo.append((rel, child))
                out.append((rel, child.kind, meta, b"".join(data)))
        return sorted(out)
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_a_snapshot_is_copied_through_the_writer_and_a_second_copy_sends_nothing(tmp_path):
    from twisted.internet import reactor

    src_gw = _Grid()
    cap, _ = await run(tree(tmp_path / "src"), src_gw, FakeCache())
    dst = _Grid()
    dst.fail[("put", 1)] = "unhappy"  # the first object is refused once: stored again under a salt at once
    mapped: dict[str, str] = {}
    copier = Copier(src_gw, dst, mapped.get, mapped.__setitem__, jobs=2, clock=reactor)
    snap = await copier.snapshot(cap)
    assert mapped[cap] == snap and dst.counts["put"] == copier.stats.objects + 1
    salted = [data for data in dst.objects.values() if SALT_MARK in data]
    assert len(salted) == 1 and copier.stats.different >= 1 and copier.stats.same_caps is False
    expected = await _everything(src_gw, cap)
    assert await _everything(dst, snap) == expected == await _everything(dst, snap, use_index=False)

    before = dict(dst.counts)
    again = Copier(src_gw, dst, mapped.get, mapped.__setitem__, jobs=2, clock=reactor)
    assert await again.snapshot(cap) == snap and dict(dst.counts) == before and again.stats.reused == 1


@pytest_twisted.ensureDeferred
async def test_an_object_the_destination_never_confirms_is_not_mapped(tmp_path):
    from twisted.internet import reactor

    src_gw = _Grid()
    cap, _ = await run(tree(tmp_path / "src", dirs=1, files=1), src_gw, FakeCache())
    dst = _Grid()
    for n in range(1, 10):
        dst.fail[("put", n)] = 400
    mapped: dict[str, str] = {}
    with pytest.raises(GatewayError):
        await Copier(src_gw, dst, mapped.get, mapped.__setitem__, jobs=1, clock=reactor).snapshot(cap)
    assert cap not in mapped and not any(c.startswith("URI:CHK:") for c in mapped)
