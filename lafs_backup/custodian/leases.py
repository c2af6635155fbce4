"""Lease renewal by storage index alone: every storage server is asked, over Foolscap, to add or renew the
custodian's lease on whatever shares of an object it holds, and, with a census, to say which shares
those are."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from allmydata.interfaces import IServer
from foolscap.api import DeadReferenceError, Referenceable, RemoteException
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime

from ..grid.ratelimit import TokenBucket
from ..slots import Slots
from .secrets import BucketSecrets, LeaseSecret
from .targets import Kind, Target

log = logging.getLogger(__name__)

#: The remote failures by which a server says the shares it holds under a storage index are of the other
#: kind: the immutable calls meet a mutable container, or the mutable ones an immutable share.
_MUTABLE_THERE = "allmydata.storage.common.UnknownImmutableContainerVersionError"
_IMMUTABLE_THERE = "allmydata.storage.common.UnknownMutableContainerVersionError"


class _OtherKind(Exception):
    """The server holds shares of the other kind under this storage index."""


@dataclass(frozen=True)
class ServerAnswer:
    """What one server answered about one object: the share numbers it holds, on each of which the
    custodian's lease is now added or renewed (empty: it holds none; None: not asked, a renewal without
    a census), or why it did not answer."""

    server: str
    shares: frozenset[int] | None = frozenset()
    #: None when the server answered; else a short reason ("not connected", a remote error's type name).
    problem: str | None = None

    @property
    def renewed(self) -> bool:
        """It answered, and did not say it holds no share (without a census it renewed whatever it holds)."""
        return self.problem is None and self.shares != frozenset()


@dataclass(frozen=True)
class Renewal:
    """One object's renewal: every server's answer; ``census``: the servers were asked which shares they
    hold."""

    target: Target
    answers: tuple[ServerAnswer, ...]
    census: bool = True

    @property
    def holding(self) -> int:
        """Servers that hold shares of it and renewed the custodian's lease on them."""
        return sum(1 for a in self.answers if a.renewed)

    @property
    def shares(self) -> frozenset[int]:
        """The distinct share numbers under a renewed lease (k of them rebuild the object; empty without a
        census)."""
        return frozenset().union(*(a.shares for a in self.answers if a.renewed and a.shares is not None))

    @property
    def unanswered(self) -> int:
        """Servers that gave no answer (down, timed out, failed): what they hold is unknown."""
        return sum(1 for a in self.answers if a.problem is not None)

    def short(self, want: int | None = None) -> bool:
        """Are fewer than ``want`` distinct shares kept (default: as many as the object was encoded into,
        when its verify cap tells; else: none at all)?  The custodian cannot repair; the owner does.
        Without a census nothing is known: False."""
        if not self.census:
            return False
        want = want if want is not None else (self.target.total or 1)
        return len(self.shares) < want


