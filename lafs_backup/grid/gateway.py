"""The Tahoe-LAFS web API's verbs on one gateway: put, get, mkdir, link, list, download, check, manifest.

Each verb is one :class:`~.sender.Call`, sent (with its slots, timeouts and
retries) by the gateway's :class:`~.sender.Sender`, the only user of treq;
this module knows the web API and the caps it answers, nothing of snapshots.
An answer that is not what the verb asked for (a cap cut short, JSON that
does not parse) is retried like a dropped connection.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from ..caps import lit_data
from ..errors import GatewayError, GridError
from ..protocols import JSON, BodyFile
from ..retry import RetryPolicy
from .download import Resume
from .kept import KeptReads
from .ratelimit import TokenBucket
from .sender import Attempt, Call, Collect, HTTPClient, Sender, body_size, make_http_client


@dataclass(eq=False)
class Gateway:
    """Calls to one gateway.  ``http`` is a treq :class:`HTTPClient` (the seam for fakes); it and
    the settings after it are the :class:`Sender`'s, which sends every call."""

    base_url: str
    http: HTTPClient
    clock: IReactorTime
    retry: RetryPolicy
    jobs: int = 6
    debug_requests: bool = False
    rng: random.Random = field(default_factory=random.Random)
    limit_bytes: TokenBucket | None = None
    limit_objects: TokenBucket | None = None
    #: Local copies of index chunks and immutable directory listings (None: none kept).
    kept: KeptReads | None = None

    def __post_init__(self) -> None:
        self.base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        self.sender = Sender(self.http, self.clock, self.retry, self.jobs, self.debug_requests, self.rng,
                             self.limit_bytes, self.limit_objects)

    @property
    def counts(self) -> Counter[str]:
        """Requests sent, by kind ("put", "mkdir", "get", ...), attempts included."""
        return self.sender.counts

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies handed to the gateway so far (failed attempts taken back)."""
        return self.sender.bytes_sent

    @property
    def inflight(self) -> set[Attempt]:
        """In-flight attempts, for the manhole's ``debug_timeouts``."""
        return self.sender.inflight

    def halt(self, why: BaseException) -> None:
        """Send no more uploads: the run has failed, so uploads still queued fail at once with ``why``."""
        self.sender.halt(why)

    def resume(self) -> None:
        """A new run (a later round of ``watch``) may upload again."""
        self.sender.resume()

    async def send(self, call: Call) -> tuple[int, Any]:
        """Send ``call`` with its retries: :meth:`Sender.send`."""
        return await self.sender.send(call)

    def url(self, cap: str | None = None, path: Sequence[str] = ()) -> str:
        if cap is None:
            return self.base + "uri"
        out = self.base + "uri/" + quote(cap, safe=":")
        for name in path:
            out += "/" + quote(name, safe="")
        return out

    # -- API -----------------------------------------------------------------
    async def put_file(self, opener: Callable[[], BodyFile], label: str | None = None) -> str:
        """Upload an immutable file whose bytes ``opener()`` reads; return its cap."""
        size = body_size(opener)
        _, body = await self.send(Call("put", "PUT", self.url(), body=opener, label=label, upload=True,
                                       size=size, check=lambda b: cap_problem(b, ("CHK", "LIT"), size)))
        return _cap_from(body)

    async def put_bytes(self, data: bytes, label: str | None = None, keep: bool = False) -> str:
        """Upload bytes as an immutable file; return its cap.  ``keep``: a local copy is kept too
        (an index chunk, which :meth:`get_small` then reads with no request)."""
        _, body = await self.send(Call("put", "PUT", self.url(), body=data, label=label, upload=True,
                                       check=lambda b: cap_problem(b, ("CHK", "LIT"), len(data))))
        cap = _cap_from(body)
        if keep and self.kept is not None:
            self.kept.put(cap, data)
        return cap

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

    async def get_json(self, cap: str, path: Sequence[str] = ()) -> JSON:
        """``GET /uri/CAP[/path]?t=json``, parsed.  An immutable directory's listing is kept
        locally (see :attr:`kept`) and read from there the next time."""
        keep = self.kept if not path and cap.startswith("URI:DIR2-CHK:") else None
        if keep is not None:
            held = keep.get(cap)
            if held is not None:
                with contextlib.suppress(ValueError):
                    return json.loads(held)
        parsed: list[JSON] = []
        raw: list[bytes] = []

        def parse(body: bytes) -> str | None:
            raw[:] = [body]
            return _parse_json(body, parsed)

        await self.send(Call("get", "GET", self.url(cap, path), params={"t": "json"}, check=parse))
        if keep is not None:
            keep.put(cap, raw[-1])
        return parsed[-1]

    async def get_small(self, cap: str) -> bytes:
        """The whole of a small immutable file (an index chunk): its local copy, else downloaded
        (and then kept, see :attr:`kept`)."""
        if self.kept is not None:
            held = self.kept.get(cap)
            if held is not None:
                return held
        parts: list[bytes] = []
        await self.download(cap, parts.append, parts.clear)
        data = b"".join(parts)
        if self.kept is not None and cap.startswith("URI:CHK:"):
            self.kept.put(cap, data)
        return data

    async def download(self, cap: str, sink: Callable[[bytes], None],
                       restart: Callable[[], None] | None = None) -> int:
        """Stream a file's bytes to ``sink``; return how many there were.

        A retry after a fault asks for the rest only (a Range request) and
        goes on feeding ``sink`` where it stopped.  Only when the gateway
        answers a retry with the whole file again is ``restart`` called first,
        to start over.
        """
        resume = Resume(sink, chk_size(cap), restart)
        await self.send(Call("get", "GET", self.url(cap), ok=(200, 206), headers=resume.headers, read=resume.read,
                             check=resume.problem))
        return resume.got

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
            raise GatewayError("GET", self.sender.show(self.url(cap)), code, "",
                               reason=f"range answer has {len(data)} bytes, expected {length}")
        return bytes(data)

    async def check(self, cap: str, add_lease: bool = True, repair: bool = False,
                    verify: bool = False) -> JSON:
        """``POST CAP?t=check&output=JSON`` for one object (not its children), parsed."""
        params = {"t": "check", "output": "JSON"}
        for flag, on in (("add-lease", add_lease), ("repair", repair), ("verify", verify)):
            if on:
                params[flag] = "true"
        parsed: list[JSON] = []
        await self.send(Call("check", "POST", self.url(cap), params=params,
                             check=lambda b: _parse_json(b, parsed)))
        return parsed[-1]

    async def _stream(self, kind: str, cap: str, params: Mapping[str, str], sink: Callable[[bytes], None]) -> None:
        async def read(resp: IResponse, collect: Collect) -> None:
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

    async def set_children(self, dircap: str, children: Mapping[str, tuple[str, JSON]], replace: bool = True) -> bool:
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

    async def welcome(self) -> JSON:
        parsed: list[JSON] = []
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


def _parse_json(body: bytes, out: list[JSON]) -> str | None:
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


__all__ = ["Call", "Gateway", "cap_problem", "chk_size", "make_http_client"]
