"""The SSH manhole: a Python REPL inside a running command, for live debugging of a long run.

Off by default.  It listens on ``manhole.endpoint`` (a Twisted strports
string), on loopback only unless ``manhole.allow_remote`` says otherwise,
accepts public-key logins from ``manhole.authorized_keys`` and nothing else,
and presents a host key generated once per installation and kept mode 0600
in the state directory.  With ``manhole.on_signal`` each delivery of that
signal opens or closes the listener.  Every connection and login attempt is
logged with the peer address and the key's fingerprint.

The namespace persists across connections: ``config``, ``op`` (the running
operation), ``debug_frame`` (the reactor's main-loop frame),
``debug_timeouts`` (one callable per in-flight gateway attempt, making it
time out now so that it is retried), ``log`` and ``log_level()``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import error as conch_error
from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.ssh import keys, session, userauth
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, ITransport
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure
from zope.interface import implementer

from . import config as cfg
from .errors import ConfigError
from .log import level_number
from .protocols import AttemptLike, GatewayLike

if TYPE_CHECKING:
    from .protocols import Reactor

log = logging.getLogger(__name__)

HOST_KEY_NAME = "manhole_host_key"
#: Signals the manhole may not take: the reactor's own, and the ones no process can catch.
_RESERVED = {"SIGINT", "SIGTERM", "SIGKILL", "SIGSTOP", "SIGCHLD"}


# -- settings (pure) ---------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    endpoint: str
    keys: tuple[keys.Key, ...]
    signum: int | None


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a strports description into its type, positional and keyword arguments.

    ``\\`` escapes the next character, as in Twisted's own parser.
    """
    parts: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in description:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    kind, rest = parts[0], parts[1:]
    if kind.isdigit():  # the old "8022" form means tcp:8022
        kind, rest = "tcp", parts
    args = [p for p in rest if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in rest if "=" in p)
    return kind, args, kwargs


