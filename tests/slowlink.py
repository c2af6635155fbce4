"""A slow link to put in front of a real gateway: a TCP relay that moves at most ``rate`` bytes per
second in each direction, and can cut the first answer longer than ``cut_after`` bytes short there
(once: the connection drops in the middle of it).

It records the requests it relays (their first lines and Range headers) and the bytes it moved.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from urllib.parse import urlsplit


class SlowLink:
    def __init__(self, upstream: str, rate: float, cut_after: int | None = None) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rate = rate
        self.cut_after = cut_after
        self.cuts = 0
        self.requests: list[str] = []
        self.ranges: list[str] = []
        self.bytes_down = 0
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/"
        self._closed = False

    def __enter__(self) -> "SlowLink":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            state = {"since": 0}  # bytes answered since the connection's last request
            threading.Thread(target=self._pump, args=(client, server, True, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, state), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool, state: dict) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if upward:
                    text = data.decode("latin-1")
                    for line in re.findall(r"(?m)^(?:GET|PUT|POST|DELETE|HEAD) [^\r\n]*", text):
                        with self._lock:
                            self.requests.append(line)
                        state["since"] = 0
                    self.ranges += re.findall(r"(?mi)^Range: ([^\r\n]*)", text)
                    with self._lock:
                        self.bytes_up += len(data)
                else:
                    with self._lock:
                        cut = (self.cut_after is not None and self.cuts == 0
                               and state["since"] + len(data) > self.cut_after)
                        if cut:
                            self.cuts += 1
                    if cut:
                        data = data[:max(0, self.cut_after - state["since"])]
                        dst.sendall(data)
                        with self._lock:
                            self.bytes_down += len(data)
                        break  # the link drops in the middle of the answer
                    state["since"] += len(data)
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
                time.sleep(len(data) / self.rate)  # the pace of the link, chunk by chunk
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
