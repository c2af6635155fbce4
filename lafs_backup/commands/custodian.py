"""``custodian``: ``init`` (on the host) makes the inbox and the custodian's key file; ``run``, ``pass`` and
``check`` (on the custodian's machine, with that key) keep the leases of every backup the custodian has
seen alive, from verify caps alone (see docs/custodian.md)."""

from __future__ import annotations

import argparse
import hashlib
import os
import time

from ..custodian.keyfile import CustodianKey, read_key
from ..custodian.policy import Report, Rules, pass_due
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
  renews every custodian.renew_every days; pass reads it and renews everything now; check reads it and
  says how things stand.
exit codes of check (a monitoring plugin's): 0 OK; 1 warning (a forget request pending, no new manifest
  for custodian.quiet_alert, renewal behind or failing, a manifest unreadable for a while, objects short
  of shares); 2 critical (manifests gone from the inbox, a manifest refused, a kept backup not resolved,
  objects with fewer shares than rebuild them, a lease may end within 7 days); 3 the inbox could not be
  read.
"""


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``custodian``."""
    p.add_argument("action", choices=["init", "run", "pass", "check"],
                   help="init: make the inbox and the custodian's key (on the host); run: the service; pass: one "
                        "full renewal pass now; check: how things stand (exit 0 ok, 1 warning, 2 critical)")
    p.add_argument("--key", metavar="FILE", help="the custodian's key file (custodian.key_file); for init: where "
                                                 "to write it (a new file)")
    p.add_argument("--introducer", metavar="FURL", help="for init: the grid's introducer fURL, when the recovery "
                                                        "key does not hold it (repository.introducer_furl)")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    if ns.action == "init":
        return await _init(o, ns)
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
                p = await custodian.renew(renewal.renew)
            except LafsBackupError as e:
                custodian.failed(e.message)
                raise
            o.rt.reporter.info(f"lafs-backup custodian: renewed {p.renewed} of {p.objects} objects of {p.backups} "
                               f"backups in {p.finished - p.started:.1f}s")
            return int(_show(o, custodian.report()))
        return await _serve(o, custodian, renewal)
    finally:
        await renewal.stop()


def rules(o: Opener) -> Rules:
    c = o.config.custodian
    lease = (o.config.destination.lease_days or 31) * 86400.0
    return Rules(c.keep_within, c.grace, c.poll, c.quiet_alert, c.renew_every, lease)


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
    """Read the inbox every ``poll`` seconds, renew when a pass is due, say and ping how things stand;
    until Ctrl-C or SIGTERM.  A step that fails is said and tried again at the next round: one bad
    manifest, a gateway down or a grid not joined never stops the service."""
    rep = o.rt.reporter
    while True:
        try:
            _said(o, await custodian.observe())
        except LafsBackupError as e:
            what = "the inbox cannot be read now" if isinstance(e, GridError) else "the inbox could not be taken in"
            rep.advise("custodian", f"{what} ({e.message}); trying again in {custodian.rules.poll:g}s")
        # (a pass needs only what the custodian copied before: it is made even when the inbox cannot be read)
        if pass_due(custodian.state, custodian.now(), custodian.rules):
            try:
                await custodian.renew(renewal.renew)
            except LafsBackupError as e:
                rep.advise("custodian", f"the renewal pass could not be made ({e.message}); trying again in "
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
    for b in r.kept:
        gone = f", gone from the inbox {_iso(b.vanished)}" if b.vanished is not None else ""
        rep.output(f"kept: {b.key} (first seen {_iso(b.seen)}{gone})")
    for f in r.pending:
        rep.output(f"forget pending: {f.key} (arrived {_iso(f.seen)}, takes effect {_iso(f.seen + r.rules.grace)})")
    p = r.state.last_pass
    rep.output("last renewal pass: never" if p is None else
               f"last renewal pass: {_iso(p.started)}: {p.renewed} of {p.objects} objects renewed, of {p.backups} "
               "backups")
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
