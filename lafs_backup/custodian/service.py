"""The custodian at work: it reads the inbox (a read cap), copies each new manifest into its own directory
with the time it first saw it, records forget requests and honours them after the grace period, renews
the leases of every object of every backup it keeps, and says how things stand.

Each step is a method of :class:`Custodian`, called by ``lafs-backup custodian`` (``run`` loops over
them; ``pass`` and ``check`` call them once).  The gateway, the clock and the renewal are handed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from ..errors import GatewayError
from ..protocols import JSON, GatewayLike
from .keyfile import CustodianKey
from .leases import Renewal
from .manifest import (FORGET, MAX_SIZE, Manifest, ManifestError, is_folder, is_record, read_envelope,
                       read_forget, resolve)
from .policy import Report, Rules, due, kept, report
from .state import Forget, Pass, Seen, State, StateDir
from .targets import Target, target_of, verify_cap_of

log = logging.getLogger(__name__)

#: Renews the leases of the targets handed to it: the renewals (``Renewer.renew``, on a joined grid).
RenewFn = Callable[[list[Target]], Awaitable[list[Renewal]]]


@dataclass
class Observed:
    """What one reading of the inbox found: new manifests, vanished ones, new forget requests, and the
    forget requests that took effect."""

    new: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    forgets: list[str] = field(default_factory=list)
    honoured: list[str] = field(default_factory=list)


def _children(listing: JSON) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (type, info) of a directory listing."""
    return {name: (ntype, info) for name, (ntype, info) in listing[1]["children"].items()}


