"""The Tahoe-LAFS gateway client: web API calls through treq, with bounded concurrency, timeouts and retries.

This is the only module that uses treq, and it knows HTTP and the web API,
nothing of snapshots.  Every request is a :class:`Call` sent by
:meth:`Gateway.send`, which holds one of ``jobs`` slots per attempt and
retries connection errors, timeouts and 5xx answers with the configured
backoff.  A refusal for lack of storage servers (``UploadUnhappinessError``)
is not retried here: the caller decides (see ``store.py``).

Timeouts follow the bytes, not the clock on the wall: an attempt fails when
no byte moved in either direction for ``timeout`` seconds, so a large file
on a slow link is never cut off while it is moving.  Once the request has
been sent, the gateway may encode and place a whole upload before it
answers; that wait for the first answer byte has its own, longer limit.
Errors carry the URL with caps redacted.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (FileBodyProducer, RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed,
                                ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from ..caps import lit_data
from ..errors import GatewayError, GridError
from ..log import redact
from ..retry import RetryPolicy
from ..slots import Slots
from .ratelimit import TokenBucket

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


Body = bytes | Callable[[], IO[bytes]] | None
#: Reads a response: gets it and ``collect(sink)``, which feeds its body to ``sink`` as it arrives.
Reader = Callable[[Any, Callable[[Callable[[bytes], None]], Awaitable[None]]], Awaitable[Any]]


@dataclass(frozen=True)
class Call:
    """One web API request, as :meth:`Gateway.send` sends it (with retries).

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
    #: Refused at once once the run has failed (see :meth:`Gateway.halt`).
    upload: bool = False
    #: The body's size, when the caller knows it (else measured).
    size: int | None = None


class _Attempt:
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
                 attempt: _Attempt) -> None:
        self._clock = clock
        self._idle = idle
        self._answer = answer
        self._attempt = attempt
        self._call: Any = None
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
    """Passes body bytes on to the transport, telling the watchdog that bytes moved."""

    def __init__(self, consumer: Any, tick: Callable[[], None]) -> None:
        self._consumer = consumer
        self._tick = tick

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._tick()
        self._consumer.write(data)


@implementer(IBodyProducer)
class _WatchedBody:
    """A request body read from a file object, watched by a :class:`_Watchdog`."""

    def __init__(self, fobj: IO[bytes], watchdog: _Watchdog) -> None:
        self._inner = FileBodyProducer(fobj, readSize=1 << 16)
        self.length = self._inner.length
        self._wd = watchdog

    def startProducing(self, consumer: Any) -> Deferred:
        d = self._inner.startProducing(_TickingConsumer(consumer, self._wd.activity))

        def done(result: Any) -> Any:
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