def is_loopback(description: str) -> bool:
    """Whether a server endpoint listens on this host only (loopback TCP or a UNIX socket)."""
    kind, args, kwargs = split_endpoint(description)
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False  # an address family we cannot judge: treat it as remote
    interface = kwargs.get("interface", args[1] if len(args) > 1 else "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name


def parse_signal(name: str) -> int:
    """``USR2``, ``SIGUSR2`` or ``usr2`` to a signal number; ValueError naming the problem."""
    full = "SIG" + name.upper().removeprefix("SIG")
    try:
        sig = signal.Signals[full]
    except KeyError:
        raise ValueError(f"no such signal {name!r}") from None
    if full in _RESERVED:
        raise ValueError(f"{full} is reserved (it stops or supervises the run)")
    return int(sig)


def parse_keys(lines: list[str], where: str) -> tuple[keys.Key, ...]:
    """OpenSSH public key lines (``type base64 [comment]``); comments and blank lines are skipped."""
    out = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            key = keys.Key.fromString(text.encode())
        except (keys.BadKeyError, ValueError, IndexError) as e:
            raise ConfigError(source=where, key=f"manhole.authorized_keys (line {n})",
                              problem=f"not an OpenSSH public key ({e}); options before the key type "
                                      f"are not supported") from None
        if not key.isPublic():
            raise ConfigError(source=where, key=f"manhole.authorized_keys (line {n})",
                              problem="this is a private key; give the public one (.pub)")
        out.append(key)
    return tuple(out)


def settings(mc: cfg.ManholeConfig) -> Settings | None:
    """The manhole settings of a configuration, checked; None when the manhole is off."""
    endpoint = mc.endpoint
    on_signal = mc.on_signal
    if not mc.asked:
        return None
    if endpoint is None:  # (asked for by on_signal alone)
        raise ConfigError(source="configuration", key="manhole.on_signal",
                          problem="needs manhole.endpoint (where to listen when the signal opens it)")
    if not is_loopback(endpoint) and not mc.allow_remote:
        raise ConfigError(source="configuration", key="manhole.endpoint",
                          problem=f"{endpoint!r} listens beyond loopback; use an interface=127.0.0.1 "
                                  f"endpoint, or set manhole.allow_remote: true to mean it")
    signum = None
    if on_signal is not None:
        try:
            signum = parse_signal(on_signal)
        except ValueError as e:
            raise ConfigError(source="configuration", key="manhole.on_signal", problem=str(e)) from None
    spec = mc.authorized_keys
    if spec is None:
        raise ConfigError(source="configuration", key="manhole.authorized_keys",
                          problem="the manhole is on but no key may log in; give a file or a list of "
                                  "OpenSSH public keys")
    if isinstance(spec, str):
        path = cfg.expand(spec) or spec
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ConfigError(source="configuration", key="manhole.authorized_keys",
                              problem=f"cannot read {path}: {e.strerror}") from None
        found = parse_keys(lines, path)
    else:
        if not all(isinstance(x, str) for x in spec):
            raise ConfigError(source="configuration", key="manhole.authorized_keys",
                              problem="each list item must be one OpenSSH public key line")
        found = parse_keys(list(spec), "configuration")
    if not found:
        raise ConfigError(source="configuration", key="manhole.authorized_keys",
                          problem="no public key found")
    return Settings(endpoint, found, signum)


def fingerprint(key: keys.Key) -> str:
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


# -- host key ----------------------------------------------------------------------

def host_key(state_dir: str) -> keys.Key:
    """This installation's host key: read it, or generate it (mode 0600) on first use."""
    path = os.path.join(state_dir, HOST_KEY_NAME)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.toString("openssh"))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another run made meanwhile
            except FileExistsError:
                return host_key(state_dir)
        finally:
            os.unlink(tmp)
        log.warning("manhole: generated the host key %s (%s)", path, fingerprint(key))
        return key
    if st.st_mode & 0o077:
        raise ConfigError(source=path, key="manhole host key",
                          problem=f"is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    with open(path, "rb") as f:
        try:
            return keys.Key.fromString(f.read())
        except keys.BadKeyError as e:
            raise ConfigError(source=path, key="manhole host key",
                              problem=f"cannot be read ({e}); move it aside to make a new one") from None


# -- the namespace -------------------------------------------------------------------

class Watched(Protocol):
    """The running operation, as the manhole's names read it (``report.Operation``)."""

    @property
    def gateway(self) -> GatewayLike | None: ...


class Timeouts:
    """``debug_timeouts``: one callable per in-flight gateway attempt.

    ``debug_timeouts[i]()`` makes attempt ``i`` time out now, so that it is
    cancelled and retried like any timeout; ``debug_timeouts()`` does it to
    all of them, ``debug_timeouts("PUT")`` to those whose description holds
    that text, and returns how many.  The list is read live.
    """

    def __init__(self, op: Watched) -> None:
        self._op = op

    def _attempts(self) -> list[AttemptLike]:
        gw = self._op.gateway
        return sorted(gw.inflight, key=lambda a: a.started) if gw is not None else []

    def __iter__(self) -> Iterator[Callable[[], None]]:
        return iter([a.expire for a in self._attempts()])

    def __len__(self) -> int:
        return len(self._attempts())

    def __getitem__(self, i: int) -> Callable[[], None]:
        return self._attempts()[i].expire

    def __call__(self, match: str = "") -> int:
        attempts = [a for a in self._attempts() if match in a.what]
        for a in attempts:
            log.warning("manhole: forcing a timeout of %r", a)
            a.expire()
        return len(attempts)

    def __repr__(self) -> str:
        items = self._attempts()
        if not items:
            return "<debug_timeouts: no request in flight>"
        return "\n".join(f"[{i}] {a!r}" for i, a in enumerate(items))


def log_level(level: str | int | None = None) -> str:
    """Return the current log level; with an argument (noise, debug, info, warning, error), set it."""
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level_number(level))
    name = logging.getLevelName(root.level)
    return str(name).lower()


def main_loop_frame() -> FrameType:
    """The frame of the reactor's main loop (or the outermost frame, outside a reactor)."""
    f: FrameType | None = sys._getframe()
    outer = sys._getframe()
    while f is not None:
        if f.f_code.co_name == "mainLoop":
            return f
        outer = f
        f = f.f_back
    return outer


def namespace(tree: Mapping[str, Any], op: Watched) -> dict[str, Any]:
    from .config import shown

    return {"__name__": "__manhole__", "__doc__": None, "config": shown(tree) if tree else tree, "op": op, "debug_frame": None,
            "debug_timeouts": Timeouts(op), "log": logging.getLogger("lafs_backup"),
            "log_level": log_level}


BANNER = (b"lafs-backup manhole. Names: op (op.progress, op.in_flight, op.stats), config, debug_frame,\r\n"
          b"debug_timeouts (debug_timeouts() forces every in-flight request to time out and retry),\r\n"
          b"log, log_level('debug'). Ctrl-D leaves; the run goes on.\r\n")