class Renewer:
    """Renews the custodian's leases, object by object, on every server ``servers()`` names when a pass
    starts.

    Without a census, each server is asked ``add_lease`` once per object, whatever its kind: one request,
    the cheapest the protocol has, which renews the lease on every share the server holds of that storage
    index and answers None whether it holds any or not.  With a census, each is asked once per object,
    in one round trip, in a way that also says which shares it holds:

    - an immutable object: ``allocate_buckets`` for no new share.  The server adds or renews the lease on
      every share it holds of that storage index and answers with their numbers (Tahoe's uploader relies
      on both).  ``add_lease`` would renew as well, but answers None whether or not the server holds a
      share, and Tahoe 1.20's Foolscap server no longer offers ``renew_lease``.
    - a mutable one: ``add_lease`` and ``slot_readv`` of nothing, sent together (two requests, one round
      trip); the second answers with the share numbers.
    - a bare storage index: as an immutable; a server whose shares prove mutable is asked again as for a
      mutable (and the other way round).

    At most ``limit`` objects-at-a-server are in flight (:class:`~lafs_backup.slots.Slots`); ``rate``
    paces the requests; each waits at most ``timeout`` seconds.  ``requests`` counts the requests sent,
    ``calls`` them by method.
    """

    def __init__(self, reactor: IReactorTime, servers: Callable[[], Iterable[IServer]], secret: LeaseSecret,
                 limit: int = 32, rate: TokenBucket | None = None, timeout: float = 120.0) -> None:
        self._reactor = reactor
        self._servers = servers
        self._secret = secret
        self._slots = Slots(limit, reactor)
        self._rate = rate
        self._timeout = timeout
        #: The canary an uploader hands ``allocate_buckets``: the server watches it only for the buckets it
        #: opens, and it opens none here.
        self._canary = Referenceable()
        self.requests = 0
        self.calls: collections.Counter[str] = collections.Counter()

    async def renew(self, targets: Iterable[Target], on_renewal: Callable[[Renewal], None] | None = None,
                    census: bool = True) -> list[Renewal]:
        """Renew the lease of each distinct storage index among ``targets`` (read lazily, as the slots
        free up) on every server, with a census of the shares each holds or without (``census``); return
        the renewals, in the order they finished, each also handed to ``on_renewal`` as it finishes.  A
        server that fails or does not answer is an answer with a problem, never an exception."""
        servers = list(self._servers())
        seen: set[bytes] = set()
        done: list[Renewal] = []
        running: set[Deferred[None]] = set()

        def finished(answers: list[ServerAnswer], target: Target) -> None:
            r = Renewal(target, tuple(answers), census)
            log.debug("renewed %s: %d servers hold shares %s; %d did not answer", target.name, r.holding,
                      sorted(r.shares), r.unanswered)
            done.append(r)
            if on_renewal is not None:
                on_renewal(r)

        for target in targets:
            if target.storage_index in seen:
                continue
            seen.add(target.storage_index)
            asks = []
            for server in servers:
                await self._slots.acquire()
                asks.append(Deferred.fromCoroutine(self._ask_holding_slot(target, server, census)))
            whole: Deferred[Any] = gatherResults(asks, consumeErrors=True)
            whole.addCallback(finished, target)
            running.add(whole)
            whole.addBoth(_forget, running, whole)
        if running:
            await gatherResults(list(running), consumeErrors=True)
        return done

    async def _ask_holding_slot(self, target: Target, server: IServer, census: bool) -> ServerAnswer:
        try:
            return await self._ask(target, server, census)
        finally:
            self._slots.release()

    async def _ask(self, target: Target, server: IServer, census: bool) -> ServerAnswer:
        name = str(server.get_serverid(), "ascii")
        ss = server.get_storage_server()
        if ss is None or not server.is_connected():
            return ServerAnswer(name, problem="not connected")
        secrets = self._secret.for_server(target.storage_index, server.get_lease_seed())
        first, second = ((self._mutable, self._immutable) if target.kind is Kind.MUTABLE
                         else (self._immutable, self._mutable))
        try:
            if not census:
                await self._lease(ss, target.storage_index, secrets)
                return ServerAnswer(name, None)
            try:
                shares = await first(ss, target.storage_index, secrets)
            except _OtherKind:
                shares = await second(ss, target.storage_index, secrets)
        except _OtherKind:
            return ServerAnswer(name, problem="holds shares of both kinds")
        except CancelledError:
            raise
        except DeferredTimeout:
            return ServerAnswer(name, problem=f"no answer within {self._timeout:.0f}s")
        except DeadReferenceError:
            return ServerAnswer(name, problem="connection lost")
        except RemoteException as e:
            # Only the type: a remote failure's text carries paths and the server's fURL.
            return ServerAnswer(name, problem=f"refused: {_remote_type(e)}")
        return ServerAnswer(name, frozenset(shares))

    async def _lease(self, ss: Any, si: bytes, secrets: BucketSecrets) -> None:
        await self._pace(1)
        await self._send(ss, "add_lease", si, secrets.renew, secrets.cancel)

    async def _immutable(self, ss: Any, si: bytes, secrets: BucketSecrets) -> set[int]:
        await self._pace(1)
        try:
            have, writers = await self._send(ss, "allocate_buckets", si, secrets.renew, secrets.cancel, set(), 0,
                                             self._canary)
        except RemoteException as e:
            if e.failure.check(_MUTABLE_THERE):
                raise _OtherKind() from None
            raise
        assert not writers, "a server opened a bucket that was not asked for"
        return set(have)

    async def _mutable(self, ss: Any, si: bytes, secrets: BucketSecrets) -> set[int]:
        await self._pace(2)
        lease = self._send(ss, "add_lease", si, secrets.renew, secrets.cancel)
        read = self._send(ss, "slot_readv", si, [], [])
        try:
            shares = await read
        except RemoteException as e:
            lease.addErrback(_ignored)  # the read's failure is the answer
            if e.failure.check(_IMMUTABLE_THERE):
                raise _OtherKind() from None
            raise
        except BaseException:
            lease.addErrback(_ignored)
            raise
        await lease
        return set(shares)

    async def _pace(self, n: int) -> None:
        if self._rate is not None:
            await self._rate.take(n)

    def _send(self, ss: Any, method: str, *args: Any) -> Deferred[Any]:
        self.requests += 1
        self.calls[method] += 1
        d: Deferred[Any] = getattr(ss, method)(*args)
        return d.addTimeout(self._timeout, self._reactor)


def _forget(result: object, running: set[Deferred[None]], d: Deferred[None]) -> object:
    running.discard(d)
    return result


def _ignored(_failure: object) -> None:
    return None


def _remote_type(e: RemoteException) -> str:
    """The remote exception's class name (a copied failure names its classes, most derived first)."""
    parents = getattr(e.failure, "parents", None) or ["error"]
    return str(parents[0]).rsplit(".", 1)[-1]
