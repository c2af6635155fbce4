"""The dashboard's HTTP edge, on Twisted Web: the token, the methods allowed, the headers, and
streamed downloads.

Every request needs the token made at start: a first request carrying it as
``?token=`` gets it back as an HttpOnly, SameSite=Strict cookie and is sent
on to the same address without it, so the token stays neither in the
address bar nor in links or the history.  Tokens are compared in constant
time.  Only GET and HEAD are answered (nothing here changes anything).
The access log names method, path and status, never the query (which may
hold the token).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import urllib.parse
from typing import IO, Any, cast

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..errors import LafsBackupError
from ..log import redact
from .html import CSS, STYLE, error_page
from .pages import Dashboard, Download, NotFound, Page

log = logging.getLogger(__name__)

#: Sent with every answer: nothing loads from elsewhere, no script runs, no page frames this one,
#: no address is passed on as a referrer, and nothing is cached (the pages hold file names).
HEADERS = {
    b"content-security-policy": b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                b"frame-ancestors 'none'; base-uri 'none'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
    b"cross-origin-resource-policy": b"same-origin",
}


def content_disposition(filename: str) -> bytes:
    """An attachment header for any name: an ASCII stand-in, and the exact name RFC 5987-encoded
    (no quote, semicolon or line break of a hostile name reaches the header as itself)."""
    plain = "".join(c if c.isascii() and (c.isalnum() or c in "._-+") else "_" for c in filename) or "download"
    exact = urllib.parse.quote(filename.encode("utf-8", "surrogateescape"), safe="")
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}".encode("ascii")


class _Out:
    """The response body as the file object ``dump``'s writers write to."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def write(self, data: bytes) -> int:
        self._request.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def _abort(request: Request) -> None:
    """Break the connection off (a download that must not look complete)."""
    transport = request.channel.transport if request.channel is not None else None
    if ITCPTransport.providedBy(transport) or hasattr(transport, "abortConnection"):
        transport.abortConnection()  # type: ignore[union-attr]


class Gate(Resource):
    """Every address: the token first, then the dashboard's answer."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard, token: str) -> None:
        super().__init__()
        self.dashboard = dashboard
        self._token = token.encode("ascii")
        # Cookies are per host, not per port: each dashboard's has a name of its own (from its token,
        # which the name does not reveal), so two of them on one host do not overwrite each other's.
        self._cookie = b"lafs_backup_web_" + hashlib.sha256(self._token).hexdigest()[:12].encode()

    def _allowed(self, given: bytes | None) -> bool:
        return given is not None and hmac.compare_digest(given, self._token)

    def render(self, request: Request) -> Any:  # noqa: C901  (the order of the gate's questions matters)
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, 405, "the dashboard is read-only: only GET and HEAD are answered")
        raw_path, _, raw_query = request.uri.partition(b"?")
        query = urllib.parse.parse_qs(raw_query.decode("ascii", "replace"), keep_blank_values=True)
        given = query.pop("token", None)
        if given is not None:
            if not self._allowed(given[0].encode("utf-8", "replace")):
                return self._error(request, 403, "the token is not this dashboard's (see the URL it printed)")
            request.addCookie(self._cookie, self._token, path=b"/", httpOnly=True, sameSite="strict")
            rest = urllib.parse.urlencode(query, doseq=True)
            request.setResponseCode(303)
            request.setHeader(b"location", raw_path + (b"?" + rest.encode("ascii") if rest else b""))
            return b""
        if not self._allowed(request.getCookie(self._cookie)):
            return self._error(request, 403, "open the URL lafs-backup web printed (it holds the token)")
        path = urllib.parse.unquote_to_bytes(raw_path)
        if path == STYLE.encode():
            request.setHeader(b"content-type", b"text/css; charset=utf-8")
            return CSS
        d = ensureDeferred(self._answer(request, path, query))
        request.notifyFinish().addErrback(lambda _f: d.cancel())
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _error(self, request: Request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return error_page(code, message)

    async def _answer(self, request: Request, path: bytes, query: dict[str, list[str]]) -> None:
        try:
            answer = await self.dashboard.answer(path, query)
        except NotFound as e:
            body = self._error(request, 404, redact(str(e)))
        except LafsBackupError as e:  # the grid could not be read: said as the CLI says it
            body = self._error(request, 502, redact(e.message))
        else:
            if isinstance(answer, Download):
                await self._download(request, answer)
                return
            assert isinstance(answer, Page)
            request.setResponseCode(answer.code)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            body = answer.body
        request.setHeader(b"content-length", str(len(body)).encode())
        if not request._disconnected:
            request.write(body)
            request.finish()

    async def _download(self, request: Request, dl: Download) -> None:
        request.setHeader(b"content-type", dl.content_type.encode("ascii"))
        request.setHeader(b"content-disposition", content_disposition(dl.filename))
        if dl.size is not None:
            request.setHeader(b"content-length", str(dl.size).encode())
        if request.method == b"HEAD":
            request.write(b"")
            request.finish()
            return
        ok = await dl.write(cast(IO[bytes], _Out(request)))
        if request._disconnected:
            return
        if not ok:  # the content is not what was backed up: the browser must not keep it as complete
            _abort(request)
            return
        request.finish()

    def _failed(self, f: Failure, request: Request) -> None:
        if f.check(CancelledError) or request._disconnected:
            return None
        log.error("web: %s %s failed: %s", request.method.decode(), redact(request.path.decode("utf-8", "replace")),
                  redact(f.getErrorMessage()), exc_info=f.value)
        if request.startedWriting:  # (a download, half sent: broken off, so it is not taken as whole)
            _abort(request)
            return None
        body = self._error(request, 500, "the dashboard failed on this page (see its log)")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()
        return None


class DashboardSite(Site):
    """Twisted's site, with an access log of method, path and status alone, at DEBUG."""

    displayTracebacks = False

    def log(self, request: HTTPRequest) -> None:
        log.debug("web: %s %s %d", request.method.decode("ascii", "replace"),
                  redact(request.path.decode("utf-8", "replace")), request.code)


def site(dashboard: Dashboard, token: str) -> Site:
    """The site: every address through the gate."""
    s = DashboardSite(Gate(dashboard, token))
    s.noisy = False
    return s

