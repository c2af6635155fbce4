"""The gateway client against fakes: retries, per-attempt timeouts on the injected clock, errors without caps."""

from __future__ import annotations

import io

import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lafs_backup.retry import RetryPolicy
from lafs_backup.errors import GatewayError
from lafs_backup.grid.gateway import Gateway


class FlakyUpload(Resource):
    """PUT /uri: fails with the given statuses first, then answers a cap."""

    isLeaf = True

    def __init__(self, failures, hang=0, cut=0):
        super().__init__()
        self.failures = list(failures)
        self.hang = hang
        self.cut = cut
        self.bodies = []
        self.calls = 0

    def render(self, request):
        self.calls += 1
        body = request.content.read()
        self.bodies.append(body)
        if self.hang > 0:
            self.hang -= 1
            return NOT_DONE_YET
        if self.failures:
            code = self.failures.pop(0)
            if code == "unhappy":
                request.setResponseCode(500)
                return b"Traceback...\nallmydata.interfaces.UploadUnhappinessError: URI:CHK:secret:stuff"
            request.setResponseCode(code)
            return b"Traceback...\nallmydata.mutable.common.NotEnoughServersError: URI:CHK:secret:stuff"
        cap = chk(len(body))
        if self.cut:
            self.cut -= 1
            return cap[:30]  # what a connection closed half way leaves
        return cap


def chk(size):
    return b"URI:CHK:" + b"a" * 26 + b":" + b"b" * 52 + b":2:3:%d" % size


class FakeHTTP:
    """A treq client served in memory by ``resource``; unlike StubTreq it takes body producers."""

    def __init__(self, resource):
        self.agent = RequestTraversalAgent(resource)
        self.client = HTTPClient(self.agent)
        self.request = self.client.request

    def flush(self):
        self.agent.flush()


def gateway(resource, clock, attempts=3, timeout=10.0):
    stub = FakeHTTP(resource)
    gw = Gateway("http://gw/", stub, clock, RetryPolicy(attempts, (1.0, 5.0), timeout, timeout), jobs=2)
    return gw, stub


@pytest_twisted.ensureDeferred
async def test_retries_5xx_with_backoff_then_succeeds():
    clock = Clock()
    res = FlakyUpload([500, 500])
    gw, stub = gateway(res, clock)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"x" * 100))
    await settle(stub)
    assert res.calls == 1 and not d.called
    clock.advance(1.5)  # first delay (1 s, jittered +-30%)
    await settle(stub)
    assert res.calls == 2 and not d.called
    clock.advance(7)
    await settle(stub)
    assert (await d) == chk(100).decode()
    assert gw.counts["put"] == 3


@pytest_twisted.ensureDeferred
async def test_bytes_sent_count_request_bodies_and_a_failed_attempt_is_taken_back():
    """What progress counts: the bytes handed to the gateway.  An attempt that failed is sent again, so
    its bytes count once, for the attempt that went through."""
    clock = Clock()
    res = FlakyUpload([500])
    gw, stub = gateway(res, clock)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"x" * 1000))
    await settle(stub)
    assert res.calls == 1 and gw.bytes_sent == 0  # sent, refused: taken back
    clock.advance(1.5)
    await settle(stub)
    await d
    assert res.calls == 2 and gw.bytes_sent == 1000
    d = Deferred.fromCoroutine(gw.put_bytes(b"y" * 100))
    await settle(stub)
    await d
    assert res.calls == 3 and gw.bytes_sent == 1100


@pytest_twisted.ensureDeferred
async def test_4xx_is_not_retried_and_error_hides_caps():
    clock = Clock()
    res = FlakyUpload([400])
    gw, stub = gateway(res, clock)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.get_json("URI:DIR2-CHK:sekrit:key:2:3:10"))
    await settle(stub)
    with pytest.raises(GatewayError) as e:
        await d
    assert res.calls == 1
    assert e.value.status == 400
    assert "sekrit" not in str(e.value) and "URI:" not in str(e.value)


@pytest_twisted.ensureDeferred
async def test_gives_up_after_the_last_attempt():
    clock = Clock()
    res = FlakyUpload([500, 500, 500, 500])
    gw, stub = gateway(res, clock, attempts=2)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"y" * 100))
    await settle(stub)
    clock.advance(2)
    await settle(stub)
    with pytest.raises(GatewayError) as e:
        await d
    assert res.calls == 2 and e.value.status == 500
    assert "NotEnoughServersError" in e.value.reason and "secret" not in str(e.value)


@pytest_twisted.ensureDeferred
async def test_unhappiness_is_left_to_the_caller():
    """Refused for lack of servers: not retried here (the store salts, then waits), and said so."""
    clock = Clock()
    res = FlakyUpload(["unhappy"])
    gw, stub = gateway(res, clock)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"u" * 100))
    await settle(stub)
    with pytest.raises(GatewayError) as e:
        await d
    assert res.calls == 1 and e.value.unhappy


@pytest_twisted.ensureDeferred
async def test_timed_out_attempt_is_cancelled_and_retried_with_a_fresh_file():
    clock = Clock()
    res = FlakyUpload([], hang=1)
    gw, stub = gateway(res, clock, timeout=10.0)
    from twisted.internet.defer import Deferred

    opened = []

    def opener():
        f = io.BytesIO(b"z" * 1000)
        opened.append(f)
        return f

    d = Deferred.fromCoroutine(gw.put_file(opener))
    await settle(stub)
    assert res.calls == 1 and not d.called
    clock.advance(10)  # the attempt times out: cancelled, then retried after the delay
    assert len(opened) == 2 and all(f.closed for f in opened)  # opened[0] only measured the size
    clock.advance(2)
    await settle(stub)
    assert (await d).startswith("URI:CHK:")
    assert len(opened) == 3 and res.bodies[-1] == b"z" * 1000


async def settle(stub):
    """Let the real reactor run the body producers, then pump the in-memory connection."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(5):
        stub.flush()
        await deferLater(reactor, 0.005, lambda: None)


@pytest_twisted.ensureDeferred
async def test_forced_timeout_from_the_manhole_retries():
    clock = Clock()
    res = FlakyUpload([], hang=1)
    gw, stub = gateway(res, clock, timeout=None)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"q" * 100))
    await settle(stub)
    assert len(gw.inflight) == 1
    for att in list(gw.inflight):
        att.expire()
    clock.advance(2)
    await settle(stub)
    assert (await d).startswith("URI:CHK:")
    assert res.calls == 2


@pytest_twisted.ensureDeferred
async def test_a_cap_cut_short_is_retried_never_recorded():
    clock = Clock()
    res = FlakyUpload([], cut=1)
    gw, stub = gateway(res, clock)
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(gw.put_bytes(b"c" * 100))
    await settle(stub)
    clock.advance(2)
    await settle(stub)
    assert (await d) == chk(100).decode()
    assert res.calls == 2


def test_cap_problems():
    from lafs_backup.grid.gateway import cap_problem

    assert cap_problem(chk(100), ("CHK",), 100) is None
    assert "100 bytes, not 99" in cap_problem(chk(100), ("CHK",), 99)
    assert "not a whole CHK" in cap_problem(chk(100)[:-1] + b"x", ("CHK",), 100)
    assert cap_problem(b"URI:LIT:nbswy3dp", ("CHK", "LIT"), 5) is None  # "hello"
    assert cap_problem(b"URI:LIT:nbswy3dp", ("CHK", "LIT"), 4) is not None
    assert cap_problem(b"<html>", ("DIR2-CHK",)) is not None
