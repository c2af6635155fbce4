"""Pings to a monitoring URL (``notify.url``) in the healthchecks.io style: ``URL/start`` when a run starts, ``URL``
when it succeeds, ``URL/fail`` when it fails, each a POST with a short text body, bounded by a timeout.

Not the gateway's sender: a ping is never retried (the next run pings again), and its URL holds a
token, so it is shown by its scheme and host alone, in logs and warnings alike.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as TxTimeoutError
from twisted.web.http_headers import Headers

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorTime

log = logging.getLogger(__name__)

#: Event -> the path added to the URL (healthchecks.io's).
SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}
#: Bytes of the body at most (healthchecks.io keeps the first 100 kB of a ping's body).
MAX_BODY = 10000


def shown(url: str) -> str:
    """``url`` as it may be shown: its scheme and host, the rest (the token) left out."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/…"


def make_client(reactor: IReactorTCP) -> HTTPClient:
    """A treq client that keeps no connection open (one ping now and then)."""
    from twisted.web.client import Agent

    return HTTPClient(Agent(reactor))


class Notifier:
    """Pings ``url`` through ``http`` (the seam for a fake), each ping given up after ``timeout``
    seconds on ``clock``."""

    def __init__(self, url: str, http: HTTPClient, clock: IReactorTime, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.clock = clock
        self.timeout = timeout

    async def ping(self, event: str, body: str) -> str | None:
        """Ping for ``event`` (start, success or fail) with ``body``; None when the URL answered 2xx or
        3xx, else why not, as a sentence that shows no more of the URL than :func:`shown`.  Never
        raises for a failed ping (a cancelled command's ``CancelledError`` goes on)."""
        url = self.url + SUFFIX[event]

        async def send() -> int:
            resp = await self.http.request("POST", url, data=body.encode("utf-8")[:MAX_BODY],
                                           headers=Headers({"Content-Type": ["text/plain; charset=utf-8"],
                                                            "User-Agent": ["lafs-backup"]}))
            await treq.content(resp)
            return int(resp.code)

        d = Deferred.fromCoroutine(send())
        timed_out = [False]

        def on_timeout(result: object, timeout: float) -> object:
            timed_out[0] = True
            return result
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=on_timeout)
        try:
            code = await d
        except Exception as e:  # (a refused connection, a DNS failure...: the ping failed, the run did not)
            if timed_out[0]:
                problem = f"no answer within {self.timeout:g}s"
            elif isinstance(e, (CancelledError, TxTimeoutError)):
                raise  # the command itself was cancelled (a signal)
            else:
                detail = str(e).replace(url, shown(self.url)).replace(self.url, shown(self.url))
                problem = type(e).__name__ + (f": {detail[:200]}" if detail else "")
        else:
            if code < 400:
                log.debug("notify %s: %s answered %d", event, shown(self.url), code)
                return None
            problem = f"HTTP {code}"
        return f"the {event} ping to {shown(self.url)} failed: {problem}"
