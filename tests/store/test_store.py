"""The store and the packer, against an in-memory gateway: salting, caching only confirmed caps, sharing."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fakes import FakeCache, FakeGateway
from lafs_backup.backup.source import LocalFile
from lafs_backup.errors import GatewayError
from lafs_backup.report import Stats
from lafs_backup.encoding import compile_rules
from lafs_backup.store.encode import SALT_MARK
from lafs_backup.store.packer import Packer
from lafs_backup.store.snapshot import body_key, content_key
from lafs_backup.store.store import SourceChanged, Store, StoreSettings


def make(clock=None, **settings):
    gw = FakeGateway(clock)
    cache = FakeCache()
    s = StoreSettings(**{"pack_target_size": 1 << 16, **settings})
    return Store(gw, cache, 1, s, Stats()), gw, cache


@pytest_twisted.ensureDeferred
async def test_an_unhappy_directory_is_made_again_under_a_salt_at_once():
    store, gw, cache = make()
    gw.fail[("mkdir", 1)] = "unhappy"
    body = b'{"a":["filenode",{"metadata":{"x":1},"ro_uri":"URI:LIT:"}]}'
    cap = await store.directory(body)
    assert gw.counts["mkdir"] == 2
    assert b'"salt":' in gw.dirs[cap] and gw.dirs[cap] != body  # another storage index
    assert cache.rows[body_key(body)].cap == cap  # recorded under the body's own key


@pytest_twisted.ensureDeferred
async def test_packs_and_symlink_objects_are_salted_after_their_bytes():
    store, gw, _ = make()
    gw.fail[("put", 1)] = "unhappy"
    target = b"t" * 100
    cap = await store.symlink(target)
    assert gw.objects[cap].startswith(target + SALT_MARK) and gw.counts["put"] == 2


@pytest_twisted.ensureDeferred
async def test_refusals_after_the_salt_wait_the_retry_delays():
    clock = Clock()
    store, gw, _ = make(clock)
    gw.fail[("put", 1)] = gw.fail[("put", 2)] = "unhappy"
    d = Deferred.fromCoroutine(store.symlink(b"u" * 80))
    assert gw.counts["put"] == 2 and not d.called  # unsalted, then salted at once; then it waits
    clock.advance(1.5)
    assert (await d).startswith("URI:CHK:") and gw.counts["put"] == 3


@pytest_twisted.ensureDeferred
async def test_a_plain_tree_never_salts_and_a_failed_upload_records_nothing(tmp_path):
    clock = Clock()
    store, gw, cache = make(clock, pack_max_file_size=0)
    f = tmp_path / "f"
    f.write_bytes(os.urandom(5000))
    src = LocalFile(os.open(f, os.O_RDONLY))
    gw.fail[("put", 1)] = "unhappy"
    d = Deferred.fromCoroutine(store.file(src, 5000, b"s" * 32, b"f"))
    clock.advance(2)
    hit = await d
    assert gw.objects[hit.cap] == f.read_bytes()  # exact bytes: no salt
    assert gw.counts["put"] == 2
    gw.fail[("put", 3)] = 400
    with pytest.raises(GatewayError):
        await store.symlink(b"v" * 90)
    assert not any(r.cap.endswith(":90") for r in cache.rows.values())
    src.close()


@pytest_twisted.ensureDeferred
async def test_a_file_that_shrinks_under_its_raw_upload_is_said_to_have_changed(tmp_path):
    store, gw, _ = make()
    f = tmp_path / "f"
    f.write_bytes(os.urandom(300_000))

    class Shrinking(LocalFile):
        def pread(self, n, offset):
            return b"" if offset >= 100_000 else super().pread(min(n, 100_000 - offset), offset)

    src = Shrinking(os.open(f, os.O_RDONLY))
    with pytest.raises(SourceChanged):
        await store.file(src, 300_000, b"s" * 32, b"f.img")
    src.close()


@pytest_twisted.ensureDeferred
async def test_compressible_large_files_are_stored_compressed_and_others_raw(tmp_path):
    rules = compile_rules("lz4", 512, [])
    store, gw, _ = make(encoding=rules)
    text, noise = tmp_path / "t", tmp_path / "n"
    text.write_bytes(b"words words words\n" * 20000)
    noise.write_bytes(os.urandom(200_000))
    for path, want in ((text, "lz4"), (noise, None)):
        src = LocalFile(os.open(path, os.O_RDONLY))
        hit = await store.file(src, path.stat().st_size, b"s" * 32, path.name.encode())
        src.close()
        assert hit.enc == want
        if want:
            assert len(gw.objects[hit.cap]) < path.stat().st_size / 10
    assert store.stats.bytes_compression_saved > 0


@pytest_twisted.ensureDeferred
async def test_identical_content_in_one_run_is_uploaded_once():
    store, gw, cache = make()
    sha = b"c" * 32
    gate: Deferred = Deferred()
    uploads = []

    async def upload():
        uploads.append(1)
        await gate
        return await store.member(b"d" * 500, sha, b"p", lambda: None)

    d1 = Deferred.fromCoroutine(store.content(sha, 500, None, upload))
    d2 = Deferred.fromCoroutine(store.content(sha, 500, None, upload))
    gate.callback(None)
    await store.packer.flush()
    h1, h2 = await d1, await d2
    assert h1 == h2 and len(uploads) == 1 and store.stats.files_deduplicated == 1
    assert cache.rows[content_key(sha)] == h1  # recorded once the pack was confirmed


@pytest_twisted.ensureDeferred
async def test_the_packer_seals_at_its_target_and_on_drain():
    sealed = []

    async def put(buf):
        sealed.append(buf)
        return f"URI:CHK:pack{len(sealed)}"

    p = Packer(put, target_size=100, max_files=10, clock=Clock())
    first = [p.add(b"a" * 40), p.add(b"b" * 70)]  # 110 >= 100: sealed
    p.expect()
    last = p.add(b"c" * 10)
    p.drain()
    assert len(sealed) == 1  # one member is still being read: not sealed yet
    p.expected()
    await p.flush()
    refs = [await d for d in first] + [await last]
    assert [(r.cap, r.offset, r.length) for r in refs] == [
        ("URI:CHK:pack1", 0, 40), ("URI:CHK:pack1", 40, 70), ("URI:CHK:pack2", 0, 10)]
    assert sealed == [b"a" * 40 + b"b" * 70, b"c" * 10]


@pytest_twisted.ensureDeferred
async def test_relief_asked_during_an_upload_seals_the_open_pack_once_it_is_done():
    """A run whose window or memory ran short while a pack was uploading: that upload may free no
    room (its members' entries stay held by directories waiting for the open pack's members), so
    the open pack is sealed once the upload is done.  Without it the run waited forever (seen on a
    29,000-file site-packages tree: 763 members in an open pack, nothing in flight)."""
    from twisted.internet.defer import Deferred

    gates: list[Deferred] = []
    sealed: list[bytes] = []

    async def put(buf):
        sealed.append(buf)
        d: Deferred = Deferred()
        gates.append(d)
        await d
        return f"URI:CHK:pack{len(sealed)}"

    clock = Clock()
    p = Packer(put, target_size=100, max_files=10, clock=clock)
    first = p.add(b"a" * 120)  # sealed at its target: uploading
    clock.advance(0)
    assert len(sealed) == 1 and p.uploading == 1
    waiting = p.add(b"b" * 10)  # the open pack
    p.relieve()  # asked while the first upload is under way: owed, not a pack of one member now
    assert len(sealed) == 1
    gates[0].callback(None)  # the first upload is done, and frees nothing for anybody
    clock.advance(0)
    assert len(sealed) == 2 and sealed[1] == b"b" * 10  # the owed relief sealed the open pack
    gates[1].callback(None)
    assert (await first).cap == "URI:CHK:pack1" and (await waiting).cap == "URI:CHK:pack2"


@pytest_twisted.ensureDeferred
async def test_relief_asked_while_members_are_read_seals_the_pack_they_land_in():
    """A run's window or memory ran short while the open pack was empty and a run of small files
    was being read in a thread: sealing the empty pack frees nothing, so the relief is owed until
    those members are in, then their pack is sealed (else, with nothing uploading, every task
    waited for a pack that nobody sealed)."""
    sealed: list[bytes] = []

    async def put(buf):
        sealed.append(buf)
        return f"URI:CHK:pack{len(sealed)}"

    clock = Clock()
    p = Packer(put, target_size=100, max_files=10, clock=clock)
    p.expect()
    p.expect()  # two members being read
    p.relieve()  # nothing to seal yet
    assert sealed == [] and p.uploading == 0
    first = p.add(b"a" * 10)
    p.expected()
    clock.advance(0)
    assert sealed == []  # one member is still being read: it lands in the same pack
    second = p.add(b"b" * 10)
    p.expected()
    clock.advance(0)
    assert sealed == [b"a" * 10 + b"b" * 10]
    assert (await first).cap == (await second).cap == "URI:CHK:pack1"
    p.relieve()  # nothing open, nothing being read: nothing owed
    assert p.expecting == 0 and len(sealed) == 1
