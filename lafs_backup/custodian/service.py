"""The custodian at work: it reads the inbox (a read cap), copies each new manifest into its own directory
with the time it first saw it, records forget requests and honours them after the grace period, renews
the leases of every object of every backup it keeps (a slice at a time, or all at once), and says how
things stand.

Each step is a method of :class:`Custodian`, called by ``lafs-backup custodian`` (``run`` loops over
them; ``pass`` and ``check`` call them once).  The gateway, the clock and the renewal are handed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import GridError, LafsBackupError
from ..protocols import JSON, GatewayLike
from .keeping import Keeper, RenewFn, Resolved, resolve_kept
from .keyfile import CustodianKey
from .manifest import (FORGET, MAX_SIZE, Manifest, ManifestError, is_folder, is_record, read_box, read_cancel,
                       read_envelope, read_forget, resolve)
from .policy import Report, Rules, due, report
from .state import Forget, Pass, Seen, State, StateDir, Tick
from .targets import verify_cap_of

log = logging.getLogger(__name__)

__all__ = ["Custodian", "Observed", "RenewFn", "Resolved"]


@dataclass
class Observed:
    """What one reading of the inbox found: new manifests, refused ones, those that could not be read now
    (tried again at the next reading), vanished ones, new forget requests, the forget requests that took
    effect, and the backups whose link in the custodian's own directory could not be made or removed now
    (tried again at the next reading)."""

    new: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    forgets: list[str] = field(default_factory=list)
    honoured: list[str] = field(default_factory=list)
    uncopied: list[str] = field(default_factory=list)
    #: Forget requests the owner cancelled (with the recovery key), seen in this reading.
    cancelled: list[str] = field(default_factory=list)


def _children(listing: JSON) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (type, info) of a directory listing."""
    return {name: (ntype, info) for name, (ntype, info) in listing[1]["children"].items()}


