"""A fault-injecting HTTP proxy to put in front of a real Tahoe gateway.

Each request is forwarded, or answered with a fault chosen by a plan:
``plan(method, path, n)`` gets the request's method, path and its number
among requests of that method (1-based) and returns an action:

- ``None``: forward it;
- ``"500"`` / ``"410"``: answer that status without forwarding;
- ``"unhappy"``: answer 500 with Tahoe's UploadUnhappinessError text;
- ``"slowdown"``: answer 503 with S3's SlowDown error (throttling);
- ``"500-echo"``: answer 500 with a Tahoe-style traceback quoting the request's
  path and body (as Tahoe's own errors quote caps);
- ``"drop"``: read the request, then close the connection unanswered;
- ``"stall"``: read the request, answer nothing for ``stall`` seconds, close;
- ``"truncate"``: forward, then send the full Content-Length but half the body;
- ``"truncate-close"``: forward, then send half the body with no length, and close;
- ``"forward-drop"``: forward (the gateway does the work), then close the connection
  without answering, as a link lost just after the request was served.

Every fault is recorded in ``faults`` as (action, method, path).
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from collections import Counter
from typing import Callable
from urllib.parse import urlsplit

Plan = Callable[[str, str, int], "str | None"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    def __init__(self, upstream: str, plan: Plan, stall: float = 6.0) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.plan = plan
        self.stall = stall
        self.faults: list[tuple[str, str, str]] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def injected(self, action: str) -> int:
        return sum(1 for a, _, _ in self.faults if a == action)

    # -- one connection ------------------------------------------------------------
    def _serve(self, conn: socket.socket, rfile) -> None:
        while True:
            line = rfile.readline(65537)
            if not line or not line.strip():
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: list[tuple[str, str]] = []
            length = 0
            chunked = False
            while True:
                h = rfile.readline(65537).decode("latin-1")
                if h in ("\r\n", "\n", ""):
                    break
                name, _, value = h.partition(":")
                headers.append((name.strip(), value.strip()))
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if any(k.lower() == "expect" and "100" in v for k, v in headers):
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it to send the body
                headers = [(k, v) for k, v in headers if k.lower() != "expect"]
            if chunked:  # (S3 clients stream bodies so): forwarded with a length
                parts = []
                while True:
                    size = int(rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        break
                    parts.append(rfile.read(size))
                    rfile.readline(65537)
                body = b"".join(parts)
                headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
                headers.append(("Content-Length", str(len(body))))
            else:
                body = rfile.read(length) if length else b""
            with self._lock:
                self.counts[method] += 1
                n = self.counts[method]
            action = self.plan(method, target, n)
            if action is not None:
                self.faults.append((action, method, target))
            if action in ("500", "410", "unhappy"):
                status = 410 if action == "410" else 500
                text = (b"allmydata.interfaces.UploadUnhappinessError: fault injected by the test proxy\n"
                        if action == "unhappy" else b"fault injected by the test proxy\n")
                self._send(conn, status, "Fault", [("Content-Type", "text/plain")], text)
                continue
            if action == "slowdown":
                text = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>")
                self._send(conn, 503, "Slow Down", [("Content-Type", "application/xml")], text)
                continue
            if action == "500-echo":
                text = (b"Traceback (most recent call last):\n  File \"allmydata/web/common.py\"\n"
                        b"allmydata.mutable.common.UnrecoverableFileError: " + target.encode("latin-1")
                        + b" " + body[:300] + b"\n")
                self._send(conn, 500, "Internal Server Error", [("Content-Type", "text/plain")], text)
                continue
            if action == "drop":
                conn.close()
                return
            if action == "stall":
                time.sleep(self.stall)
                conn.close()
                return
            status, reason, rheaders, rbody, rlength = self._forward(method, target, headers, body)
            if action == "forward-drop":
                conn.close()
                return
            if action == "truncate":
                self._send(conn, status, reason, rheaders, rbody[: len(rbody) // 2], length=len(rbody))
                conn.close()
                return
            if action == "truncate-close":
                head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in rheaders if k.lower() != "content-length")
                conn.sendall(head.encode("latin-1") + b"\r\n" + rbody[: len(rbody) // 2])
                conn.close()
                return
            self._send(conn, status, reason, rheaders, rbody, length=rlength if method == "HEAD" else None)

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes, int | None]:
        c = http.client.HTTPConnection(*self.upstream, timeout=300)
        try:
            c.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in _HOP:
                    c.putheader(k, v)
            c.endheaders(body if body else None)
            r = c.getresponse()
            data = r.read()
            rheaders = [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP | {"content-length"}]
            length = r.getheader("content-length")  # a HEAD answer's says what a GET would carry
            return r.status, r.reason, rheaders, data, int(length) if length else None
        finally:
            c.close()

    @staticmethod
    def _send(conn: socket.socket, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              length: int | None = None) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() != "content-length")
        head += f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
        try:
            conn.sendall(head.encode("latin-1") + body)
        except OSError:
            pass
