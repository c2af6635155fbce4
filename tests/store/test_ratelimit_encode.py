"""Pure parts of issue-4 machinery: token buckets on a Clock, compression rules and incompressibility."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from lafs_backup.encoding import compile_rules
from lafs_backup.store.encode import SALT_LEN, SALT_MARK, Decoder, compress, decode
from lafs_backup.errors import ConfigError
from lafs_backup.config import parse_rate as parse_spec
from lafs_backup.grid.ratelimit import TokenBucket


def test_spec_parsing():
    assert parse_spec("1/3e6:50e6", "k") == (1 / 3e6, 50e6)
    assert parse_spec("0.5", "k") == (0.5, 2.0)
    for bad in ("x", "1/0", "-1:5", "1:0"):
        with pytest.raises(ConfigError):
            parse_spec(bad, "operation.rate_limit.bytes")


@pytest_twisted.ensureDeferred
async def test_bucket_holds_the_rate():
    clock = Clock()
    b = TokenBucket(0.1, 2, clock)  # 10 tokens/s, burst 2
    done = []

    async def take_all():
        for i in range(6):
            await b.take(1)
            done.append(clock.seconds())

    d = Deferred.fromCoroutine(take_all())
    for _ in range(100):
        clock.advance(0.01)
    await d
    assert done[:2] == [0, 0]  # the burst
    assert done[-1] == pytest.approx(0.4, abs=0.02)  # then one every 0.1 s


@pytest_twisted.ensureDeferred
async def test_request_larger_than_burst_waits_then_goes_into_debt():
    clock = Clock()
    b = TokenBucket(0.001, 100, clock)  # 1000/s, burst 100
    d = Deferred.fromCoroutine(b.take(500))
    assert d.called  # a full bucket lets it through...
    d2 = Deferred.fromCoroutine(b.take(1))
    clock.advance(0.3)
    assert not d2.called  # ...but the debt of 400 must be paid first
    clock.advance(0.2)
    await d2


def test_rules_first_match_wins_and_sizes():
    r = compile_rules("lz4", 512, [r"-\.jpg$", [100, r"\.log$"], r"+\.txt$"])
    assert r.choose(b"a/b.jpg", 10**6) is None
    assert r.choose(b"x.log", 150) == "lz4"
    assert r.choose(b"x.txt", 150) is None  # below min_size
    assert r.choose(b"x.txt", 600) == "lz4"
    assert r.choose(b"other", 600) == "lz4"
    assert compile_rules("none", 0, []).choose(b"x", 10**6) is None
    with pytest.raises(ConfigError):
        compile_rules("zip", 0, [])
    with pytest.raises(ConfigError):
        compile_rules("lz4", 0, ["[bad"])
    with pytest.raises(ConfigError):
        compile_rules("lz4", 0, ["+(unclosed"])


@pytest.mark.parametrize("method", ["lz4", "xz"])
def test_incompressible_is_detected_and_compressible_round_trips(method):
    assert compress(method, os.urandom(200_000)) is None
    text = b"the same words again and again " * 5000
    packed = compress(method, text)
    assert packed is not None and len(packed) < len(text) / 10
    assert decode(method, packed) == text


@pytest.mark.parametrize("method", [None, "lz4", "xz"])
def test_salted_objects_decode_whole_and_streamed(method, tmp_path):
    """An object stored again under a salt (after its bytes) decodes to the original bytes, whole
    or fed in small chunks: a frame ends before the salt, a raw object at its recorded size."""
    from lafs_backup.backup.source import LocalFile
    from lafs_backup.store.store import _FileSlice

    data = b"some file contents\n" * 5000
    stored = compress(method, data) if method else data
    assert stored is not None
    f = tmp_path / "obj"
    f.write_bytes(stored)
    salt = SALT_MARK + os.urandom(SALT_LEN)
    src = LocalFile(os.open(f, os.O_RDONLY))
    try:
        sl = _FileSlice(src, len(stored), salt)
        body = b""
        while chunk := sl.read(4097):
            body += chunk
    finally:
        src.close()
    assert body == stored + salt
    assert sl.hashed_to == len(stored)  # the salt is not part of the content hash
    assert decode(method, body, len(data)) == data
    d = Decoder(method, len(data))
    out = b"".join(d.feed(body[i:i + 7]) for i in range(0, len(body), 7))
    assert out == data


@pytest.mark.parametrize("method", [None, "lz4", "xz"])
def test_objects_salted_by_earlier_versions_still_decode(method):
    """Earlier versions put the salt before the bytes ("salted", "salted+lz4"): still read."""
    data = b"older backups stay readable\n" * 3000
    stored = compress(method, data) if method else data
    legacy = "salted" if method is None else f"salted+{method}"
    body = os.urandom(SALT_LEN) + stored
    assert decode(legacy, body) == data
    d = Decoder(legacy)
    assert b"".join(d.feed(body[i:i + 5]) for i in range(0, len(body), 5)) == data
