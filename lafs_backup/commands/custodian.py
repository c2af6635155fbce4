"""``custodian``: ``init`` (on the host) makes the inbox and the custodian's key file; ``run``, ``pass`` and
``check`` (on the custodian's machine, with that key) keep the leases of every backup the custodian has
seen alive, from verify caps alone (see docs/custodian.md)."""

from __future__ import annotations

import argparse
import hashlib
import os
import time

from ..custodian.keyfile import CustodianKey, read_key
from ..custodian.policy import Report, Rules
from ..custodian.renewal import Renewal
from ..custodian.service import Custodian, Observed
from ..custodian.state import StateDir
from ..errors import ExitCode, GatewayError, GridError, LafsBackupError, UsageError
from ..protocols import GatewayLike
from ..resources import Opener
from ..system.places import data_dir, state_dir

#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup custodian check --key ~/custodian.key'

EPILOG = """\
init runs on the host (it needs the repository's key) and writes the custodian's key file, mode 0600: move
  it to the custodian's machine or account; the host keeps only the inbox's write cap.
run, pass and check run where the custodian lives: run reads the inbox every custodian.poll seconds and
  renews a slice of everything at each reading, so that every object is renewed once per
  custodian.renew_every days (the objects of a new backup at once); pass reads it and renews everything
  now (--census: and asks which shares each server holds); check reads it and says how things stand,
  with each kept backup's last renewal and earliest lease expiry.
exit codes of check (a monitoring plugin's): 0 OK; 1 warning (a forget request pending, no new manifest
  for custodian.quiet_alert, no complete renewal for 1.5 custodian.renew_every or renewal failing, a
  manifest unreadable for a while, objects short of shares); 2 critical (manifests gone from the inbox, a
  manifest refused, a kept backup not resolved, objects with fewer shares than rebuild them, a kept
  backup's earliest lease may end within custodian.behind_days); 3 the inbox could not be read.
"""


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``custodian``."""
    p.add_argument("action", choices=["init", "run", "pass", "check", "cancel"],
                   help="init: make the inbox and the custodian's key (on the host); run: the service; pass: one "
                        "full renewal pass now; check: how things stand (exit 0 ok, 1 warning, 2 critical); "
                        "cancel: the owner cancels forget requests (with a sealed repository's recovery key)")
    p.add_argument("backups", nargs="*", metavar="ID",
                   help="for cancel: the backups whose forget requests the custodian must not honour (ids from "
                        "'lafs-backup --repo RECOVERY-KEY list')")
    p.add_argument("--key", metavar="FILE", help="the custodian's key file (custodian.key_file); for init: where "
                                                 "to write it (a new file)")
    p.add_argument("--introducer", metavar="FURL", help="for init: the grid's introducer fURL, when the recovery "
                                                        "key does not hold it (repository.introducer_furl)")
    p.add_argument("--census", action="store_true",
                   help="for pass: also ask every server which shares it holds (objects short of shares are "
                        "reported; it costs the servers more than renewing alone)")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    if ns.census and ns.action != "pass":
        raise UsageError("only 'custodian pass' takes --census")
    if ns.action == "init":
        return await _init(o, ns)
    if ns.action == "cancel":
        return await _cancel(o, ns)
    if ns.backups:
        raise UsageError("only 'custodian cancel' takes backup ids")
    if ns.introducer:
        raise UsageError("only 'custodian init' takes --introducer")
    path = ns.key or o.config.custodian.key_file
    if not path:
        raise UsageError(f"'custodian {ns.action}' needs the custodian's key file: --key FILE (custodian.key_file)")
    key = read_key(path)
    custodian = Custodian(await _gateway(o, key), key, StateDir(_state_dir(o, key)), rules(o),
                          o.rt.reactor.seconds)
    renewal = Renewal(o.rt.reactor, key.lease_secret(path), os.path.join(custodian.dir.path, "grid"),
                      key.furl, o.config.grid.start_timeout, o.config.operation.rate_objects)
    try:
        if ns.action == "check":
            return await _check(o, custodian)
        if ns.action == "pass":
            _said(o, await custodian.observe())
            try:
                p = await custodian.renew(renewal.renew, census=ns.census)
            except LafsBackupError as e:
                custodian.failed(e.message)
                raise
            # (renewed: objects some server renewed; with a census, that said it holds shares of them)
            o.rt.reporter.info(f"lafs-backup custodian: renewed {p.renewed} of {p.objects} objects of {p.backups} "
                               f"backups in {p.finished - p.started:.1f}s ({p.requests} requests" +
                               (", with a census of shares)" if p.census else ", no census of shares)"))
            return int(_show(o, custodian.report()))
        return await _serve(o, custodian, renewal)
    finally:
        await renewal.stop()


def rules(o: Opener) -> Rules:
    c = o.config.custodian
    lease = (o.config.destination.lease_days or 31) * 86400.0
    return Rules(c.keep_within, c.grace, c.poll, c.quiet_alert, c.renew_every, lease, c.behind)


def _state_dir(o: Opener, key: CustodianKey) -> str:
    return o.config.custodian.state_dir or os.path.join(
        state_dir(), "custodian", hashlib.sha256(key.own.encode("ascii")).hexdigest()[:12])


async def _gateway(o: Opener, key: CustodianKey) -> GatewayLike:
    """The custodian's gateway: ``destination.url``, else a gateway node of this machine's that joins the
    grid of the key's introducer."""
    if o.config.destination.url or not key.furl:
        return await o.gateway()
    from ..grid.local import GridSpec, LocalGrid

    d = os.path.join(data_dir(), "custodian-gateways", hashlib.sha256(key.furl.encode()).hexdigest()[:12])
    g = o.config.grid
    url = await o.ensure_grid(LocalGrid(GridSpec(d, g.nodes, g.needed, 1, join=key.furl)))
    return o.make_gateway(url)