class _Repl(ColoredManhole):
    """The REPL of one connection, over the namespace shared by all of them."""

    namespace: dict[str, Any]

    def __init__(self, ns: dict[str, Any]) -> None:
        super().__init__()
        self.namespace = ns  # the base class copies it; keep it shared so it persists

    def connectionMade(self) -> None:
        self.namespace["debug_frame"] = main_loop_frame()
        super().connectionMade()
        run = self.interpreter.runcode

        def runcode(*a: object, **kw: object) -> None:
            # exit() or quit() leaves this session, as Ctrl-D does; the run goes on, and nothing
            # reaches the command's log.
            try:
                run(*a, **kw)
            except SystemExit:
                self.terminal.write(b"leaving the manhole; the run goes on\r\n")
                self.terminal.loseConnection()
        self.interpreter.runcode = runcode  # type: ignore[method-assign]

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.terminal.write(BANNER)
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


# -- SSH -------------------------------------------------------------------------------

class _Session(TerminalSession):
    """A terminal session that follows window resizes and ends when the client's input does."""

    width, height = 80, 24  # when the client asked for no terminal
    _chained: insults.ServerProtocol | None = None

    def openShell(self, proto: session.SSHSessionProcessProtocol) -> None:
        # Leaving the REPL ends the "process" with status 0, so ssh exits 0 too (this session's
        # protocol, told so in place of closing its channel).
        proto.loseConnection = lambda: proto.processEnded(Failure(ProcessDone(0)))  # type: ignore[method-assign]
        self._chained = self.chainedProtocolFactory()
        self.transportFactory(proto, self._chained, IConchUser(self.original), self.width, self.height)

    def windowChanged(self, size: tuple[int, int, int, int]) -> None:
        self.height, self.width = size[:2]
        if self._chained is not None and self._chained.terminalProtocol is not None:
            self._chained.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        # "ssh host < script": the input has ended, so end the session as Ctrl-D would.
        if self._chained is not None:
            self._chained.loseConnection()


def _peer(transport: ITransport | None) -> str:
    if transport is None:
        return "(unknown peer)"
    try:
        a = transport.getPeer()
    except Exception:
        return "(unknown peer)"
    host, port = getattr(a, "host", None), getattr(a, "port", None)
    return f"{host}:{port}" if host is not None else (getattr(a, "name", None) or "a local socket")


def _offered_key(data: bytes) -> str:
    try:
        _, blob, _ = getNS(data[1:], 2)
        return fingerprint(keys.Key.fromString(blob))
    except Exception:
        return "(unreadable key)"


class _Transport(SSHServerTransport):
    factory: _Factory

    def connectionMade(self) -> None:
        self.peer_name = _peer(self.transport)
        log.warning("manhole: connection from %s", self.peer_name)
        self.factory.sessions.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.sessions.discard(self)
        log.warning("manhole: connection from %s closed", self.peer_name)
        super().connectionLost(reason)


class _Factory(ConchFactory):
    """The manhole's SSH factory, which keeps its open connections (to close them with the listener)."""

    sessions: set[_Transport]


@implementer(IRealm)
class _Realm(TerminalRealm):
    """Twisted's terminal realm, declared as the realm it is."""


#: What a successful login gives: the avatar's interface, the avatar, and how to log it out.
_PortalTuple = tuple[type[IConchUser], IConchUser, Callable[[], None]]


class _UserAuth(userauth.SSHUserAuthServer):
    """Public keys only; every attempt is logged with the peer and the key's fingerprint."""

    transport: _Transport

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[_PortalTuple]:
        peer = self.transport.peer_name
        who = user.decode("utf-8", "backslashreplace")
        method = kind.decode("ascii", "replace")
        d = super().tryAuth(kind, user, data)
        if kind == b"none":  # a client asking which methods exist
            log.info("manhole: %s asks how to log in as %r: public keys only", peer, who)
            return d
        if kind != b"publickey":
            log.warning("manhole: refused %s login as %r from %s: only public keys are accepted",
                        method, who, peer)
            return d
        fp = _offered_key(data)

        def accepted(result: _PortalTuple) -> _PortalTuple:
            log.warning("manhole: accepted key %s for %r from %s", fp, who, peer)
            return result

        def refused(f: Failure) -> Failure:
            if f.check(conch_error.ValidPublicKey, conch_error.IgnoreAuthentication):
                log.info("manhole: key %s offered by %s is authorized; waiting for its signature", fp, peer)
            else:
                log.warning("manhole: refused key %s for %r from %s: %s", fp, who, peer, f.getErrorMessage())
            return f

        d.addCallbacks(accepted, refused)
        return d


