"""Verify: check every share of a snapshot and read file contents back against their recorded SHA-256."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from .check import StreamParser, Verdict
from .encode import Decoder
from .entry import KIND_DIR, KIND_FILE
from .errors import GatewayError, SnapshotError
from .gateway import Gateway
from .pack import PackReader, PackRef
from .report import Reporter
from .snapshot import BadSnapshot, Node, lit_data, parse_children, parse_root


class Verifier:
    """Verifies one snapshot; every damaged or unreadable object is a problem on the reporter.

    ``sample`` is the percentage of files whose content is read back (all
    shares are verified whatever it is).  ``rng`` chooses the sample.
    """

    def __init__(self, gateway: Gateway, reporter: Reporter, sample: float = 100.0, jobs: int = 6,
                 rng: random.Random | None = None) -> None:
        self.gw = gateway
        self.rep = reporter
        self.sample = sample
        self._rng = rng or random.Random()
        self._slots = DeferredSemaphore(max(1, jobs) * 4)
        self._packs = PackReader(gateway, whole=sample >= 50)
        self.files_read = 0

    async def run(self, cap: str) -> None:
        try:
            await self._shares(cap)
            try:
                tree = parse_root(await self.gw.get_json(cap))
            except BadSnapshot as e:
                raise SnapshotError(what="(given)", problem=str(e))
            await self._dir(tree, "")
        finally:
            self._packs.close()

    async def _shares(self, cap: str) -> None:
        """Every share of every object, downloaded and checked by the storage servers' hashes."""
        def seen(v: Verdict) -> None:
            if v.corrupt_shares or not v.recoverable:
                self.rep.problem(v.path, f"{v.corrupt_shares} corrupt share(s), recoverable={v.recoverable}")

        parser = StreamParser(0, seen)
        await self.gw.stream_deep_check(cap, parser.feed, add_lease=False, verify=True)
        parser.close()
        if parser.error is not None:
            self.rep.problem("/", f"share verification stopped: {parser.error}")

    async def _dir(self, node: Node, path: str) -> None:
        try:
            children = parse_children(await self.gw.get_json(node.cap))
        except (GatewayError, BadSnapshot) as e:
            self.rep.problem(path or "/", f"directory unreadable: {getattr(e, 'reason', '') or e}")
            return
        waits: list[Deferred] = []
        for child in children:
            cpath = f"{path}/{child.name.decode('utf-8', 'backslashreplace')}"
            if child.kind == KIND_DIR:
                waits.append(Deferred.fromCoroutine(self._dir(child, cpath)))
            elif child.kind == KIND_FILE and self._rng.random() * 100 < self.sample:
                await self._slots.acquire()
                waits.append(Deferred.fromCoroutine(self._file(child, cpath)))
        if waits:
            await gatherResults(waits, consumeErrors=True)

    async def _file(self, node: Node, path: str) -> None:
        try:
            want = node.metadata.get("sha256")
            h = hashlib.sha256()
            size = 0
            packed = node.pack
            source = node.object or node.cap
            if packed is not None:
                data = Decoder(node.enc).feed(await self._packs.read(PackRef(*packed)))
                h.update(data)
                size = len(data)
            elif (lit := lit_data(source)) is not None:
                data = Decoder(node.enc).feed(lit)
                h.update(data)
                size = len(data)
            else:
                state: dict[str, Any] = {}

                def restart() -> None:
                    state["h"], state["n"], state["d"] = hashlib.sha256(), 0, Decoder(node.enc)

                def sink(chunk: bytes) -> None:
                    plain = state["d"].feed(chunk)
                    state["h"].update(plain)
                    state["n"] += len(plain)

                restart()
                await self.gw.download(source, sink, restart)
                h, size = state["h"], state["n"]
            self.files_read += 1
            self.rep.stats.bytes_read += size
            if isinstance(want, str) and want != h.hexdigest():
                self.rep.problem(path, "content does not match its recorded SHA-256")
            elif not isinstance(want, str):
                self.rep.note(path, "no SHA-256 recorded; read back but not compared")
        except (GatewayError, OSError, ValueError, RuntimeError) as e:
            self.rep.problem(path, f"unreadable: {getattr(e, 'reason', '') or e}")
        finally:
            self._slots.release()