@dataclass(eq=False)
class Gateway:
    """Calls to one gateway.  ``http`` is a treq :class:`HTTPClient` (the seam for fakes)."""

    base_url: str
    http: HTTPClient
    clock: IReactorTime
    retry: RetryPolicy
    jobs: int = 6
    debug_requests: bool = False
    rng: random.Random = field(default_factory=random.Random)
    limit_bytes: TokenBucket | None = None
    limit_objects: TokenBucket | None = None
    #: Requests sent, by kind ("put", "mkdir", "get", ...), attempts included.
    counts: Counter[str] = field(default_factory=Counter)
    #: In-flight attempts, for the manhole's ``debug_timeouts``.
    inflight: set[_Attempt] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        self._slots = Slots(self.jobs, self.clock)
        self._halted: BaseException | None = None

    def halt(self, why: BaseException) -> None:
        """Send no more uploads: the run has failed, so uploads still queued fail at once with ``why``."""
        if self._halted is None:
            self._halted = why

    def resume(self) -> None:
        """A new run (a later round of ``watch``) may upload again."""
        self._halted = None

    # -- plumbing ------------------------------------------------------------
    def url(self, cap: str | None = None, path: Sequence[str] = ()) -> str:
        if cap is None:
            return self.base + "uri"
        out = self.base + "uri/" + quote(cap, safe=":")
        for name in path:
            out += "/" + quote(name, safe="")
        return out

    def _show(self, url: str) -> str:
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
        show = self._show(call.url)
        attempt_no = 0
        attempts = call.attempts or self.retry.attempts
        size = call.size if call.size is not None else _body_size(call.body)
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
            att = _Attempt(f"{call.method} {call.label or show}", attempt_no, self.clock)
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

    async def _attempt(self, call: Call, att: _Attempt, size: int) -> tuple[int, Any, GatewayError | None]:
        hdrs = Headers({"Accept": ["text/plain"]})
        extra = call.headers() if callable(call.headers) else call.headers
        for k, v in (extra or {}).items():
            hdrs.setRawHeaders(k, [v])
        wd = _Watchdog(self.clock, self.retry.timeout if call.timed else None,
                       self._answer_wait(size) if call.timed else None, att)
        fobj: IO[bytes] | None = None
        try:
            data: Any = None
            if call.body is not None:
                fobj = call.body() if callable(call.body) else _bytes_file(call.body)
                data = _WatchedBody(fobj, wd)

            async def collect(resp: Any, sink: Callable[[bytes], None]) -> None:
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
        finally:
            if fobj is not None:
                fobj.close()
        show = self._show(call.url)
        if code not in call.ok:
            return code, result, GatewayError(call.method, show, code, result)
        problem = call.check(result) if call.check is not None else None
        if problem is not None:
            return code, result, GatewayError(call.method, show, None, "", reason=f"bad answer: {problem}")
        return code, result, None

    # -- API -----------------------------------------------------------------
    async def put_file(self, opener: Callable[[], IO[bytes]], label: str | None = None) -> str:
        """Upload an immutable file whose bytes ``opener()`` reads; return its cap."""
        size = _body_size(opener)
        _, body = await self.send(Call("put", "PUT", self.url(), body=opener, label=label, upload=True,
                                       size=size, check=lambda b: cap_problem(b, ("CHK", "LIT"), size)))
        return _cap_from(body)

    async def put_bytes(self, data: bytes, label: str | None = None) -> str:
        """Upload bytes as an immutable file; return its cap."""
        _, body = await self.send(Call("put", "PUT", self.url(), body=data, label=label, upload=True,
                                       check=lambda b: cap_problem(b, ("CHK", "LIT"), len(data))))
        return _cap_from(body)

    async def mkdir_immutable(self, body: bytes, priority: float = 0.0) -> str:
        """Create an immutable directory from a JSON body ``{name: [type, {ro_uri, metadata}]}``.

        ``priority``: lower goes first when requests queue for a slot.
        """
        _, resp = await self.send(Call("mkdir", "POST", self.url(), params={"t": "mkdir-immutable"},
                                       body=body, headers={"Content-Type": "application/json"},
                                       priority=priority, upload=True,
                                       check=lambda b: cap_problem(b, ("DIR2-CHK", "DIR2-LIT"))))
        return _cap_from(resp)

    async def mkdir_mutable(self) -> str:
        """Create an empty mutable directory; return its write cap."""
        _, body = await self.send(Call("mkdir", "POST", self.url(), params={"t": "mkdir"},
                                       check=lambda b: cap_problem(b, ("DIR2",))))
        return _cap_from(body)

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> Any:
        """``GET /uri/CAP[/path]?t=json``, parsed."""
        parsed: list[Any] = []
        await self.send(Call("get", "GET", self.url(cap, path), params={"t": "json"},
                             check=lambda b: _parse_json(b, parsed)))
        return parsed[-1]

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> int:
        """Stream a file's bytes to ``sink``; return how many there were.

        A retry after a fault asks for the rest only (a Range request) and
        goes on feeding ``sink`` where it stopped.  Only when the gateway
        answers a retry with the whole file again is ``restart`` called first,
        to start over.
        """
        expected = chk_size(cap)
        got = [0]

        def headers() -> Mapping[str, str]:
            return {"Range": f"bytes={got[0]}-"} if got[0] else {}

        async def read(resp: Any, collect: Any) -> int | str:
            if resp.code == 206:
                start = _range_start(resp)
                if start != got[0]:
                    await collect(lambda chunk: None)
                    return f"a range answer from byte {start}, not {got[0]}"
            elif got[0]:  # 200 to a Range request: the whole file again
                if restart is not None:
                    restart()
                got[0] = 0

            def count(chunk: bytes) -> None:
                got[0] += len(chunk)
                sink(chunk)
            await collect(count)
            return got[0]

        def problem(n: int | str) -> str | None:
            if isinstance(n, str):
                return n
            if expected is not None and n != expected:
                return f"{n} of {expected} bytes (the answer was cut short)"
            return None

        await self.send(Call("get", "GET", self.url(cap), ok=(200, 206), headers=headers, read=read,
                             check=problem))
        return got[0]

    async def get_range(self, cap: str, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset+length`` of a file, with one Range GET.

        Tahoe answers some ranges with 200 and the whole file; that is sliced.
        """
        if length == 0:
            return b""
        code, body = await self.send(Call(
            "get", "GET", self.url(cap), ok=(200, 206), headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            check=lambda b: None if len(b) in (length, chk_size(cap)) else f"{len(b)} bytes for a range of {length}"))
        data = body[offset:offset + length] if code == 200 else body
        if len(data) != length:
            raise GatewayError("GET", self._show(self.url(cap)), code, "",
                               reason=f"range answer has {len(data)} bytes, expected {length}")
        return bytes(data)

    async def check(self, cap: str, add_lease: bool = True, repair: bool = False,
                    verify: bool = False) -> Any:
        """``POST CAP?t=check&output=JSON`` for one object (not its children), parsed."""
        params = {"t": "check", "output": "JSON"}
        for flag, on in (("add-lease", add_lease), ("repair", repair), ("verify", verify)):
            if on:
                params[flag] = "true"
        parsed: list[Any] = []
        await self.send(Call("check", "POST", self.url(cap), params=params,
                             check=lambda b: _parse_json(b, parsed)))
        return parsed[-1]

    async def _stream(self, kind: str, cap: str, params: Mapping[str, str], sink: Callable[[bytes], None]) -> None:
        async def read(resp: Any, collect: Any) -> None:
            await collect(sink)
        await self.send(Call(kind, "POST", self.url(cap), params=params, read=read, attempts=1, timed=False))

    async def stream_deep_check(self, cap: str, sink: Callable[[bytes], None], add_lease: bool = True,
                                repair: bool = False, verify: bool = False) -> None:
        """``POST CAP?t=stream-deep-check``, feeding the body to ``sink`` as it arrives.

        Not retried and not timed out: the stream is as long as the tree, and
        a repeated partial walk would report objects twice.
        """
        params = {"t": "stream-deep-check"}
        for flag, on in (("add-lease", add_lease), ("repair", repair), ("verify", verify)):
            if on:
                params[flag] = "true"
        await self._stream("check", cap, params, sink)

    async def stream_manifest(self, cap: str, sink: Callable[[bytes], None]) -> None:
        """``POST CAP?t=stream-manifest``: one JSON line per object reachable from ``cap``."""
        await self._stream("get", cap, {"t": "stream-manifest"}, sink)

    async def child_cap(self, dircap: str, name: str) -> str | None:
        """The read cap linked as ``name`` in a directory, or None if there is no such child."""
        code, body = await self.send(Call("get", "GET", self.url(dircap, [name]), params={"t": "readonly-uri"},
                                          ok=(200, 404)))
        return body.decode("ascii", "replace").strip() if code == 200 else None

    async def link(self, dircap: str, name: str, cap: str) -> bool:
        """Link ``cap`` as ``name`` in a mutable directory without replacing; False if another cap has it.

        A retry whose first attempt did link (its answer was lost) finds its own cap there: True.
        """
        code, _ = await self.send(Call("link", "PUT", self.url(dircap, [name]),
                                       params={"t": "uri", "replace": "false"},
                                       body=cap.encode("ascii"), ok=(200, 201, 409)))
        if code != 409:
            return True
        there = await self.child_cap(dircap, name)
        return there is not None and _same_object(there, cap)

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, Any]], replace: bool = True) -> bool:
        """Link children into a mutable directory in one write: ``{name: (cap, metadata or None)}``.

        With ``replace`` False an existing name is left as it is, and False is returned.
        """
        body: dict[str, Any] = {}
        for name, (cap, metadata) in children.items():
            info: dict[str, Any] = {"rw_uri" if cap.startswith("URI:DIR2:") else "ro_uri": cap}
            if metadata is not None:
                info["metadata"] = metadata
            body[name] = ["dirnode" if cap.startswith("URI:DIR2") else "filenode", info]
        code, _ = await self.send(Call("link", "POST", self.url(dircap),
                                       params={"t": "set_children", "replace": "true" if replace else "false"},
                                       body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                       ok=(200, 409)))
        return code == 200

    async def unlink(self, dircap: str, name: str) -> bool:
        code, _ = await self.send(Call("unlink", "DELETE", self.url(dircap, [name]), ok=(200, 404)))
        return code == 200

    async def welcome(self) -> Any:
        parsed: list[Any] = []
        await self.send(Call("status", "GET", self.base, params={"t": "json"},
                             check=lambda b: _parse_json(b, parsed)))
        return parsed[-1]

    async def connected_servers(self) -> list[str]:
        """Nicknames of the storage servers the gateway is connected to."""
        info = await self.welcome()
        return [s.get("nickname") or s.get("nodeid", "?") for s in info.get("servers", [])
                if str(s.get("connection_status", "")).lower().startswith("connected")]

    async def preflight(self) -> None:
        """Fail early, with a clear message, when no storage server is connected."""
        try:
            servers = await self.connected_servers()
        except GatewayError as e:
            raise GridError(problem=f"the gateway at {self.base} does not answer ({e.reason or e})")
        if not servers:
            raise GridError(problem=f"the gateway at {self.base} is connected to no storage server")


def _bytes_file(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def _body_size(body: Body) -> int:
    if body is None:
        return 0
    if isinstance(body, bytes):
        return len(body)
    f = body()
    try:
        return f.seek(0, 2)
    finally:
        f.close()


def _range_start(resp: Any) -> int | None:
    values = resp.headers.getRawHeaders("content-range") or []
    m = re.match(r"bytes (\d+)-", values[0]) if values else None
    return int(m.group(1)) if m else None


def _same_object(a: str, b: str) -> bool:
    """Two caps of one immutable object (a read cap is the cap of an immutable object)."""
    return a.strip() == b.strip()


_B32 = "[a-z2-7]"
_CAP_FORMS = {
    "CHK": re.compile(rf"URI:CHK:{_B32}{{26}}:{_B32}{{52}}:(\d+):(\d+):(\d+)"),
    "LIT": re.compile(rf"URI:LIT:{_B32}*"),
    "DIR2-CHK": re.compile(rf"URI:DIR2-CHK:{_B32}{{26}}:{_B32}{{52}}:(\d+):(\d+):(\d+)"),
    "DIR2-LIT": re.compile(rf"URI:DIR2-LIT:{_B32}*"),
    "DIR2": re.compile(rf"URI:DIR2:{_B32}{{26}}:{_B32}{{52}}"),
}


def cap_problem(body: bytes, kinds: Sequence[str], size: int | None = None) -> str | None:
    """What is wrong with a cap the gateway answered (None: it is well formed, of the right size)."""
    text = body.decode("ascii", "replace").strip()
    for kind in kinds:
        m = _CAP_FORMS[kind].fullmatch(text)
        if m is None:
            continue
        if kind == "CHK" and size is not None and int(m.group(3)) != size:
            return f"a cap for {m.group(3)} bytes, not {size}"
        if kind == "LIT" and size is not None and len(lit_data(text) or b"") != size:
            return f"a literal cap of the wrong size, not {size} bytes"
        return None
    return f"not a whole {' or '.join(kinds)} cap ({len(text)} characters)"


def chk_size(cap: str) -> int | None:
    """The size a CHK file cap records (None for other caps)."""
    m = _CAP_FORMS["CHK"].fullmatch(cap)
    return int(m.group(3)) if m else None


def _parse_json(body: bytes, out: list[Any]) -> str | None:
    try:
        out.append(json.loads(body))
    except ValueError as e:
        return f"not valid JSON ({type(e).__name__}), perhaps cut short"
    return None


def _cap_from(body: bytes) -> str:
    cap = body.decode("ascii", "replace").strip()
    if not cap.startswith("URI:"):
        raise GatewayError("?", "(response)", 200, "", reason="the gateway answered with something that is not a cap")
    return cap


def make_http_client(reactor: Any, pool_size: int = 8) -> HTTPClient:
    """A treq client with a persistent connection pool."""
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = pool_size
    pool.cachedConnectionTimeout = 120
    pool.retryAutomatically = False
    return HTTPClient(Agent(reactor, pool=pool))