async def _init(o: Opener, ns: argparse.Namespace) -> int:
    from ..engine.inbox import create

    path = ns.key or o.config.custodian.key_file or os.path.join(
        state_dir(), "custodian", f"custodian-{time.strftime('%Y%m%d%H%M%S')}.key")
    repo = await o.repository()
    if repo is None:
        raise UsageError("there is no repository yet: run 'lafs-backup init' (or a backup) first")
    kept = await create(await o.gateway(), repo.key, path, ns.introducer or o.config.repository.introducer_furl)
    o.rt.reporter.say(f"lafs-backup: made the custodian's inbox (its write cap is kept in {kept}); the custodian's "
                      f"key is in {path}.  Move that file to the custodian's machine or account (it holds the "
                      "custodian's own directory's write cap and its lease secret: this host must not keep it), "
                      "and run 'lafs-backup custodian run --key FILE' there.  Each backup from now on publishes "
                      "its lease manifest into the inbox")
    return ExitCode.OK


async def _cancel(o: Opener, ns: argparse.Namespace) -> int:
    from ..engine.inbox import cancel_forgets
    from .which import choose

    key = await o.repo_key()
    if key is None or not key.opens or not key.owner:
        raise UsageError("'custodian cancel' needs a sealed repository's recovery key: --repo FILE")
    if not ns.backups:
        raise UsageError("name the backups whose forget requests to cancel (ids from 'lafs-backup list')")
    chosen = choose(o, await o.backups(), ns.backups, read=False)
    n = await cancel_forgets(await o.gateway(), key, chosen)
    o.rt.reporter.info(f"lafs-backup: the custodian will not honour the forget requests of {n} backup(s) "
                       f"({', '.join(b.short_id for b in chosen)}); it sees this at its next reading of the inbox")
    return ExitCode.OK


async def _check(o: Opener, custodian: Custodian) -> int:
    try:
        _said(o, await custodian.observe())
    except (GatewayError, GridError) as e:
        o.rt.reporter.error(f"the inbox cannot be read ({e.message})")
        return 3
    report = custodian.report()
    await _notify(o, report)
    return int(_show(o, report))


