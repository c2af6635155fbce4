"""The Tahoe-LAFS gateway client: web API calls through treq, with bounded concurrency, timeouts and retries.

This is the only module that uses treq.  Every request goes through
:meth:`Gateway._request`, which holds one of ``jobs`` slots per attempt,
times each attempt out through the injected clock (cancelling it before the
next attempt starts), and retries connection errors, timeouts and 5xx
answers with the configured backoff.  Errors carry the URL with caps
redacted.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import re
from collections import Counter
from typing import IO, Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (FileBodyProducer, RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed,
                                ResponseNeverReceived)
from twisted.web.http_headers import Headers

from .config import RetryPolicy
from .errors import GatewayError, GridError
from .log import redact
from .ratelimit import TokenBucket
from .snapshot import lit_data

log = logging.getLogger(__name__)


async def salted_if_unhappy(first: Callable[[], Awaitable[str]], again: Callable[[], Awaitable[str]],
                            note: str) -> str:
    """``first()``, which must not retry an unhappy upload; if the grid refuses it as unhappy, log
    ``note`` and return ``again()``, the same object made under a salt.

    A refusal with every server connected usually means the servers still hold shares of an
    interrupted upload of the same bytes as "incoming" (Tahoe keeps them up to 30 minutes);
    other bytes have another storage index, which those shares are not in the way of.
    """
    try:
        return await first()
    except GatewayError as e:
        if not e.unhappy:
            raise
    log.info(note)
    return await again()

_RETRYABLE_EXC = (ConnectError, ConnectionLost, ConnectionDone, ResponseFailed, ResponseNeverReceived,
                  TxTimeoutError, CancelledError)
#: Failures of sending a request: retryable when every cause is (a timeout
#: cancelled the body being sent; the connection dropped), not when the body
#: itself failed (a file that cannot be read).
_SEND_FAILED = (RequestGenerationFailed, RequestTransmissionFailed)


def _failure_cause(e: BaseException) -> tuple[BaseException | None, bool]:
    """For a failed attempt: (a cause that must not be retried or None, whether it was a timeout)."""
    if isinstance(e, (CancelledError, TxTimeoutError)):
        return None, True
    reasons = [f.value for f in getattr(e, "reasons", [])]
    for v in reasons:
        if isinstance(e, _SEND_FAILED) and not isinstance(v, _RETRYABLE_EXC):
            return v, False
    return None, any(isinstance(v, (CancelledError, TxTimeoutError)) for v in reasons)


class _Attempt:
    """One in-flight attempt; ``expire()`` makes it time out now (it is then retried like any timeout)."""

    def __init__(self, d: Deferred, what: str, number: int, started: float, clock: IReactorTime) -> None:
        self.deferred = d
        self.what = what
        self.number = number
        self.started = started
        self._clock = clock
        self.forced = False

    def expire(self) -> None:
        self.forced = True
        self.deferred.cancel()

    def __repr__(self) -> str:
        age = self._clock.seconds() - self.started
        return f"<attempt {self.number} of {self.what}, {age:.1f}s>"


class _Slots:
    """A counting semaphore that serves waiters by priority (lower first), then in order of arrival."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._waiting: list[tuple[float, int, Deferred]] = []
        self._seq = 0

    def acquire(self, priority: float = 0.0) -> Deferred:
        if self.tokens > 0 and not self._waiting:
            self.tokens -= 1
            return succeed(None)
        d: Deferred = Deferred()
        self._seq += 1
        heapq.heappush(self._waiting, (priority, self._seq, d))
        return d

    def release(self) -> None:
        if self._waiting:
            _, _, d = heapq.heappop(self._waiting)
            d.callback(None)
        else:
            self.tokens += 1


