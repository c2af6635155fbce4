"""Verify: check every share of a snapshot and read file contents back against their recorded SHA-256."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from ..derive.recipe import KEY as DERIVED
from ..errors import GatewayError, SnapshotError
from ..grid.health import StreamParser, Verdict
from ..protocols import GatewayLike
from ..report import Reporter
from ..slots import Slots
from ..store.entry import KIND_DIR, KIND_FILE
from ..store.snapshot import Node, is_dir_id, names_of
from .reader import Reader
from .remake import Lookup, recipe_problem


class Verifier:
    """Verifies one snapshot; every damaged or unreadable object is a problem on the reporter.

    ``gateway`` verifies the shares (a deep-check with ``verify=true``); the
    ``reader`` reads contents back.  ``sample`` is the percentage of files
    whose content is read back (all shares are verified whatever it is).
    ``rng`` chooses the sample.  The walk reads the grid's own directories;
    ``index``, a reader of the snapshot's index, is checked against them:
    every directory must be in the index exactly as on the grid (a snapshot whose directories live
    in its index alone has nothing to check it against: ``index`` goes unused).  ``clock``
    (None: the reader's) is the reactor a freed read slot wakes the next on.

    A derived file (stored as its recipe) is checked without running anything: its recipe must
    parse, and its inputs be in the snapshot (``lookup`` finds them) with the hashes it recorded.
    With ``remake``, one in the sample is also made again by the reader's remaker and compared.
    """

    def __init__(self, gateway: GatewayLike, reader: Reader, reporter: Reporter, sample: float = 100.0, jobs: int = 6,
                 rng: random.Random | None = None, index: Reader | None = None,
                 clock: IReactorTime | None = None, lookup: Lookup | None = None, remake: bool = False) -> None:
        self.gw = gateway
        self.reader = reader
        self.index = index
        self.rep = reporter
        self.sample = sample
        self._rng = rng or random.Random()
        self._slots = Slots(max(1, jobs) * 4, clock if clock is not None else reader.clock)
        self._lookup = lookup
        self._remake = remake
        self.files_read = 0
        #: Derived files whose recipes were checked, and those made again.
        self.derived_checked = 0
        self.derived_remade = 0

    async def run(self, cap: str) -> None:
        await self._shares(cap)
        tree, _ = await self.reader.root(cap)
        if is_dir_id(tree.cap):
            # Its directories live in its index alone: the walk reads them from there, proving each
            # record by its name, and there is nothing else to check the index against.
            self.index = None
        if self.index is not None:
            await self.index.root(cap)
            if not self.index.has_index:
                self.index = None  # a snapshot without one: nothing to compare
        await self._dir(tree, "")

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
            children = await self.reader.children(node)
        except (GatewayError, SnapshotError) as e:
            self.rep.problem(path or "/", f"directory unreadable: {getattr(e, 'reason', '') or e}")
            return
        if self.index is not None:
            recorded = self.index.indexed_children(node)
            if recorded is None:
                self.rep.problem(path or "/", "the snapshot's index lacks this directory")
            elif [_comparable(n) for n in recorded] != [_comparable(n) for n in children] or (
                    self.index.indexed_names(node.cap) not in (None, names_of((n.name, n.kind, n.cap)
                                                                              for n in children))):
                self.rep.problem(path or "/", "the snapshot's index disagrees with this directory (restore, "
                                              "ls and diff read the index)")
        waits: list[Deferred] = []
        for child in children:
            cpath = f"{path}/{child.name.decode('utf-8', 'backslashreplace')}"
            if child.kind == KIND_DIR:
                waits.append(Deferred.fromCoroutine(self._dir(child, cpath)))
            elif child.kind == KIND_FILE:
                sampled = self._rng.random() * 100 < self.sample
                if DERIVED in child.metadata:
                    await self._slots.acquire()
                    waits.append(Deferred.fromCoroutine(self._derived(child, cpath, sampled)))
                elif sampled:
                    await self._slots.acquire()
                    waits.append(Deferred.fromCoroutine(self._file(child, cpath)))
        if waits:
            await gatherResults(waits, consumeErrors=True)

    async def _derived(self, node: Node, path: str, sampled: bool) -> None:
        try:
            why = await recipe_problem(node, self._lookup) if self._lookup is not None else None
            if why is not None:
                self.rep.problem(path, why)
                return
            self.derived_checked += 1
            if self._remake and sampled:
                if await self._read(node, path):
                    self.derived_remade += 1
        except (GatewayError, SnapshotError) as e:
            self.rep.problem(path, f"its recipe's inputs cannot be looked up: {getattr(e, 'reason', '') or e}")
        finally:
            self._slots.release()

    async def _file(self, node: Node, path: str) -> None:
        try:
            await self._read(node, path)
        finally:
            self._slots.release()

    async def _read(self, node: Node, path: str) -> bool:
        """Read ``node`` back and compare it with its record; False: a problem was said."""
        try:
            got = await self.reader.content(node, lambda chunk: None)
            self.files_read += 1
            self.rep.stats.bytes_read += got.size
            if got.matches is False:
                self.rep.problem(path, got.mismatch)
                return False
            elif got.recorded_sha256 is None:
                self.rep.note(path, "no SHA-256 recorded; read back but not compared")
        except (GatewayError, OSError, ValueError, RuntimeError) as e:
            self.rep.problem(path, f"unreadable: {getattr(e, 'reason', '') or e}")
            return False
        return True


def _comparable(n: Node) -> tuple[Any, ...]:
    meta = {k: v for k, v in n.metadata.items() if k not in ("tahoe", "salt")}
    return n.name, n.kind, n.cap, sorted(meta.items(), key=lambda kv: kv[0])