class Custodian:
    """One custodian: its key, its state directory, its rules, the gateway it reads and writes through,
    and ``now`` (its own clock: every time it records is by it, never the host's)."""

    def __init__(self, gw: GatewayLike, key: CustodianKey, state: StateDir, rules: Rules,
                 now: Callable[[], float]) -> None:
        self.gw = gw
        self.key = key
        self.dir = state
        self.rules = rules
        self.now = now
        self.state: State = state.load()

    # -- reading the inbox -------------------------------------------------------------------------
    async def observe(self) -> Observed:
        """Read the inbox once: copy every new manifest (the whole chain it needs, checked), note the
        ones gone from it and the new forget requests, and honour the forget requests whose grace period
        has passed.  The state is saved before it returns."""
        now = self.now()
        st = self.state
        if st.started is None:
            st.started = now
        out = Observed()
        inbox = _children(await self.gw.get_json(self.key.inbox))
        present: set[str] = set()
        for folder, (ntype, info) in sorted(inbox.items()):
            if ntype != "dirnode" or not info.get("ro_uri"):
                continue
            listing = _children(await self.gw.get_json(info["ro_uri"]))
            if folder == FORGET:
                self._forgets(listing, now, out)
            elif is_folder(folder):
                present |= {f"{folder}/{name}" for name in listing}
                await self._manifests(folder, listing, now, out)
        for b in st.backups.values():
            if b.key not in present and b.vanished is None and b.forgotten is None and b.refused is None:
                b.vanished = now
                out.vanished.append(b.key)
        for f in due(st, now, self.rules):
            await self._honour(f, now)
            out.honoured.append(f.key)
        self.dir.save(st)
        return out

    def _forgets(self, listing: dict[str, tuple[str, dict[str, Any]]], now: float, out: Observed) -> None:
        for _, info in listing.values():
            named = read_forget(info.get("metadata"))
            if named is None:
                continue
            f = Forget(named[0], named[1], now)
            if f.key not in self.state.forgets:
                self.state.forgets[f.key] = f
                out.forgets.append(f.key)
                log.info("forget request for %s: it takes effect after %gs", f.key, self.rules.grace)

    async def _manifests(self, folder: str, listing: dict[str, tuple[str, dict[str, Any]]], now: float,
                         out: Observed) -> None:
        copies: dict[str, tuple[str, JSON]] = {}
        for record, (ntype, info) in sorted(listing.items()):
            key = f"{folder}/{record}"
            if key in self.state.backups:
                continue
            cap, size = info.get("ro_uri"), read_envelope(info.get("metadata"), record)
            problem = None
            if not is_record(record) or ntype != "filenode" or size is None or not isinstance(cap, str) \
                    or not cap.startswith("URI:CHK:"):
                problem = "its inbox entry is not a manifest's"
            else:
                try:
                    await self._chain(cap, size)
                except ManifestError as e:
                    problem = e.message
            if problem is not None:
                # (its cap is not kept: whatever the host linked there, the custodian holds manifests only)
                self.state.backups[key] = Seen(folder, record, "", size or 0, now, refused=problem)
                out.refused.append(key)
                continue
            assert isinstance(cap, str) and size is not None
            self.state.backups[key] = Seen(folder, record, cap, size, now)
            self.state.last_new = now
            out.new.append(key)
            copies[record] = (cap, {"lafs_backup_manifest": 1, "record": record, "size": size, "seen": now})
        if copies:
            own = await self._own_folder(folder)
            await self.gw.set_children(own, copies)
            for record in copies:
                self.state.backups[f"{folder}/{record}"].copied = True

    async def _chain(self, cap: str, size: int | None = None) -> None:
        """Make sure the manifest ``cap`` and every one before it in its chain are copied locally, each
        checked (verify caps only) before any is kept.  Raises :class:`ManifestError`."""
        fetched: list[tuple[str, Manifest]] = []
        at: str | None = cap
        while at is not None and self.dir.manifest(at) is None:
            if len(fetched) > 64:
                raise ManifestError(what="chain", problem="it is longer than 64 manifests")
            m = Manifest.decode(await self._download(at, size if at == cap else None), "in the inbox")
            fetched.append((at, m))
            at = m.previous
        for at, m in reversed(fetched):
            self.dir.keep_manifest(at, m)

    async def _download(self, cap: str, size: int | None) -> bytes:
        parts: list[bytes] = []
        total = [0]

        def sink(chunk: bytes) -> None:
            total[0] += len(chunk)
            if total[0] > MAX_SIZE:
                raise ManifestError(what="in the inbox", problem=f"it is larger than {MAX_SIZE} bytes")
            parts.append(chunk)
        try:
            await self.gw.download(cap, sink, parts.clear)
        except GatewayError as e:
            raise ManifestError(what="in the inbox", problem=f"it cannot be read ({e.reason or e.status})") from None
        data = b"".join(parts)
        if size is not None and len(data) != size:
            raise ManifestError(what="in the inbox", problem=f"it holds {len(data)} bytes, its envelope says {size}")
        return data

    async def _own_folder(self, folder: str) -> str:
        """The write cap of a writer's folder in the custodian's own directory, made on first use."""
        there = _children(await self.gw.get_json(self.key.own)).get(folder)
        if there is not None and there[1].get("rw_uri"):
            return str(there[1]["rw_uri"])
        made = await self.gw.mkdir_mutable()
        await self.gw.set_children(self.key.own, {folder: (made, None)})
        return made

    async def _honour(self, f: Forget, now: float) -> None:
        """A forget request whose grace period passed: its backup is no longer kept, nor in the
        custodian's own directory."""
        f.honoured = now
        b = self.state.backups.get(f.key)
        if b is None or b.forgotten is not None:
            return
        b.forgotten = now
        if b.copied:
            await self.gw.unlink(await self._own_folder(b.folder), b.record)
        log.info("forgot %s: its forget request arrived %gs ago", f.key, now - f.seen)

    # -- renewing ----------------------------------------------------------------------------------
    def objects(self, backups: Iterable[Seen]) -> tuple[set[str], set[str]]:
        """The verify caps of every object of ``backups`` (their manifests resolved), and those of their
        manifests (each chain whole)."""
        memo: dict[str, frozenset[str]] = {}
        objects: set[str] = set()
        manifests: set[str] = set()

        def read(cap: str) -> Manifest:
            m = self.dir.manifest(cap)
            if m is None:
                raise ManifestError(what="chain", problem="a manifest of it was not copied")
            manifests.add(cap)
            return m
        for b in backups:
            objects |= resolve(b.manifest, read, memo)
            at: str | None = b.manifest
            while at is not None and at not in manifests:
                manifests.add(at)
                at = read(at).previous
        return objects, {v for v in (verify_cap_of(c) for c in manifests) if v is not None}

    async def directories(self) -> set[str]:
        """The verify caps of the inbox, the custodian's own directory, and their folders."""
        out = {self.key.inbox, self.key.own}
        for top in (self.key.inbox, self.key.own):
            for ntype, info in _children(await self.gw.get_json(top)).values():
                cap = info.get("rw_uri") or info.get("ro_uri")
                if ntype == "dirnode" and isinstance(cap, str):
                    out.add(cap)
        return {v for v in (verify_cap_of(c) for c in out) if v is not None}

    async def renew(self, renew: RenewFn) -> Pass:
        """One full pass: renew the custodian's lease on every object of every backup it keeps, their
        manifests, and its directories, each distinct object once.  Recorded and saved."""
        started = self.now()
        keep = kept(self.state, started, self.rules)
        objects, manifests = self.objects(keep)
        caps = objects | manifests | await self.directories()
        renewals = await renew([target_of(c) for c in sorted(caps)])
        short = sorted(r.target.name for r in renewals if r.short() and not _lost(r))
        lost = sorted(r.target.name for r in renewals if _lost(r))
        p = Pass(started, self.now(), len(keep), len(renewals), sum(1 for r in renewals if r.holding),
                 sum(len(r.answers) for r in renewals), short, lost, sum(r.unanswered for r in renewals))
        self.state.last_pass = p
        self.state.failing_since = None
        self.dir.save(self.state)
        log.info("renewal pass: %d backups, %d objects, %d short, %d lost", p.backups, p.objects, len(short),
                 len(lost))
        return p

    def failed(self) -> None:
        """A pass could not be made (the grid could not be joined): remembered for the alerts."""
        if self.state.failing_since is None:
            self.state.failing_since = self.now()
            self.dir.save(self.state)

    # -- standing ----------------------------------------------------------------------------------
    def report(self) -> Report:
        """How things stand now (also written to the status file)."""
        r = report(self.state, self.now(), self.rules)
        self.dir.write_status(r.json())
        return r


def _lost(r: Renewal) -> bool:
    """Fewer shares kept than rebuild the object (as its verify cap tells; else: none at all)."""
    return len(r.shares) < (r.target.needed or 1)
