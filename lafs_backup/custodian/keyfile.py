"""The custodian's key file: what the custodian machine needs and nothing more (the inbox's read cap, its
own directory's write cap, the grid's introducer fURL and its lease secret), in a file of mode 0600 made
once on the host and moved to the custodian's machine."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import UsageError
from .secretfile import read_private, write_private
from .secrets import SECRET_BYTES, LeaseSecret, decode_secret, encode_secret

#: The file's first line: what it is.
HEADER = "lafs-backup custodian key v1"


class CustodianKeyError(UsageError):
    """The custodian key file {path} cannot be used: {problem}"""


@dataclass(frozen=True)
class CustodianKey:
    """The custodian's capabilities: the inbox's read cap (it cannot write there), its own directory's
    write cap (the host keeps no cap of it), how to reach the grid, and its lease secret (base32).  No
    field ever appears in a repr."""

    inbox: str = field(repr=False)
    own: str = field(repr=False)
    furl: str | None = field(default=None, repr=False)
    secret: str = field(default="", repr=False)
    #: A sealed repository's: the read cap of the owner's directory, where the recovery key (which holds
    #: its write cap) cancels forget requests (None: a plain repository's custodian, no such channel).
    owner: str | None = field(default=None, repr=False)

    def lease_secret(self, path: str) -> LeaseSecret:
        return LeaseSecret(decode_secret(self.secret, path))

    def text(self) -> str:
        body = {"inbox": self.inbox, "own": self.own, "furl": self.furl, "lease_secret": self.secret.strip(),
                **({"owner": self.owner} if self.owner else {})}
        return HEADER + "\n" + json.dumps(body, indent=1, sort_keys=True) + "\n"


def new_secret() -> str:
    """A new lease secret, as the key file holds it."""
    return encode_secret(os.urandom(SECRET_BYTES)).strip()


def write_key(path: str, key: CustodianKey) -> None:
    """Write ``key`` to a new file ``path`` (mode 0600 whatever the umask; never replacing one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    write_private(path, key.text().encode("ascii"), CustodianKeyError)


def read_key(path: str) -> CustodianKey:
    """The key in ``path``.  Raises :class:`CustodianKeyError` when it cannot be read, is not a custodian
    key, or others may read it (then ``chmod 600`` it); the message never shows its content."""
    data = read_private(path, 65536, CustodianKeyError)
    try:
        head, _, rest = data.decode("ascii").partition("\n")
        body = json.loads(rest)
        if head.strip() != HEADER or not isinstance(body, dict):
            raise ValueError
        inbox, own, furl, secret = body["inbox"], body["own"], body.get("furl"), body["lease_secret"]
        owner = body.get("owner")
        if owner is not None and not (isinstance(owner, str) and owner.startswith(("URI:DIR2-RO:",
                                                                                    "URI:DIR2-MDMF-RO:"))):
            raise ValueError
        if not (isinstance(inbox, str) and inbox.startswith(("URI:DIR2-RO:", "URI:DIR2-MDMF-RO:"))
                and isinstance(own, str) and own.startswith(("URI:DIR2:", "URI:DIR2-MDMF:"))
                and isinstance(secret, str) and (furl is None or (isinstance(furl, str) and furl.startswith("pb://")))):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CustodianKeyError(path=path, problem="it is not a lafs-backup custodian key (copy it again, whole, "
                                                   "from the host that made it)") from None
    key = CustodianKey(inbox, own, furl, secret, owner)
    key.lease_secret(path)  # (raises LeaseSecretError, naming the file, for a damaged secret)
    return key