async def _serve(o: Opener, custodian: Custodian, renewal: Renewal) -> int:
    """Read the inbox every ``poll`` seconds, renew the slice of the rotation due then (and the new
    objects of new backups), say and ping how things stand; until Ctrl-C or SIGTERM.  A step that fails
    is said and tried again at the next round: one bad manifest, a gateway down or a grid not joined
    never stops the service, and a slice not renewed is renewed with the next one."""
    rep = o.rt.reporter
    while True:
        try:
            _said(o, await custodian.observe())
        except LafsBackupError as e:
            what = "the inbox cannot be read now" if isinstance(e, GridError) else "the inbox could not be taken in"
            rep.advise("custodian", f"{what} ({e.message}); trying again in {custodian.rules.poll:g}s")
        # (a turn needs only what the custodian copied before: it is made even when the inbox cannot be read)
        try:
            await custodian.tick(renewal.renew)
        except LafsBackupError as e:
            rep.advise("custodian", f"the renewal could not be made ({e.message}); trying again in "
                                    f"{custodian.rules.poll:g}s")
            custodian.failed(e.message)
        try:
            report = custodian.report()
            for a in report.alerts:
                rep.advise("custodian", f"{a.level.name}: {a.topic}: {a.message}")
            await _notify(o, report)
        except LafsBackupError as e:
            rep.advise("custodian", f"how things stand cannot be said now: {e.message}")
        await o.rt.sleep(custodian.rules.poll)


def _said(o: Opener, seen: Observed) -> None:
    rep = o.rt.reporter
    for what, keys in (("new manifest", seen.new), ("refused manifest", seen.refused),
                       ("manifest that cannot be read now (read again next time)", seen.unreadable),
                       ("manifest gone from the inbox", seen.vanished), ("forget request", seen.forgets),
                       ("forgotten (its grace period passed)", seen.honoured),
                       ("forget request cancelled by the owner", seen.cancelled),
                       ("not yet linked into (or out of) the custodian's own directory (tried again next time)",
                        seen.uncopied)):
        for k in keys:
            rep.info(f"{what}: {k}")


def _show(o: Opener, r: Report) -> int:
    """Print the report (text or one JSON document); its level is the exit code."""
    rep = o.rt.reporter
    if rep.json_mode:
        rep.record(r.json())
        return int(r.level)
    rep.output(f"lafs-backup custodian: {r.level.name}")
    for b, x in zip(r.kept, r.leases):
        gone = f", gone from the inbox {_iso(b.vanished)}" if b.vanished is not None else ""
        leases = ("leases not renewed yet" if x.renewed is None else
                  f"leases renewed {_iso(x.renewed)}, earliest expiry {_iso(x.expires)}")
        rep.output(f"kept: {b.key} (first seen {_iso(b.seen)}{gone}; {leases})")
    for f in r.pending:
        rep.output(f"forget pending: {f.key} (arrived {_iso(f.seen)}, takes effect {_iso(f.seen + r.rules.grace)})")
    c, rot, p = r.state.complete, r.state.rotation, r.state.last_pass
    rep.output("last complete renewal: never" if c is None else
               f"last complete renewal: {_iso(c.finished)} (by {'a full pass' if c.by == 'pass' else 'the rotation'}, "
               f"begun {_iso(c.started)})")
    if rot is not None:
        rep.output(f"rotation: {100 * (r.done() or 0.0):.1f}% of the round begun {_iso(rot.started)} "
                   f"(one round every {r.rules.renew_every / 86400:g} days)")
    if p is not None:
        rep.output(f"last full pass: {_iso(p.started)}: {p.objects} objects of {p.backups} backups" +
                   (f", {p.renewed} held by some server" if p.census else ", no census of shares"))
    for a in r.alerts:
        rep.output(f"{a.level.name}: {a.topic}: {a.message}")
    return int(r.level)


def _iso(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def _notify(o: Opener, r: Report) -> None:
    """Ping ``notify.url`` (when set): success when all is well, else fail with the alerts."""
    conf = o.config.monitor
    if not conf.notify_url:
        return
    from ..grid.notify import Notifier, make_client

    n = Notifier(conf.notify_url, make_client(o.rt.reactor), o.rt.reactor, conf.notify_timeout)
    body = "\n".join(f"{a.level.name}: {a.topic}: {a.message}" for a in r.alerts) or "ok"
    problem = await n.ping("success" if not r.alerts else "fail", body)
    if problem:
        o.rt.reporter.advise("notify", problem)
