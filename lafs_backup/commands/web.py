"""``web``: a local, read-only dashboard of the backups, in the foreground until a signal."""

from __future__ import annotations

import argparse
import os
import secrets

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort

from ..errors import ExitCode, UsageError
from ..history import Backup
from ..read import remake
from ..read.browse import Browser
from ..read.reader import Reader
from ..read.status import gather
from ..resources import Opener
from ..web.pages import Dashboard
from ..web.server import site

#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup web --port 8765'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``web``."""
    p.add_argument("--port", type=int, default=8765, help="the TCP port on 127.0.0.1 to listen on (0: any free "
                                                           "one; default 8765)")
    p.add_argument("--socket", metavar="PATH", help="listen on this Unix socket instead (mode 0600), e.g. "
                                                    "for a reverse proxy or 'ssh -L'")
    p.add_argument("--url-file", metavar="PATH", help="write the URL to open (it holds the token) to this "
                                                      "file, mode 0600, instead of printing it (its directory is "
                                                      "made, mode 0700, if missing)")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    rep = o.rt.reporter
    reactor = o.rt.reactor
    if not 0 <= ns.port <= 65535:
        raise UsageError(f"--port takes 0 to 65535, not {ns.port}")
    gw = await o.gateway()
    jobs = o.config.operation.jobs

    async def listing() -> list[Backup]:
        o.forget_backups()
        return await o.backups()

    await listing()  # (the repository can be read: said now, not on the first page)
    reader = Reader(gw, jobs=jobs)
    browser = Browser(reader, ahead=max(4, jobs), remember=256)
    dest = o.config.destination
    dashboard = Dashboard(reactor, listing, reader, browser, lambda: Reader(gw, jobs=jobs), dest.lease_days,
                          lambda: gather(o, reactor.seconds()),
                          remaker=remake.make(reader, o.config.derive, o.rt.in_thread))
    token = secrets.token_urlsafe(32)
    if ns.socket:
        path = os.path.abspath(ns.socket)
        if os.path.exists(path):
            raise UsageError(f"--socket {path} exists: remove it first (another dashboard may be using it)")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        port: IListeningPort = await UNIXServerEndpoint(reactor, path, mode=0o600).listen(site(dashboard, token))
        where, url = f"Unix socket {path}", f"http://localhost/?token={token}"
    else:
        try:
            port = await TCP4ServerEndpoint(reactor, ns.port, interface="127.0.0.1").listen(site(dashboard, token))
        except Exception as e:
            raise UsageError(f"cannot listen on 127.0.0.1:{ns.port}: {e}")
        number = getattr(port.getHost(), "port", ns.port)
        where, url = f"http://127.0.0.1:{number}/", f"http://127.0.0.1:{number}/?token={token}"
    if ns.url_file:
        os.makedirs(os.path.dirname(os.path.abspath(ns.url_file)), mode=0o700, exist_ok=True)
        fd = os.open(ns.url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(url + "\n")
        rep.say(f"lafs-backup: the URL to open (with its token) is in {ns.url_file}")
    elif rep.json_mode:
        rep.record({"type": "web", "url": url})
    else:
        rep.output(url)
    rep.say(f"lafs-backup: dashboard on {where} (read-only); Ctrl-C or SIGTERM stops it")
    try:
        await Deferred()
    except CancelledError:
        pass
    finally:
        await maybeDeferred(port.stopListening)
        reader.close()
        if ns.socket:
            try:
                os.unlink(os.path.abspath(ns.socket))
            except OSError:
                pass
    rep.say("lafs-backup: dashboard stopped")
    return ExitCode.OK

