"""The request engine against an in-memory web server: halting, untimed streams, answers that are checked, slots."""

from __future__ import annotations

import io

import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lafs_backup.errors import GatewayError
from lafs_backup.grid.sender import Call, Sender, body_size
from lafs_backup.retry import RetryPolicy


class Script(Resource):
    """Answers each request with the next of ``answers``: (status, body), or "hang" (never answers)."""

    isLeaf = True

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.seen = []
        self.hanging = []

    def render(self, request):
        self.seen.append((request.method.decode(), request.uri.decode(), request.content.read()))
        what = self.answers.pop(0) if self.answers else (200, b"ok")
        if what == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(what[0])
        return what[1]


def sender(resource, clock, jobs=2, attempts=3, timeout=10.0):
    agent = RequestTraversalAgent(resource)
    s = Sender(HTTPClient(agent), clock, RetryPolicy(attempts, (1.0, 5.0), timeout, timeout), jobs)
    return s, agent


async def settle(agent):
    """Let the real reactor run the body producers, then pump the in-memory connection."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(5):
        agent.flush()
        await deferLater(reactor, 0.005, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sends_and_counts_by_kind():
    res = Script([(200, b"hello")])
    s, agent = sender(res, Clock())
    d = Deferred.fromCoroutine(s.send(Call("get", "GET", "http://gw/uri/x", params={"t": "json"})))
    await settle(agent)
    assert (await d) == (200, b"hello")
    assert res.seen == [("GET", "/uri/x?t=json", b"")]
    assert s.counts == {"get": 1} and not s.inflight


@pytest_twisted.ensureDeferred
async def test_a_halted_run_refuses_uploads_but_not_reads():
    res = Script([])
    s, agent = sender(res, Clock())
    why = RuntimeError("the run failed")
    s.halt(why)
    s.halt(RuntimeError("a later failure"))  # the first reason stays
    with pytest.raises(RuntimeError) as e:
        await s.send(Call("put", "PUT", "http://gw/uri", body=b"x", upload=True))
    assert e.value is why and res.seen == []
    d = Deferred.fromCoroutine(s.send(Call("get", "GET", "http://gw/uri/x")))
    await settle(agent)
    assert (await d)[0] == 200
    s.resume()
    d = Deferred.fromCoroutine(s.send(Call("put", "PUT", "http://gw/uri", body=b"x", upload=True)))
    await settle(agent)
    assert (await d)[0] == 200 and res.seen[-1] == ("PUT", "/uri", b"x")


@pytest_twisted.ensureDeferred
async def test_a_wrong_answer_is_retried_and_a_file_body_reopened():
    clock = Clock()
    res = Script([(200, b"half"), (200, b"whole")])
    s, agent = sender(res, clock)
    opened = []

    def opener():
        opened.append(io.BytesIO(b"data"))
        return opened[-1]

    call = Call("put", "PUT", "http://gw/uri", body=opener, size=4,
                check=lambda b: None if b == b"whole" else "not whole")
    d = Deferred.fromCoroutine(s.send(call))
    await settle(agent)
    clock.advance(2)  # the backoff
    await settle(agent)
    assert (await d) == (200, b"whole")
    assert len(opened) == 2 and all(f.closed for f in opened)
    assert [b for _, _, b in res.seen] == [b"data", b"data"]


@pytest_twisted.ensureDeferred
async def test_an_error_status_shows_no_cap():
    res = Script([(404, b"no such child")])
    s, agent = sender(res, Clock())
    d = Deferred.fromCoroutine(s.send(Call("get", "GET", "http://gw/uri/URI:DIR2-CHK:sekrit:key:2:3:10")))
    await settle(agent)
    with pytest.raises(GatewayError) as e:
        await d
    assert e.value.status == 404 and "sekrit" not in str(e.value)


@pytest_twisted.ensureDeferred
async def test_an_untimed_call_waits_as_long_as_it_takes():
    clock = Clock()
    s, agent = sender(Script(["hang"]), clock, timeout=1.0)
    d = Deferred.fromCoroutine(s.send(Call("check", "POST", "http://gw/uri/x", attempts=1, timed=False)))
    await settle(agent)
    clock.advance(3600)
    assert not d.called and len(s.inflight) == 1
    d.cancel()  # cancelled from outside (a signal): not a timeout, not retried
    with pytest.raises(CancelledError):
        await d
    assert s.counts == {"check": 1} and not s.inflight


@pytest_twisted.ensureDeferred
async def test_a_call_of_one_attempt_is_not_retried():
    res = Script([(500, b"boom")])
    s, agent = sender(res, Clock())
    d = Deferred.fromCoroutine(s.send(Call("check", "POST", "http://gw/uri/x", attempts=1)))
    await settle(agent)
    with pytest.raises(GatewayError) as e:
        await d
    assert e.value.status == 500 and len(res.seen) == 1


@pytest_twisted.ensureDeferred
async def test_the_lower_priority_goes_first_when_calls_wait_for_a_slot():
    clock = Clock()
    res = Script(["hang"])
    s, agent = sender(res, clock, jobs=1, timeout=None)
    first = Deferred.fromCoroutine(s.send(Call("get", "GET", "http://gw/first")))
    await settle(agent)
    late = Deferred.fromCoroutine(s.send(Call("mkdir", "POST", "http://gw/late", priority=5.0)))
    soon = Deferred.fromCoroutine(s.send(Call("mkdir", "POST", "http://gw/soon", priority=1.0)))
    await settle(agent)
    assert [u for _, u, _ in res.seen] == ["/first"]
    res.hanging[0].write(b"done")
    res.hanging[0].finish()
    await settle(agent)
    assert (await first) == (200, b"done")
    for _ in range(2):
        clock.advance(0)  # the freed slot wakes the next waiter in a turn of its own
        await settle(agent)
    assert (await soon)[0] == 200 and (await late)[0] == 200
    assert [u for _, u, _ in res.seen] == ["/first", "/soon", "/late"]


def test_body_size_measures_without_keeping_the_file_open():
    files = []

    def opener():
        files.append(io.BytesIO(b"12345"))
        return files[-1]

    assert body_size(None) == 0 and body_size(b"abc") == 3
    assert body_size(opener) == 5 and files[0].closed
