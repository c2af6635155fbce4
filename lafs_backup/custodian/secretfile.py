"""The custodian's lease secret on disk: made once, from the system's random source, into a file only its
owner can read."""

from __future__ import annotations

import os
import stat
from typing import Callable

from .secrets import SECRET_BYTES, LeaseSecret, LeaseSecretError, decode_secret, encode_secret


def create_secret_file(path: str) -> LeaseSecret:
    """Make a new secret in ``path`` (mode 0600, which must not exist yet) and return it.  Raises
    :class:`LeaseSecretError` when the file exists (a custodian's leases hang on its secret: an
    existing one is never replaced) or cannot be written."""
    secret = os.urandom(SECRET_BYTES)
    write_private(path, encode_secret(secret).encode("ascii"), LeaseSecretError)
    return LeaseSecret(secret)


def read_secret_file(path: str) -> LeaseSecret:
    """The secret in ``path``.  Raises :class:`LeaseSecretError` when it cannot be read, is not a secret,
    or is readable or writable by anyone but its owner (then fix it with ``chmod 600``)."""
    data = read_private(path, 4096, LeaseSecretError)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise LeaseSecretError(path=path, problem="it does not hold a base32 secret") from None
    return LeaseSecret(decode_secret(text, path))


def read_private(path: str, limit: int, error: Callable[..., Exception]) -> bytes:
    """The first ``limit`` bytes of the private file ``path``: a regular file (never reached through a
    symlink) that only its owner may read or write.  Raises ``error(path=..., problem=...)``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise error(path=path, problem=e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(path=path, problem="it is not a regular file")
        if st.st_mode & 0o077:
            raise error(path=path, problem=(f"its mode is {stat.S_IMODE(st.st_mode):o}: others may read it; run "
                                            "chmod 600 on it"))
        return os.read(fd, limit)
    finally:
        os.close(fd)


def write_private(path: str, data: bytes, error: Callable[..., Exception]) -> None:
    """Write ``data`` to the new file ``path``, mode 0600 whatever the umask, synced; an existing file
    is never replaced.  Raises ``error(path=..., problem=...)``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise error(path=path, problem="the file exists already; it is never replaced") from None
    except OSError as e:
        raise error(path=path, problem=e.strerror or str(e)) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
