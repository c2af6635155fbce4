"""``init``: make a repository on the grid and keep its recovery key (mode 0600); with ``--sealed``, a
sealed repository whose recovery key and custodian's key are written once, to files that leave the host."""

from __future__ import annotations

import argparse
import os

from ..errors import ExitCode, UsageError
from ..grid.gateway import Gateway
from ..repository import RepoKey
from ..resources import Opener, Sealed


#: The example ``--help`` shows.
EXAMPLE = 'lafs-backup init --sealed --recovery-key /media/usb/lafs-backup.recovery'


def arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``init``."""
    p.add_argument("--sealed", action="store_true",
                   help="seal every backup's record to a key pair whose private half leaves this machine: a "
                        "stolen or compromised host cannot read its older backups, and a custodian keeps them "
                        "(see the README's threat model)")
    p.add_argument("--recovery-key", metavar="FILE",
                   help="with --sealed: the new file the recovery key is written to, once (default: "
                        "lafs-backup.recovery-key in the current directory); move it off this machine")
    p.add_argument("--custodian-key", metavar="FILE",
                   help="with --sealed: the new file the custodian's key is written to (default: "
                        "lafs-backup.custodian-key in the current directory); move it to the custodian")
    p.add_argument("--introducer", metavar="FURL",
                   help="with --sealed: the introducer the custodian joins the grid through (default: "
                        "repository.introducer_furl, or the embedded grid's)")


async def run(o: Opener, ns: argparse.Namespace) -> int:
    if not ns.sealed:
        given = [f for f, v in (("--recovery-key", ns.recovery_key), ("--custodian-key", ns.custodian_key),
                                ("--introducer", ns.introducer)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --sealed (a plain "
                             "repository's key is kept, and "
                             "'lafs-backup key' prints it; 'custodian init' makes a custodian)")
        await o.create_repository()
        return ExitCode.OK
    from ..engine.inbox import create_custodian

    async def custodian(gw: Gateway, key: RepoKey, path: str, furl: str | None) -> tuple[str, str]:
        _, own, owner = await create_custodian(gw, key, path, ns.introducer or furl, sealed=True)
        assert owner is not None
        return own, owner

    await o.create_repository(Sealed(os.path.abspath(ns.recovery_key or "lafs-backup.recovery-key"),
                                     os.path.abspath(ns.custodian_key or "lafs-backup.custodian-key"), custodian))
    return ExitCode.OK