class Gateway:
    """Calls to one gateway.  ``http`` is a treq :class:`HTTPClient` (the seam for fakes)."""

    def __init__(self, base_url: str, http: HTTPClient, clock: IReactorTime, retry: RetryPolicy,
                 jobs: int = 6, debug_requests: bool = False, rng: random.Random | None = None,
                 limit_bytes: TokenBucket | None = None, limit_objects: TokenBucket | None = None) -> None:
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self._http = http
        self._clock = clock
        self._retry = retry
        self._rng = rng or random.Random()
        self._limit_bytes = limit_bytes
        self._limit_objects = limit_objects
        self._slots = _Slots(jobs)
        self._debug = debug_requests
        #: Requests sent, by kind ("put", "mkdir", "get", ...), attempts included.
        self.counts: Counter[str] = Counter()
        #: In-flight attempts, for the manhole's ``debug_timeouts``.
        self.inflight: set[_Attempt] = set()
        self._halted: BaseException | None = None

    def halt(self, why: BaseException) -> None:
        """Send no more uploads: the run has failed, so uploads still queued fail at once with ``why``."""
        if self._halted is None:
            self._halted = why

    # -- plumbing ------------------------------------------------------------
    def url(self, cap: str | None = None, path: Sequence[str] = ()) -> str:
        if cap is None:
            return self.base + "uri"
        out = self.base + "uri/" + quote(cap, safe=":")
        for name in path:
            out += "/" + quote(name, safe="")
        return out

    def _show(self, url: str) -> str:
        return url if self._debug else redact(url)

    async def _request(self, kind: str, method: str, url: str, *,
                       params: Mapping[str, str] | None = None,
                       body: bytes | Callable[[], IO[bytes]] | None = None,
                       headers: Mapping[str, str] | None = None,
                       ok: Sequence[int] = (200,),
                       on_response: Callable[[Any], Awaitable[Any]] | None = None,
                       retry_unhappy: bool = True, attempts: int | None = None,
                       timeout: bool = True, priority: float = 0.0,
                       label: str | None = None,
                       check: Callable[[bytes], str | None] | None = None) -> tuple[int, Any]:
        """Send a request with retries; return (status, result).

        ``body`` is bytes or a callable that opens a fresh file object for
        each attempt (closed after it), so no two attempts share a file
        position.  ``on_response`` consumes the response body (default:
        read it all).  ``label`` names the request in the manhole's list of
        attempts (a path; the URL, redacted, by default).  Raises :class:`GatewayError` after the last attempt or
        for a status that is neither in ``ok`` nor retryable.
        """
        hdrs = Headers({"Accept": ["text/plain"]})
        for k, v in (headers or {}).items():
            hdrs.setRawHeaders(k, [v])
        attempt_no = 0
        while True:
            attempt_no += 1
            if self._limit_objects is not None:
                await self._limit_objects.take(1)
            if self._limit_bytes is not None and body is not None:
                await self._limit_bytes.take(_body_size(body))
            await self._slots.acquire(priority)
            if self._halted is not None and kind in ("put", "mkdir"):
                self._slots.release()
                raise self._halted
            fobj: IO[bytes] | None = None
            att: _Attempt | None = None
            try:
                data: Any = body
                if callable(body):
                    fobj = body()
                    data = FileBodyProducer(fobj, readSize=1 << 16)
                self.counts[kind] += 1
                log.debug("%s %s (attempt %d)", method, self._show(url), attempt_no)

                async def attempt() -> tuple[int, Any]:
                    resp = await self._http.request(method, url, params=params, data=data, headers=hdrs)
                    if resp.code in ok:
                        result = await (on_response(resp) if on_response else treq.content(resp))
                        return resp.code, result
                    text = (await treq.content(resp)).decode("utf-8", "replace")
                    return resp.code, text

                d = Deferred.fromCoroutine(attempt())
                att = _Attempt(d, f"{method} {label or self._show(url)}", attempt_no,
                               self._clock.seconds(), self._clock)
                self.inflight.add(att)
                if self._retry.timeout and timeout:
                    d.addTimeout(self._retry.timeout, self._clock)
                try:
                    code, result = await d
                finally:
                    self.inflight.discard(att)
                error: GatewayError | None = None
                problem = check(result) if check is not None and code in ok else None
                if problem is not None:
                    error = GatewayError(method, self._show(url), None, "", reason=f"bad answer: {problem}")
                elif code not in ok:
                    error = GatewayError(method, self._show(url), code, result)
                    if code < 500 or (not retry_unhappy and error.unhappy):
                        raise error
            except _RETRYABLE_EXC + _SEND_FAILED as e:
                fatal, timed_out = _failure_cause(e)
                if fatal is not None:
                    raise fatal
                reason = "timed out" if timed_out else type(e).__name__
                if att is not None and att.forced:
                    reason = "timed out (forced from the manhole)"
                error = GatewayError(method, self._show(url), None, "", reason=reason)
            finally:
                if fobj is not None:
                    fobj.close()
                self._slots.release()
            if error is None:
                return code, result
            if attempt_no >= (attempts or self._retry.attempts):
                raise error
            # Jitter, so that requests that failed together don't retry in lockstep.
            delay = self._retry.delay(attempt_no) * self._rng.uniform(0.7, 1.3)
            log.info("%s; retry %d of %d in %.1fs", error, attempt_no, self._retry.attempts - 1, delay)
            await deferLater(self._clock, delay, lambda: None)

    # -- API -----------------------------------------------------------------
    async def put_file(self, opener: Callable[[], IO[bytes]], label: str | None = None,
                       retry_unhappy: bool = True) -> str:
        """Upload an immutable file; return its cap.  ``retry_unhappy`` as for :meth:`put_bytes`."""
        size = _body_size(opener)
        _, body = await self._request("put", "PUT", self.url(), body=opener, label=label,
                                      retry_unhappy=retry_unhappy, check=lambda b: cap_problem(b, ("CHK", "LIT"), size))
        return _cap_from(body)

    async def put_bytes(self, data: bytes, retry_unhappy: bool = True) -> str:
        """Upload bytes as an immutable file.  ``retry_unhappy=False`` raises at once on
        UploadUnhappinessError, for callers that can change the bytes instead."""
        _, body = await self._request("put", "PUT", self.url(), body=data, retry_unhappy=retry_unhappy,
                                      check=lambda b: cap_problem(b, ("CHK", "LIT"), len(data)))
        return _cap_from(body)


    async def put_bytes_salting(self, data: bytes, note: str) -> str:
        """Upload bytes; if the grid refuses them as unhappy, upload them again followed by a
        random salt (for objects read back by offset, or never read back)."""
        return await salted_if_unhappy(
            lambda: self.put_bytes(data, retry_unhappy=False),
            lambda: self.put_bytes(data + b"\0lafs-backup-salt:" + os.urandom(16)), note)
    async def mkdir_immutable(self, body: bytes, priority: float = 0.0, retry_unhappy: bool = True) -> str:
        """Create an immutable directory from a JSON body ``{name: [type, {ro_uri, metadata}]}``.

        ``priority``: lower goes first when requests queue for a slot (the
        uploader puts deeper directories first: they are on the longest chain).
        ``retry_unhappy`` as for :meth:`put_bytes`.
        """
        _, resp = await self._request("mkdir", "POST", self.url(), params={"t": "mkdir-immutable"},
                                      body=body, headers={"Content-Type": "application/json"},
                                      priority=priority, retry_unhappy=retry_unhappy,
                                      check=lambda b: cap_problem(b, ("DIR2-CHK", "DIR2-LIT")))
        return _cap_from(resp)

    async def mkdir_mutable(self) -> str:
        _, body = await self._request("mkdir", "POST", self.url(), params={"t": "mkdir"},
                                      check=lambda b: cap_problem(b, ("DIR2",)))
        return _cap_from(body)

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> Any:
        """``GET /uri/CAP[/path]?t=json``, parsed."""
        parsed: list[Any] = []
        await self._request("get", "GET", self.url(cap, path), params={"t": "json"},
                            check=lambda b: _parse_json(b, parsed))
        return parsed[-1]

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> None:
        """Stream a file's bytes to ``sink``; ``restart`` is called before each retry's data."""
        expected = chk_size(cap)

        async def consume(resp: Any) -> int:
            if restart is not None:
                restart()
            got = [0]

            def count(chunk: bytes) -> None:
                got[0] += len(chunk)
                sink(chunk)
            await treq.collect(resp, count)
            return got[0]
        await self._request("get", "GET", self.url(cap), on_response=consume,
                            check=lambda n: None if expected is None or n == expected else
                            f"{n} of {expected} bytes (the answer was cut short)")

    async def get_range(self, cap: str, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset+length`` of a file, with one Range GET.

        Tahoe answers some ranges with 200 and the whole file; that is sliced.
        """
        if length == 0:
            return b""
        code, body = await self._request("get", "GET", self.url(cap), ok=(200, 206),
                                         headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                                         check=lambda b: None if len(b) in (length, chk_size(cap))
                                         else f"{len(b)} bytes for a range of {length}")
        data = body[offset:offset + length] if code == 200 else body
        if len(data) != length:
            raise GatewayError("GET", self._show(self.url(cap)), code, "",
                               reason=f"range answer has {len(data)} bytes, expected {length}")
        return bytes(data)

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

        async def consume(resp: Any) -> None:
            await treq.collect(resp, sink)
        await self._request("check", "POST", self.url(cap), params=params, on_response=consume,
                            attempts=1, timeout=False)

    async def stream_manifest(self, cap: str, sink: Callable[[bytes], None]) -> None:
        """``POST CAP?t=stream-manifest``: one JSON line per object reachable from ``cap``."""
        async def consume(resp: Any) -> None:
            await treq.collect(resp, sink)
        await self._request("get", "POST", self.url(cap), params={"t": "stream-manifest"}, on_response=consume,
                            attempts=1, timeout=False)

    async def link(self, dircap: str, name: str, cap: str) -> bool:
        """Link ``cap`` as ``name`` in a mutable directory without replacing; False if taken."""
        code, _ = await self._request("link", "PUT", self.url(dircap, [name]), params={"t": "uri", "replace": "false"},
                                      body=cap.encode("ascii"), ok=(200, 201, 409))
        return code != 409

    async def unlink(self, dircap: str, name: str) -> bool:
        code, _ = await self._request("unlink", "DELETE", self.url(dircap, [name]), ok=(200, 404))
        return code == 200

    async def welcome(self) -> Any:
        parsed: list[Any] = []
        await self._request("status", "GET", self.base, params={"t": "json"}, check=lambda b: _parse_json(b, parsed))
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


def _body_size(body: bytes | Callable[[], IO[bytes]]) -> int:
    if isinstance(body, bytes):
        return len(body)
    f = body()
    try:
        return f.seek(0, 2)
    finally:
        f.close()


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