@implementer(ICredentialsChecker)
class KeyChecker:
    """Accepts a login, under any user name, signed by one of the authorized keys."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, authorized: tuple[keys.Key, ...]) -> None:
        self._blobs = {k.blob() for k in authorized}

    def requestAvatarId(self, credentials: SSHPrivateKey) -> defer.Deferred[bytes | tuple[()]]:
        if credentials.blob not in self._blobs:
            return defer.fail(UnauthorizedLogin("key not authorized"))
        if not credentials.signature:
            return defer.fail(conch_error.ValidPublicKey())
        try:
            good = keys.Key.fromString(credentials.blob).verify(credentials.signature, credentials.sigData)
        except Exception:
            good = False
        if not good:
            return defer.fail(UnauthorizedLogin("bad signature"))
        return defer.succeed(credentials.username)


def make_factory(s: Settings, host: keys.Key, ns: dict[str, Any]) -> _Factory:
    def terminal() -> insults.ServerProtocol:
        return insults.ServerProtocol(_Repl, ns)

    realm = _Realm()
    realm.sessionFactory = _Session
    # (Twisted takes any callable that makes the terminal; its type is read from its default, the class)
    realm.chainedProtocolFactory = terminal  # type: ignore[assignment]
    factory = _Factory(Portal(realm, [KeyChecker(s.keys)]))
    factory.protocol = _Transport
    factory.services = {**factory.services, b"ssh-userauth": _UserAuth}
    factory.publicKeys = {host.sshType(): host.public()}
    # (Twisted's ConchFactory declares its keys as bytes; they are keys, as SSHFactory uses them)
    factory.privateKeys = {host.sshType(): host}  # type: ignore[dict-item]
    factory.sessions = set()
    return factory


class Manhole:
    """The listener: open, close, toggled by a signal."""

    def __init__(self, s: Settings, reactor: Reactor, factory: _Factory, warn: Callable[[str], None]) -> None:
        self.settings = s
        self._reactor = reactor
        self._factory = factory
        self._warn = warn
        self._port: IListeningPort | None = None
        self._busy = False
        self._old_handler: Callable[[int, FrameType | None], object] | int | signal.Handlers | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    @property
    def address(self) -> str | None:
        if self._port is None:
            return None
        h = self._port.getHost()
        return f"{h.host}:{h.port}" if isinstance(h, (IPv4Address, IPv6Address)) else str(getattr(h, "name", h))

    async def open(self) -> None:
        if self._port is not None:
            return
        try:
            self._port = await serverFromString(self._reactor, self.settings.endpoint).listen(self._factory)
        except Exception as e:
            self._warn(f"cannot listen on {self.settings.endpoint!r}: {e}")
            return
        log.warning("manhole: listening on %s (pid %d)", self.address, os.getpid())

    async def close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        for t in list(self._factory.sessions):
            if t.transport is not None:
                t.transport.loseConnection()
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        log.warning("manhole: closed")

    def toggle(self) -> None:
        if self._busy:
            return

        async def flip() -> None:
            self._busy = True
            try:
                await (self.close() if self.is_open else self.open())
            finally:
                self._busy = False
        defer.Deferred.fromCoroutine(flip())

    def install_signal(self) -> None:
        if self.settings.signum is None:
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self._reactor.callFromThread(self.toggle)
        self._old_handler = signal.signal(self.settings.signum, handler)
        log.warning("manhole: closed until signal %s (kill -%s %d)", signal.Signals(self.settings.signum).name,
                    signal.Signals(self.settings.signum).name.removeprefix("SIG"), os.getpid())

    def uninstall_signal(self) -> None:
        if self.settings.signum is not None and self._old_handler is not None:
            signal.signal(self.settings.signum, self._old_handler)
            self._old_handler = None


async def start(config: cfg.Config, reactor: Reactor, op: Watched, state_dir: str,
                warn: Callable[[str], None]) -> Manhole | None:
    """Start the manhole a configuration asks for (None when it is off).

    Open at once, or, with ``manhole.on_signal``, closed until the signal.
    A configuration error raises :class:`ConfigError`; a port that cannot be
    opened is reported through ``warn`` and the run goes on.
    """
    s = settings(config.manhole)
    if s is None:
        return None
    mh = Manhole(s, reactor, make_factory(s, host_key(state_dir), namespace(config.tree, op)), warn)
    if s.signum is not None:
        mh.install_signal()
    else:
        await mh.open()
    return mh


async def stop(mh: Manhole | None) -> None:
    if mh is not None:
        mh.uninstall_signal()
        await mh.close()
