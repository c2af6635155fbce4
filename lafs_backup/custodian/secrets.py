"""The custodian's lease secret and the per-object, per-server renew and cancel secrets Tahoe derives from
it (pure: hashing only)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from allmydata.util import hashutil

from ..errors import LafsBackupError

#: Bytes of a lease secret (Tahoe's own ``private/secret`` holds as many).
SECRET_BYTES = 32


class LeaseSecretError(LafsBackupError):
    """The custodian's lease secret in {path} cannot be used: {problem}"""


@dataclass(frozen=True)
class BucketSecrets:
    """What one server is told to renew (or, never done by the custodian, cancel) its lease on the shares of
    one object: Tahoe's bucket renewal and cancel secrets."""

    renew: bytes = field(repr=False)
    cancel: bytes = field(repr=False)


class LeaseSecret:
    """A client lease secret, from which Tahoe derives, the way a Tahoe client does (``SecretHolder``,
    ``hashutil``): the client renewal secret, then per storage index the file renewal secret, then per
    server (its lease seed: the Foolscap tub id, for HTTPS servers too) the bucket renewal secret; the
    same chain for the cancel secret.  Whoever holds it can renew, and cancel, the custodian's leases;
    it reads nothing.  It never appears in a repr, a log line or an error."""

    __slots__ = ("_renew", "_cancel")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a lease secret has {SECRET_BYTES} bytes, not {len(secret)}")
        self._renew = hashutil.my_renewal_secret_hash(secret)
        self._cancel = hashutil.my_cancel_secret_hash(secret)

    def __repr__(self) -> str:
        return "<LeaseSecret>"

    def for_server(self, storage_index: bytes, lease_seed: bytes) -> BucketSecrets:
        """The secrets that hold the custodian's lease on the shares of ``storage_index`` that the
        server whose lease seed is ``lease_seed`` (20 bytes) keeps."""
        if len(lease_seed) != 20:
            raise ValueError(f"a server's lease seed has 20 bytes, not {len(lease_seed)}")
        file_renew = hashutil.file_renewal_secret_hash(self._renew, storage_index)
        file_cancel = hashutil.file_cancel_secret_hash(self._cancel, storage_index)
        return BucketSecrets(hashutil.bucket_renewal_secret_hash(file_renew, lease_seed),
                             hashutil.bucket_cancel_secret_hash(file_cancel, lease_seed))


def encode_secret(secret: bytes) -> str:
    """The text a secret file holds: the secret in lower-case base32, without padding, and a newline."""
    return base64.b32encode(secret).decode("ascii").lower().rstrip("=") + "\n"


def decode_secret(text: str, path: str) -> bytes:
    """The secret in a secret file's ``text``; raises :class:`LeaseSecretError` (naming ``path``, never the
    text) when it is not one."""
    t = text.strip().upper()
    try:
        secret = base64.b32decode(t + "=" * (-len(t) % 8))
    except (binascii.Error, ValueError):
        raise LeaseSecretError(path=path, problem="it does not hold a base32 secret") from None
    if len(secret) != SECRET_BYTES:
        raise LeaseSecretError(path=path, problem=f"it holds {len(secret)} bytes, not {SECRET_BYTES}")
    return secret