def _immutable_file(cap: object) -> bool:
    """Is ``cap`` the read cap of an immutable file (what a manifest is), by its form alone?"""
    if not isinstance(cap, str) or not cap.startswith("URI:CHK:"):
        return False
    try:
        return verify_cap_of(cap) is not None
    except LafsBackupError:
        return False


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
        self._keeper = Keeper(state, rules, now)
        #: The verify caps of the custodian's directories as last listed (None: not yet).
        self._dirs: frozenset[str] | None = None

    # -- reading the inbox -------------------------------------------------------------------------
    async def observe(self) -> Observed:
        """Read the inbox once: copy every new manifest (the whole chain it needs, checked), note the
        ones gone from it and the new forget requests, honour the forget requests whose grace period
        has passed, and bring the custodian's own directory in line.  The state is saved before it
        returns.  Raises :class:`GridError` only when the inbox or one of its folders cannot be listed
        (what it saw before that is saved too)."""
        now = self.now()
        st = self.state
        if st.started is None:
            st.started = now
        out = Observed()
        inbox = _children(await self.gw.get_json(self.key.inbox))
        present: set[str] = set()
        try:
            for folder, (ntype, info) in sorted(inbox.items()):
                # (named before listed: whatever else the host links into the inbox is not even read)
                if ntype != "dirnode" or not info.get("ro_uri") or not (folder == FORGET or is_folder(folder)):
                    continue
                listing = _children(await self.gw.get_json(info["ro_uri"]))
                if folder == FORGET:
                    self._forgets(listing, now, out)
                else:
                    present |= {f"{folder}/{name}" for name in listing}
                    await self._manifests(folder, listing, now, out)
        except GridError:
            self.dir.save(st)  # (what was seen before a folder failed to list keeps its first-seen time)
            raise
        if self.key.owner:
            await self._cancels(now, out)
        for key in [k for k in st.unreadable if k not in present]:
            del st.unreadable[key]  # (gone from the inbox: nothing left to read)
        for b in st.backups.values():
            if b.key not in present and b.vanished is None and b.forgotten is None and b.refused is None:
                b.vanished = now
                out.vanished.append(b.key)
        for f in due(st, now, self.rules):
            self._honour(f, now)
            out.honoured.append(f.key)
        await self._own_copies(out)
        self.dir.save(st)
        return out

    async def _cancels(self, now: float, out: Observed) -> None:
        """The owner's cancels (a sealed repository's owner's directory, which only the recovery key
        writes): each pending forget request one names never takes effect.  A directory that cannot be
        read now is read again at the next reading of the inbox; a forget request's grace period is long."""
        assert self.key.owner is not None
        try:
            listing = _children(await self.gw.get_json(self.key.owner))
        except GridError as e:
            log.info("the owner's directory cannot be read now (%s): read again next time", e.message)
            return
        for _, info in listing.values():
            named = read_cancel(info.get("metadata"))
            f = self.state.forgets.get(f"{named[0]}/{named[1]}") if named else None
            if f is not None and f.pending:
                f.cancelled = now
                out.cancelled.append(f.key)
                log.info("forget request for %s cancelled by the owner", f.key)

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
        memo: dict[str, frozenset[str]] = {}
        for record, (ntype, info) in sorted(listing.items()):
            key = f"{folder}/{record}"
            if key in self.state.backups:
                continue
            cap, size = info.get("ro_uri"), read_envelope(info.get("metadata"), record)
            problem = None
            if not is_record(record) or ntype != "filenode" or size is None or not isinstance(cap, str) \
                    or not _immutable_file(cap):
                problem = "its inbox entry is not a manifest's"
            else:
                try:
                    await self._chain(cap, size, memo)
                except ManifestError as e:
                    problem = e.message
                except GridError as e:
                    # A fault of the gateway or the grid says nothing of the manifest: nothing is recorded
                    # but when it first happened, and it is read again at the next reading of the inbox.
                    self.state.unreadable.setdefault(key, now)
                    out.unreadable.append(key)
                    log.info("manifest %s cannot be read now (%s): it is read again next time", key, e.message)
                    continue
            self.state.unreadable.pop(key, None)
            if problem is not None:
                # (its cap is not kept: whatever the host linked there, the custodian holds manifests only)
                self.state.backups[key] = Seen(folder, record, "", size or 0, now, refused=problem)
                out.refused.append(key)
                continue
            assert isinstance(cap, str) and size is not None
            self.state.backups[key] = Seen(folder, record, cap, size, now, box=read_box(info.get("metadata")))
            self.state.last_new = now
            out.new.append(key)

    async def _chain(self, cap: str, size: int | None = None, memo: dict[str, frozenset[str]] | None = None) -> None:
        """Make sure the manifest ``cap`` and every one before it in its chain are copied locally: each
        read and checked (verify caps only), and the chain resolved to the count of objects each manifest
        states, before any is kept (``memo``: chains resolved before, see :func:`resolve`).  Raises
        :class:`ManifestError` for a manifest to refuse, :class:`GridError` when one cannot be read now."""
        fetched: dict[str, Manifest] = {}
        at: str | None = cap
        while at is not None and at not in fetched and self.dir.manifest(at) is None:
            if len(fetched) > 64:
                raise ManifestError(what="chain", problem="it is longer than 64 manifests")
            if not _immutable_file(at):
                raise ManifestError(what="chain", problem="a manifest it names is not an immutable file")
            m = Manifest.decode(await self._download(at, size if at == cap else None), "in the inbox")
            fetched[at] = m
            at = m.previous

        def read(c: str) -> Manifest:
            m = fetched.get(c) or self.dir.manifest(c)
            if m is None:
                raise ManifestError(what="chain", problem="a manifest of it was not copied")
            return m
        memo = {} if memo is None else memo
        whole = resolve(cap, read, memo)  # (a chain that does not add up is refused whole, before any is kept)
        memo.clear()  # (the next manifest of the writer is most likely a delta on this one: only it is kept)
        memo[cap] = whole
        for at, m in reversed(list(fetched.items())):
            self.dir.keep_manifest(at, m)

    async def _download(self, cap: str, size: int | None) -> bytes:
        """The bytes of the manifest ``cap``.  Raises :class:`ManifestError` when they are too many or not
        as many as its envelope says, :class:`GridError` (as the gateway does) when it cannot be read now."""
        parts: list[bytes] = []
        total = [0]

        def sink(chunk: bytes) -> None:
            total[0] += len(chunk)
            if total[0] > MAX_SIZE:
                raise ManifestError(what="in the inbox", problem=f"it is larger than {MAX_SIZE} bytes")
            parts.append(chunk)
        await self.gw.download(cap, sink, parts.clear)
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

    async def _own_copies(self, out: Observed) -> None:
        """Bring the custodian's own directory in line with its state: link every accepted backup not yet
        linked there (with the time it was first seen), unlink every forgotten one still there.  A gateway
        or grid error leaves that writer's folder for the next reading of the inbox (``out.uncopied``)."""
        todo: dict[str, list[Seen]] = {}
        for b in self.state.backups.values():
            if b.refused is None and b.copied == (b.forgotten is not None):
                todo.setdefault(b.folder, []).append(b)
        for folder, backups in sorted(todo.items()):
            link = [b for b in backups if b.forgotten is None]
            try:
                own = await self._own_folder(folder)
                if link:
                    await self.gw.set_children(own, {b.record: (b.manifest, {
                        "lafs_backup_manifest": 1, "record": b.record, "size": b.size, "seen": b.seen,
                        **({"record_box": b.box} if b.box else {})}) for b in link})
                    for b in link:
                        b.copied = True
                for b in backups:
                    if b.forgotten is not None:
                        await self.gw.unlink(own, b.record)
                        b.copied = False
            except GridError as e:
                out.uncopied.extend(b.key for b in backups if b.copied == (b.forgotten is not None))
                log.info("the custodian's own directory cannot be changed now (%s): tried again next time", e.message)

    def _honour(self, f: Forget, now: float) -> None:
        """A forget request whose grace period passed: its backup is no longer kept (its copy leaves the
        custodian's own directory in :meth:`_own_copies`)."""
        f.honoured = now
        b = self.state.backups.get(f.key)
        if b is None or b.forgotten is not None:
            return
        b.forgotten = now
        log.info("forgot %s: its forget request arrived %gs ago", f.key, now - f.seen)

    # -- renewing ----------------------------------------------------------------------------------
    def objects(self, backups: Iterable[Seen]) -> Resolved:
        """What ``backups`` reference, their manifests resolved from the local copies.  A backup whose
        chain does not resolve is left out and named (``unresolved``): the others are renewed."""
        return resolve_kept(backups, self.dir.manifest)

    async def directories(self) -> set[str]:
        """The verify caps of the inbox, the custodian's own directory, and their folders."""
        out = {self.key.inbox, self.key.own}
        for top in (self.key.inbox, self.key.own):
            for ntype, info in _children(await self.gw.get_json(top)).values():
                cap = info.get("rw_uri") or info.get("ro_uri")
                if ntype == "dirnode" and isinstance(cap, str):
                    out.add(cap)
        return {v for v in (verify_cap_of(c) for c in out) if v is not None}

    async def _directories(self) -> frozenset[str]:
        """:meth:`directories`, or the ones listed last time when the gateway cannot list them now (a
        renewal needs the grid, not the gateway).  Raises :class:`GridError` when they were never listed."""
        try:
            self._dirs = frozenset(await self.directories())
        except GridError as e:
            if self._dirs is None:
                raise
            log.info("the custodian's directories cannot be listed now (%s): renewing those listed before",
                     e.message)
        assert self._dirs is not None
        return self._dirs

    async def renew(self, renew: RenewFn, census: bool = False) -> Pass:
        """One full pass: renew the custodian's lease on every object of every backup it keeps, their
        manifests, and its directories, each distinct object once; with a census of the shares each
        server holds (``census``), or with the one cheapest request per object and server.  Recorded and
        saved; it starts the slow rotation when none stands."""
        return await self._keeper.full(self.state, await self._directories(), renew, census)

    async def tick(self, renew: RenewFn) -> Tick:
        """One turn of the slow rotation (``custodian run``, at each reading of the inbox): the objects of
        backups that joined since the last turn and the slice due now, with a census; the first turn is
        a full pass.  Recorded and saved."""
        return await self._keeper.turn(self.state, await self._directories(), renew)

    def failed(self, why: str) -> None:
        """A pass could not be made (``why``: the grid could not be joined, the gateway failed...):
        remembered, with when the first of a run of failures happened by the custodian's clock, for the
        alerts."""
        if self.state.failing_since is None:
            self.state.failing_since = self.now()
        self.state.failure = why
        self.dir.save(self.state)

    # -- standing ----------------------------------------------------------------------------------
    def report(self) -> Report:
        """How things stand now (also written to the status file)."""
        r = report(self.state, self.now(), self.rules)
        self.dir.write_status(r.json())
        return r

