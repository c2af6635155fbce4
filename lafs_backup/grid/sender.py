"""Sending web API requests: attempts under bounded slots and rate limits, timeouts, retries with backoff.

This is the only module that uses treq.  It knows HTTP, not the web API's
verbs (those are :class:`~.gateway.Gateway`'s).  Every request is a
:class:`Call` sent by :meth:`Sender.send`, which holds one of ``jobs`` slots
per attempt and retries connection errors, timeouts and 5xx answers with the
configured backoff.  A refusal for lack of storage servers
(``UploadUnhappinessError``) is not retried here: the caller decides (see
``store.py``).

Timeouts follow the bytes, not the clock on the wall: an attempt fails when
no byte moved in either direction for ``timeout`` seconds, so a large file
on a slow link is never cut off while it is moving.  Once the request has
been sent, the gateway may encode and place a whole upload before it
answers; that wait for the first answer byte has its own, longer limit.
Errors carry the URL with caps redacted.
"""

from __future__ import annotations

import io
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (FileBodyProducer, RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed,
                                ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from ..errors import GatewayError
from ..log import redact
from ..protocols import BodyFile
from ..retry import RetryPolicy
from ..slots import Slots
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from ..protocols import Reactor

log = logging.getLogger(__name__)

_RETRYABLE_EXC = (ConnectError, ConnectionLost, ConnectionDone, ResponseFailed, ResponseNeverReceived,
                  TxTimeoutError, CancelledError)
#: Failures of sending a request: retryable when every cause is (a timeout
#: cancelled the body being sent; the connection dropped), not when the body
#: itself failed (a file that cannot be read, or that changed while it was read).
_SEND_FAILED = (RequestGenerationFailed, RequestTransmissionFailed)
#: Bytes per second the gateway is assumed to encode and place an upload at, at
#: worst, before it answers: the answer wait grows with the body.
_PLACEMENT_RATE = 256 << 10


def _failure_cause(e: BaseException) -> tuple[BaseException | None, bool]:
    """For a failed attempt: (a cause that must not be retried or None, whether it was a timeout)."""
    if isinstance(e, (CancelledError, TxTimeoutError)):
        return None, True
    reasons = [f.value for f in getattr(e, "reasons", [])]
    for v in reasons:
        if isinstance(e, _SEND_FAILED) and not isinstance(v, _RETRYABLE_EXC):
            return v, False
    return None, any(isinstance(v, (CancelledError, TxTimeoutError)) for v in reasons)


Body = bytes | Callable[[], BodyFile] | None
#: Feeds a response's body to ``sink`` as it arrives.
Collect = Callable[[Callable[[bytes], None]], Awaitable[None]]
#: Reads a response: gets it and ``collect(sink)``; what it returns is the call's result.
Reader = Callable[[IResponse, Collect], Awaitable[Any]]


@dataclass(frozen=True)
class Call:
    """One web API request, as :meth:`Sender.send` sends it (with retries).

    ``body`` is bytes or a callable that opens a fresh file object for each
    attempt (closed after it), so no two attempts share a file position.
    ``headers`` may be a callable, asked again for each attempt (a resumed
    download asks for the rest).  ``read`` consumes the response body
    (default: all of it, as bytes).  ``check`` looks at the result of an
    answer with an ``ok`` status and says what is wrong with it (None: it is
    fine); a wrong answer is retried like a dropped connection.
    """

    kind: str
    method: str
    url: str
    params: Mapping[str, str] | None = None
    body: Body = None
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None
    ok: tuple[int, ...] = (200,)
    read: Reader | None = None
    check: Callable[[Any], str | None] | None = None
    #: None: the retry policy's attempts.
    attempts: int | None = None
    #: False: no timeouts at all (a stream as long as the tree).
    timed: bool = True
    #: Lower goes first when requests queue for a slot.
    priority: float = 0.0
    #: How the manhole names it (a path); the redacted URL by default.
    label: str | None = None
    #: Refused at once once the run has failed (see :meth:`Sender.halt`).
    upload: bool = False
    #: The body's size, when the caller knows it (else measured).
    size: int | None = None


class Attempt:
    """One in-flight attempt; ``expire()`` makes it time out now (it is then retried like any timeout)."""

    def __init__(self, what: str, number: int, clock: IReactorTime) -> None:
        self.deferred: Deferred | None = None
        self.what = what
        self.number = number
        self.started = clock.seconds()
        self._clock = clock
        self.forced = False
        self.timed_out = False

    def expire(self) -> None:
        self.forced = True
        if self.deferred is not None:
            self.deferred.cancel()

    def __repr__(self) -> str:
        age = self._clock.seconds() - self.started
        return f"<attempt {self.number} of {self.what}, {age:.1f}s>"


class _Watchdog:
    """Cancels an attempt when no byte moved for ``idle`` seconds, or no answer came ``answer``
    seconds after the request was sent.  Activity pushes the deadline back."""

    def __init__(self, clock: IReactorTime, idle: float | None, answer: float | None,
                 attempt: Attempt) -> None:
        self._clock = clock
        self._idle = idle
        self._answer = answer
        self._attempt = attempt
        self._call: IDelayedCall | None = None
        self._limit: float | None = None

    def _arm(self, seconds: float | None) -> None:
        self.stop()
        self._limit = seconds
        if seconds is not None:
            self._call = self._clock.callLater(seconds, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._attempt.timed_out = True
        if self._attempt.deferred is not None:
            self._attempt.deferred.cancel()

    def sending(self) -> None:
        self._arm(self._idle)

    def sent(self) -> None:
        self._arm(self._answer)

    def receiving(self) -> None:
        self._arm(self._idle)

    def activity(self) -> None:
        if self._call is not None and self._call.active() and self._limit is not None:
            self._call.reset(self._limit)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


@implementer(IConsumer)
class _TickingConsumer:
    """Passes body bytes on to the transport, telling ``tick`` how many moved."""

    def __init__(self, consumer: IConsumer, tick: Callable[[int], None]) -> None:
        self._consumer = consumer
        self._tick = tick

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._tick(len(data))
        self._consumer.write(data)


@implementer(IBodyProducer)
class _WatchedBody:
    """A request body read from a file object, watched by a :class:`_Watchdog`; ``moved(n)`` is
    told of each ``n`` bytes handed to the connection (``written`` adds them up)."""

    def __init__(self, fobj: BodyFile, watchdog: _Watchdog, moved: Callable[[int], None]) -> None:
        self._inner = FileBodyProducer(fobj, readSize=1 << 16)
        self.length = self._inner.length
        self._wd = watchdog
        self._moved = moved
        self.written = 0

    def _tick(self, n: int) -> None:
        self._wd.activity()
        self.written += n
        self._moved(n)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        d = self._inner.startProducing(_TickingConsumer(consumer, self._tick))

        def done(result: None) -> None:
            self._wd.sent()
            return result
        d.addCallback(done)
        return d

    def pauseProducing(self) -> None:
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        self._inner.stopProducing()


class Sender:
    """Sends :class:`Call`\\ s through ``http`` (a treq :class:`HTTPClient`, the seam for fakes).

    At most ``jobs`` attempts are in flight; ``limit_bytes`` and
    ``limit_objects`` (None: no limit) pace them; timeouts and backoff run on
    ``clock``, backoff jittered by ``rng``.  ``debug_requests`` shows URLs
    with their caps in logs and errors.
    """

    def __init__(self, http: HTTPClient, clock: IReactorTime, retry: RetryPolicy, jobs: int = 6,
                 debug_requests: bool = False, rng: random.Random | None = None,
                 limit_bytes: TokenBucket | None = None, limit_objects: TokenBucket | None = None) -> None:
        self.http = http
        self.clock = clock
        self.retry = retry
        self.debug_requests = debug_requests
        self.rng = rng if rng is not None else random.Random()
        self.limit_bytes = limit_bytes
        self.limit_objects = limit_objects
        #: Requests sent, by kind ("put", "mkdir", "get", ...), attempts included.
        self.counts: Counter[str] = Counter()
        #: Bytes of request bodies handed to the connection, as they go (what progress counts).  An
        #: attempt that fails is taken back: its bytes are sent again, or the request fails.
        self.bytes_sent = 0
        #: In-flight attempts, for the manhole's ``debug_timeouts``.
        self.inflight: set[Attempt] = set()
        self._slots = Slots(jobs, clock)
        self._halted: BaseException | None = None

    def halt(self, why: BaseException) -> None:
        """Send no more uploads: the run has failed, so uploads still queued fail at once with ``why``."""
        if self._halted is None:
            self._halted = why

    def resume(self) -> None:
        """A new run (a later round of ``watch``) may upload again."""
        self._halted = None

    def show(self, url: str) -> str:
        """``url`` as logs and errors may show it: its caps redacted unless ``debug_requests``."""
        return url if self.debug_requests else redact(url)

    def _answer_wait(self, size: int) -> float | None:
        if self.retry.answer_timeout is None:
            return None
        return max(self.retry.answer_timeout, size / _PLACEMENT_RATE)

    async def send(self, call: Call) -> tuple[int, Any]:
        """Send ``call``, retrying what is worth retrying; return (status, result).

        Raises :class:`GatewayError` after the last attempt, for a status that
        is neither ``ok`` nor retryable, and at once when the grid refuses an
        upload as unhappy.
        """
        show = self.show(call.url)
        attempt_no = 0
        attempts = call.attempts or self.retry.attempts
        size = call.size if call.size is not None else body_size(call.body)
        while True:
            attempt_no += 1
            if self.limit_objects is not None:
                await self.limit_objects.take(1)
            if self.limit_bytes is not None and call.body is not None:
                await self.limit_bytes.take(size)
            await self._slots.acquire(call.priority)
            if self._halted is not None and call.upload:
                self._slots.release()
                raise self._halted
            att = Attempt(f"{call.method} {call.label or show}", attempt_no, self.clock)
            try:
                self.counts[call.kind] += 1
                log.debug("%s %s (attempt %d)", call.method, show, attempt_no)
                code, result, error = await self._attempt(call, att, size)
            except _RETRYABLE_EXC + _SEND_FAILED as e:
                fatal, timed_out = _failure_cause(e)
                if fatal is not None:
                    raise fatal
                if timed_out and not (att.timed_out or att.forced):
                    raise CancelledError() from None  # the command itself was cancelled (a signal)
                reason = "timed out" if (timed_out or att.timed_out) else type(e).__name__
                if att.forced:
                    reason = "timed out (forced from the manhole)"
                elif att.timed_out:
                    reason = "timed out (no data moved)" if self.retry.timeout else "timed out"
                error = GatewayError(call.method, show, None, "", reason=reason)
            finally:
                self._slots.release()
            if error is None:
                return code, result
            if error.unhappy or (error.status is not None and error.status < 500):
                raise error
            if attempt_no >= attempts:
                raise error
            # Jitter, so that requests that failed together don't retry in lockstep.
            delay = self.retry.delay(attempt_no) * self.rng.uniform(0.7, 1.3)
            log.info("%s; retry %d of %d in %.1fs", error, attempt_no, attempts - 1, delay)
            await deferLater(self.clock, delay, lambda: None)

    async def _attempt(self, call: Call, att: Attempt, size: int) -> tuple[int, Any, GatewayError | None]:
        hdrs = Headers({"Accept": ["text/plain"]})
        extra = call.headers() if callable(call.headers) else call.headers
        for k, v in (extra or {}).items():
            hdrs.setRawHeaders(k, [v])
        wd = _Watchdog(self.clock, self.retry.timeout if call.timed else None,
                       self._answer_wait(size) if call.timed else None, att)
        fobj: BodyFile | None = None
        data: _WatchedBody | None = None
        try:
            if call.body is not None:
                fobj = call.body() if callable(call.body) else io.BytesIO(call.body)
                data = _WatchedBody(fobj, wd, self._moved)

            async def collect(resp: IResponse, sink: Callable[[bytes], None]) -> None:
                def fed(chunk: bytes) -> None:
                    wd.activity()
                    sink(chunk)
                await treq.collect(resp, fed)

            async def run() -> tuple[int, Any]:
                resp = await self.http.request(call.method, call.url, params=call.params, data=data,
                                               headers=hdrs, unbuffered=True)
                wd.receiving()
                if resp.code in call.ok:
                    if call.read is not None:
                        return resp.code, await call.read(resp, lambda sink: collect(resp, sink))
                    parts: list[bytes] = []
                    await collect(resp, parts.append)
                    return resp.code, b"".join(parts)
                parts = []
                await collect(resp, parts.append)
                return resp.code, b"".join(parts).decode("utf-8", "replace")

            d = Deferred.fromCoroutine(run())
            att.deferred = d
            self.inflight.add(att)
            if call.body is None:
                wd.sent()
            else:
                wd.sending()
            try:
                code, result = await d
            finally:
                self.inflight.discard(att)
                wd.stop()
        except BaseException:
            self._take_back(data)
            raise
        finally:
            if fobj is not None:
                fobj.close()
        show = self.show(call.url)
        error: GatewayError | None = None
        if code not in call.ok:
            error = GatewayError(call.method, show, code, result)
        else:
            problem = call.check(result) if call.check is not None else None
            if problem is not None:
                error = GatewayError(call.method, show, None, "", reason=f"bad answer: {problem}")
        if error is not None:
            self._take_back(data)
        return code, result, error

    def _moved(self, n: int) -> None:
        self.bytes_sent += n

    def _take_back(self, body: _WatchedBody | None) -> None:
        """A failed attempt's bytes no longer count as sent."""
        if body is not None:
            self.bytes_sent -= body.written


def body_size(body: Body) -> int:
    """The size of a :class:`Call`'s body (a file is opened, measured and closed)."""
    if body is None:
        return 0
    if isinstance(body, bytes):
        return len(body)
    f = body()
    try:
        return f.seek(0, 2)
    finally:
        f.close()


def make_http_client(reactor: Reactor, pool_size: int = 8) -> HTTPClient:
    """A treq client with a persistent connection pool."""
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = pool_size
    pool.cachedConnectionTimeout = 120
    pool.retryAutomatically = False
    return HTTPClient(Agent(reactor, pool=pool))
