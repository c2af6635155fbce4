"""Resuming a download: a retry asks for the bytes not yet had, and the sink goes on where it stopped."""

from __future__ import annotations

import re
from typing import Awaitable, Callable, Mapping, Protocol, Sequence


class _Headers(Protocol):
    def getRawHeaders(self, name: str) -> Sequence[str] | None: ...


class Answer(Protocol):
    """What a download reads of an answer (``twisted.web.iweb.IResponse``): its status and headers."""

    @property
    def code(self) -> int: ...

    @property
    def headers(self) -> _Headers: ...


class Resume:
    """One streamed download across its attempts: the ``headers``, ``read`` and ``check`` of its
    :class:`~.sender.Call`.

    Each attempt after bytes arrived asks for the rest (a Range request);
    its answer goes on feeding ``sink`` where the last one stopped.  Only
    when the gateway answers with the whole file again is ``restart`` called
    first, to start over.  ``expected`` (None: unknown) is the file's size:
    fewer bytes is an answer cut short.  ``got`` is how many bytes ``sink``
    has been fed since the last start.
    """

    def __init__(self, sink: Callable[[bytes], None], expected: int | None,
                 restart: Callable[[], None] | None = None) -> None:
        self._sink = sink
        self._expected = expected
        self._restart = restart
        self.got = 0

    def headers(self) -> Mapping[str, str]:
        """The headers of the next attempt: a Range for the rest once bytes arrived."""
        return {"Range": f"bytes={self.got}-"} if self.got else {}

    async def read(self, resp: Answer, collect: Callable[[Callable[[bytes], None]], Awaitable[None]]) -> int | str:
        """Feed an answer to the sink; return the bytes had so far, or (a string) what is wrong with it."""
        if resp.code == 206:
            start = range_start(resp)
            if start != self.got:
                await collect(lambda chunk: None)
                return f"a range answer from byte {start}, not {self.got}"
        elif self.got:  # 200 to a Range request: the whole file again
            if self._restart is not None:
                self._restart()
            self.got = 0

        def count(chunk: bytes) -> None:
            self.got += len(chunk)
            self._sink(chunk)
        await collect(count)
        return self.got

    def problem(self, n: int | str) -> str | None:
        """What is wrong with the result of :meth:`read` (None: the download is whole)."""
        if isinstance(n, str):
            return n
        if self._expected is not None and n != self._expected:
            return f"{n} of {self._expected} bytes (the answer was cut short)"
        return None


def range_start(resp: Answer) -> int | None:
    """The first byte of a range answer, from its Content-Range (None: none given)."""
    values = resp.headers.getRawHeaders("content-range") or []
    m = re.match(r"bytes (\d+)-", values[0]) if values else None
    return int(m.group(1)) if m else None
