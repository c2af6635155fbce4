"""The host's side of the custodian: ``custodian init`` makes the inbox, the custodian's own directory and
its key file; each recorded backup then publishes its lease manifest into the inbox, and each forgotten
one a forget request.  All of it is off until ``custodian init`` ran for the repository.

The inbox is a mutable directory: the host holds its write cap (a file of mode 0600 in the state
directory, named by a digest of the repository's write cap), the custodian its read cap::

    inbox/
        forget/                     forget requests: one entry per backup, FOLDER.RECORD
        3f2a9c0d51e79b1c/           a writer's folder (a keyed digest of its host and source)
            20261202T023012.481516Z.g41     its manifest: an immutable file of verify caps

The host never holds the custodian directory's write cap: it is in the key file alone, which the user
moves to the custodian's machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ..caps import lit_cap
from ..custodian.keyfile import CustodianKey, new_secret, write_key
from ..custodian.manifest import (FORGET, Last, Manifest, cancel_envelope, cancel_name, folder_name,
                                  forget_envelope, forget_name, manifest_envelope, plan)
from ..custodian.targets import verify_cap_of
from ..errors import GridError, LafsBackupError, UsageError
from ..history import Backup
from ..protocols import GatewayLike
from ..repository import RepoKey, record_name, writer_name
from ..report import Reporter
from ..store.store import Writer
from ..system.paths import replacing
from ..system.places import state_dir, this_host
from .forget import reachable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbox:
    """The host's caps of the inbox: its write cap and that of its ``forget`` folder."""

    writecap: str
    forget: str


def inbox_file(repo_writecap: str, where: str | None = None) -> str:
    """Where the host keeps the inbox of the repository whose write cap is ``repo_writecap`` (in the state
    directory's ``custodian``, or in ``where``)."""
    digest = hashlib.sha256(b"lafs-backup inbox\0" + repo_writecap.encode("ascii")).hexdigest()[:16]
    return os.path.join(where or os.path.join(state_dir(), "custodian"), f"inbox.{digest}.json")


