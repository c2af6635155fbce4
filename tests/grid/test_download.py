"""A resumed download over fake answers: Range for the rest, a restart on a whole answer, cut-short answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest_twisted
from twisted.web.http_headers import Headers

from lafs_backup.grid.download import Resume, range_start


def answer(code, content_range=None):
    headers = Headers({"Content-Range": [content_range]} if content_range else {})
    return SimpleNamespace(code=code, headers=headers)


def body(*chunks):
    async def collect(sink):
        for c in chunks:
            sink(c)
    return collect


@pytest_twisted.ensureDeferred
async def test_a_retry_asks_for_the_rest_and_the_sink_goes_on():
    got = []
    r = Resume(got.append, 10)
    assert r.headers() == {}
    n = await r.read(answer(200), body(b"abcd"))  # the connection dropped after 4 bytes
    assert n == 4 and "4 of 10 bytes" in r.problem(n)
    assert r.headers() == {"Range": "bytes=4-"}
    n = await r.read(answer(206, "bytes 4-9/10"), body(b"ef", b"ghij"))
    assert n == 10 and r.problem(n) is None and r.got == 10
    assert b"".join(got) == b"abcdefghij"


@pytest_twisted.ensureDeferred
async def test_a_whole_answer_to_a_range_request_restarts():
    got, restarts = [], []
    r = Resume(got.append, 6, lambda: (restarts.append(1), got.clear()))
    await r.read(answer(200), body(b"abc"))
    n = await r.read(answer(200), body(b"abcdef"))
    assert restarts == [1] and n == 6 and r.problem(n) is None
    assert b"".join(got) == b"abcdef"


@pytest_twisted.ensureDeferred
async def test_a_range_from_the_wrong_byte_is_a_problem_and_feeds_nothing():
    got = []
    r = Resume(got.append, None)
    await r.read(answer(200), body(b"abc"))
    n = await r.read(answer(206, "bytes 1-5/6"), body(b"bcdef"))
    assert n == "a range answer from byte 1, not 3" and r.problem(n) == n
    assert got == [b"abc"] and r.got == 3


def test_range_start():
    assert range_start(answer(206, "bytes 100-199/200")) == 100
    assert range_start(answer(206)) is None
    assert range_start(answer(206, "items 1-2")) is None
