"""Joining a grid as a storage client, with Tahoe's own classes: an introducer client or a fixed list of
announced servers, a ``StorageFarmBroker``, and Foolscap connections to every storage server."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from allmydata import __full_version__ as tahoe_version
from allmydata import client as tahoe_client
from allmydata.interfaces import IServer
from allmydata.introducer.client import IntroducerClient
from allmydata.node import config_from_string, create_tub
from allmydata.storage_client import StorageClientConfig, StorageFarmBroker
from allmydata.util import yamlutil
from foolscap.connections.tcp import default as tcp_handler
from twisted.application import service
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath

from ..errors import GridError

log = logging.getLogger(__name__)

#: Foolscap options of every Tub, as a Tahoe node sets them (``node.create_tub_options``), except that
#: failures are not logged: a remote failure's text carries the server's fURL, a bearer secret.
TUB_OPTIONS = {"logLocalFailures": False, "logRemoteFailures": False,
               "expose-remote-exception-types": False, "accept-gifts": False}
#: The introducer's announcement cache, in the state directory: the servers are found again after a
#: restart when the introducer is down.
ANNOUNCEMENTS = "announcements.yaml"


def announcements_from_cache(path: str) -> dict[str, dict[str, Any]]:
    """The storage announcements a Tahoe node's introducer cache (``private/introducer_default_cache.yaml``,
    or this module's own) holds: server id (``v0-...``) -> announcement.  The file holds the servers'
    fURLs, which are secrets: it is read, never shown."""
    with open(path) as f:
        entries = yamlutil.safe_load(f) or []
    return {e["key_s"]: e["ann"] for e in entries
            if isinstance(e, dict) and isinstance(e.get("ann"), dict) and e["ann"].get("service-name") == "storage"}


class GridClient:
    """A storage client of one grid, connected over Foolscap to every storage server it learns of.

    ``introducer`` is the grid's introducer fURL; ``servers`` (server id -> announcement, as
    :func:`announcements_from_cache` reads them) adds servers known without it.  ``state_dir`` (made
    0700) keeps the announcement cache.  Tahoe's own ``StorageFarmBroker`` and ``NativeStorageServer``
    do the connecting and reconnecting; they use Twisted's global reactor, which is the running one in
    the project's process, while ``reactor`` times this class's waits.

    Foolscap only: the HTTPS storage protocol's client classes differ in what a renewal answers (see
    docs/custodian.md), and the embedded grid's servers speak Foolscap alone.
    """

    def __init__(self, reactor: IReactorTime, state_dir: str, introducer: str | None = None,
                 servers: Mapping[str, Mapping[str, Any]] | None = None, nickname: str = "custodian") -> None:
        if not introducer and not servers:
            raise GridError(problem="the custodian needs the grid's introducer fURL or its storage servers")
        self._reactor = reactor
        self._top = service.MultiService()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)  # the announcement cache in it holds the servers' fURLs
        config = config_from_string(state_dir, "", "[client]\nforce_foolscap = true\n",
                                    tahoe_client._valid_config())
        handlers = {"tcp": tcp_handler()}

        def tub_maker(handler_overrides: dict[str, str] | None = None) -> Any:
            return create_tub(TUB_OPTIONS, {"tcp": "tcp"}, handlers, handler_overrides=handler_overrides or {},
                              force_foolscap=True)

        self.broker = StorageFarmBroker(permute_peers=True, tub_maker=tub_maker, node_config=config,
                                        storage_client_config=StorageClientConfig())
        self.broker.setServiceParent(self._top)
        if introducer:
            # The introducer client's own Tub: it subscribes, and never publishes.
            tub = tub_maker()
            tub.setServiceParent(self._top)
            cache = os.path.join(state_dir, ANNOUNCEMENTS)
            ic = IntroducerClient(tub, introducer.encode("ascii"), nickname, str(tahoe_version), "1.0.0",
                                  _no_sequence, FilePath(cache))
            self.broker.use_introducer(ic)
            ic.setServiceParent(self._top)
        if servers:
            self.broker.set_static_servers({k: {"ann": dict(v)} for k, v in servers.items()})
        self._started = False

    def start(self) -> None:
        """Begin connecting (and keep reconnecting until :meth:`stop`)."""
        if not self._started:
            self._started = True
            self._top.startService()

    async def connected(self, want: int, timeout: float) -> list[IServer]:
        """The connected servers, once at least ``want`` are; raises :class:`GridError` after ``timeout``
        seconds with fewer."""
        self.start()
        d = self.broker.when_connected_enough(want)
        d.addTimeout(timeout, self._reactor)
        try:
            await d
        except DeferredTimeout:
            raise GridError(problem=(f"only {len(self.broker.get_connected_servers())} of {want} storage servers "
                                     f"connected after {timeout:.0f}s")) from None
        return self.servers()

    def servers(self) -> list[IServer]:
        """Every storage server known (connected or not), in a stable order."""
        return sorted(self.broker.get_known_servers(), key=lambda s: s.get_serverid())

    async def stop(self) -> None:
        """Close every connection; the client cannot be started again."""
        if self._started:
            self._started = False
            await self._top.stopService()


def _no_sequence() -> tuple[int, str]:
    # Only a publishing client numbers its announcements; the custodian announces nothing.
    raise AssertionError("the custodian announces nothing")