def load_inbox(repo_writecap: str) -> Inbox | None:
    """The inbox this host publishes into (None: ``custodian init`` did not run for this repository)."""
    path = inbox_file(repo_writecap)
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
        return Inbox(str(body["inbox"]), str(body["forget"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"the custodian's inbox file {path} is damaged: run 'lafs-backup custodian init' again "
                         "after moving it away") from None


async def create(gw: GatewayLike, key: RepoKey, key_path: str, furl: str | None) -> str:
    """Make the inbox (and its ``forget`` folder) and the custodian's own directory, write the custodian's
    key file to ``key_path`` (0600, never replacing one), and keep the inbox's write cap on this host;
    returns where that is.  Raises :class:`UsageError` when this repository has an inbox already."""
    return (await create_custodian(gw, key, key_path, furl))[0]


async def create_custodian(gw: GatewayLike, key: RepoKey, key_path: str, furl: str | None,
                           sealed: bool = False) -> tuple[str, str, str | None]:
    """:func:`create`; returns where the inbox's write cap is kept, the read cap of the custodian's own
    directory, and (``sealed``) the write cap of the owner's directory, where the recovery key cancels
    forget requests (the custodian's key carries its read cap).  A sealed repository's recovery key
    carries the last two: this host keeps neither."""
    path = inbox_file(key.writecap)
    if os.path.exists(path):
        raise UsageError(f"this repository has a custodian inbox already (its cap is in {path})")
    if os.path.exists(key_path):
        raise UsageError(f"{key_path} exists: the custodian key is written to a new file only")
    furl = furl or key.furl
    if not furl:
        raise UsageError("the custodian joins the grid through its introducer, whose fURL the recovery key does not "
                         "hold: give it with --introducer FURL (or repository.introducer_furl)")
    inbox = await gw.mkdir_mutable()
    forget = await gw.mkdir_mutable()
    own = await gw.mkdir_mutable()
    owner = await gw.mkdir_mutable() if sealed else None
    owner_ro = str((await gw.get_json(owner))[1]["ro_uri"]) if owner else None
    await gw.set_children(inbox, {FORGET: (forget, None)})
    readcap = (await gw.get_json(inbox))[1]["ro_uri"]
    own_readcap = str((await gw.get_json(own))[1]["ro_uri"])
    write_key(key_path, CustodianKey(str(readcap), own, furl, new_secret(), owner_ro))
    del own  # the host keeps no cap of the custodian's own directory
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with replacing(path) as f:
        json.dump({"inbox": inbox, "forget": forget}, f)
    return path, own_readcap, owner


def _last_path(repo_writecap: str, folder: str) -> str:
    return inbox_file(repo_writecap)[:-len(".json")] + f".{folder}.last"


def _load_last(path: str) -> tuple[str | None, Last | None]:
    """The writer's folder cap and its last manifest, as this host remembers them."""
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
        last = (Last(body["manifest"], frozenset(body["caps"]), int(body["depth"]))
                if body.get("manifest") else None)
        return str(body["folder"]), last
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        log.info("the last manifest's memory %s is damaged: the next manifest is whole", path)
        return None, None


async def snapshot_verify_caps(gw: GatewayLike, snap: str) -> set[str]:
    """The verify caps of every object a snapshot references (LIT objects have none): the gateway's
    manifest of it, the walk ``check`` renews leases along."""
    return (await snapshot_caps(gw, snap))[1]


async def snapshot_caps(gw: GatewayLike, snap: str) -> tuple[set[str], set[str]]:
    """The caps of every object a snapshot references, LIT ones included, and the verify caps of those
    that have shares: one walk of the gateway's manifest of it."""
    caps: set[str] = set()
    verify: set[str] = set()

    def each(record: dict[str, Any]) -> None:
        cap = record.get("cap")
        if isinstance(cap, str) and cap.startswith("URI:"):
            caps.add(cap)
            v = verify_cap_of(cap)
            if v is not None:
                verify.add(v)

    await reachable(gw, snap, each)
    return caps, verify


async def _folder(gw: GatewayLike, inbox: Inbox, folder: str, attempts: int = 8) -> str:
    """The write cap of a writer's folder in the inbox, made and linked (verified) on first use."""
    for _ in range(attempts):
        children = (await gw.get_json(inbox.writecap))[1]["children"]
        there = children.get(folder)
        if there is not None and there[1].get("rw_uri"):
            return str(there[1]["rw_uri"])
        made = await gw.mkdir_mutable()
        await gw.set_children(inbox.writecap, {folder: (made, None)}, replace=False)
    raise GridError(problem="the writer's folder could not be added to the custodian's inbox")


async def publish_manifest(rep: Reporter, gw: GatewayLike, repo_writecap: str, b: Backup,
                           full_every: int | None = None, caps: set[str] | None = None,
                           box: str | None = None) -> Manifest | None:
    """Publish the lease manifest of the backup ``b`` just recorded into the custodian's inbox, when this
    repository has one (else None).  Never raises for what goes wrong here (the grid, a damaged inbox
    file, this host's memory of its last manifest): the backup is recorded already, so each is a warning.
    When the manifest could not be published the custodian does not keep this backup, and the next
    manifest is a delta on the last one published.  ``caps``: the backup's verify caps, when the caller
    walked it already; ``box``: a sealed repository's record of it, which the custodian keeps too."""
    try:
        inbox = load_inbox(repo_writecap)
        if inbox is None:
            return None
        folder = folder_name(repo_writecap, writer_name(b.host or this_host(), b.source))
        record = b.record or record_name(b.ts, b.generation)  # (the name the repository records it by)
        memory = _last_path(repo_writecap, folder)
        folder_cap, last = _load_last(memory)
        if caps is None:
            caps = await snapshot_verify_caps(gw, b.cap)
        m = plan(caps, last) if full_every is None else plan(caps, last, full_every)
        data = m.encode()
        cap = await Writer(gw).put_bytes(data, "a lease manifest")
        if folder_cap is None:
            folder_cap = await _folder(gw, inbox, folder)
        envelope = manifest_envelope(record, len(data))
        if box is not None:  # (a sealed repository's record: the custodian keeps it for the recovery key)
            envelope["record_box"] = box
        await gw.set_children(folder_cap, {record: (cap, envelope)})
    except (LafsBackupError, OSError) as e:
        problem = e.message if isinstance(e, LafsBackupError) else (e.strerror or str(e))
        rep.advise("custodian", f"the lease manifest of this backup is not in the custodian's inbox ({problem}): "
                                "the custodian does not keep this backup")
        return None
    try:
        with replacing(memory) as f:
            json.dump({"folder": folder_cap, "manifest": cap, "depth": m.depth, "caps": sorted(caps)}, f)
    except OSError as e:
        # (the next manifest is then a delta on an older one, or whole: the custodian accepts either)
        rep.advise("custodian", "the lease manifest of this backup is in the custodian's inbox, but this host "
                                f"could not remember it in {memory} ({e.strerror or e}): the next one is not a delta "
                                "on it")
    log.info("lease manifest %s/%s: %d objects, %s (%d added, %d removed)", folder, record, m.objects,
             "whole" if m.whole else "a delta", len(m.added), len(m.removed))
    return m


async def publish_sealed(rep: Reporter, gw: GatewayLike, repo_writecap: str, b: Backup, box: str,
                         caps: set[str]) -> bool:
    """Publish a sealed repository's backup ``b`` into the custodian's inbox: its manifest (of ``caps``, its
    verify caps), with its record's ``box`` in the envelope.  True: the inbox has them, or there is no
    inbox to send to; False: they could not be sent now (a warning says why)."""
    try:
        if load_inbox(repo_writecap) is None:
            return True
    except LafsBackupError:
        pass  # (publish_manifest says what is wrong with the inbox file)
    return await publish_manifest(rep, gw, repo_writecap, b, caps=caps, box=box) is not None


async def request_forgets(gw: GatewayLike, repo_writecap: str, backups: Iterable[Backup]) -> int:
    """Ask the custodian to forget ``backups`` (after its grace period), when this repository has an inbox;
    returns how many requests were linked.  The caller asks before it forgets anything: raises
    :class:`LafsBackupError` (nothing was forgotten) when the requests could not be linked, and
    :class:`UsageError` when the inbox file is damaged."""
    inbox = load_inbox(repo_writecap)
    if inbox is None:
        return 0
    marker = lit_cap(b"forget")  # (the request is its link metadata; a LIT cap has no shares to keep)
    children = {}
    for b in backups:
        folder = folder_name(repo_writecap, writer_name(b.host or this_host(), b.source))
        record = b.record or record_name(b.ts, b.generation)
        children[forget_name(folder, record)] = (marker, forget_envelope(folder, record))
    if children:
        try:
            await gw.set_children(inbox.forget, children)
        except GridError as e:
            # (the custodian is asked first: nothing was forgotten yet, and a rerun asks again)
            raise LafsBackupError(f"the custodian could not be asked to forget these backups ({e.message}): "
                                  "nothing was forgotten; run the command again") from None
    return len(children)


async def cancel_forgets(gw: GatewayLike, key: RepoKey, backups: Iterable[Backup]) -> int:
    """The owner's cancel of the custodian's forget requests for ``backups``: entries in the owner's
    directory, which only a sealed repository's recovery key (``key``) writes and the custodian reads at each
    reading of its inbox.  Returns how many were linked."""
    if not (key.opens and key.owner):
        raise UsageError("cancelling forget requests needs a sealed repository's recovery key (--repo FILE)")
    marker = lit_cap(b"cancel")
    children = {}
    for b in backups:
        folder = folder_name(key.writecap, writer_name(b.host or this_host(), b.source))
        record = b.record or record_name(b.ts, b.generation)
        children[cancel_name(folder, record)] = (marker, cancel_envelope(folder, record))
    if children:
        await gw.set_children(key.owner, children)
    return len(children)
