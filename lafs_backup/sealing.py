"""Sealed records: what the repository records of each backup, encrypted to the owner's public key.

A sealed repository (``lafs-backup init --sealed``) has a key pair (X25519, libsodium's sealed boxes
through PyNaCl).  The backup host holds the public half: it can seal a new record, and never open one,
not even its own.  The private half is in the recovery key, which leaves the host at ``init``.  So
whoever holds the host (its files, its keys, its grid access) sees of the repository's records only
their envelopes: how many, how large, and the names they are filed under.

A box is anonymous (anyone holding the public key can make one): a record is trusted for what it
says, never for who wrote it.  A fake record costs the owner a line in ``list``, nothing more.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from types import ModuleType

#: Bytes of a key, public or private.
KEY_BYTES = 32


class SealError(Exception):
    """A box that this key cannot open: made for another key, or damaged."""


def _nacl() -> ModuleType:
    """PyNaCl's public-key boxes, imported at the first seal or open: loading libsodium costs every
    command a fifth of its start-up, and only sealed repositories need it."""
    import nacl.public

    return nacl.public


def _key_bytes(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a key") from None
    if len(raw) != KEY_BYTES:
        raise ValueError("not a key")
    return raw


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class SealKey:
    """The public half: seals records (the host's)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> "SealKey":
        _key_bytes(text)
        return cls(text)

    def seal(self, data: bytes) -> bytes:
        nacl = _nacl()
        return bytes(nacl.SealedBox(nacl.PublicKey(_key_bytes(self.text))).encrypt(data))

    def same(self, other: "SealKey") -> bool:
        """Is ``other`` this key (whatever its text's padding)?"""
        return _key_bytes(self.text) == _key_bytes(other.text)


@dataclass(frozen=True)
class OpenKey:
    """The private half: opens records (the owner's, in the recovery key alone)."""

    text: str

    def __repr__(self) -> str:  # (never in a traceback's locals or a log line)
        return "OpenKey(...)"

    @classmethod
    def generate(cls) -> "OpenKey":
        return cls(_text(bytes(_nacl().PrivateKey.generate())))

    @classmethod
    def parse(cls, text: str) -> "OpenKey":
        _key_bytes(text)
        return cls(text)

    @property
    def public(self) -> SealKey:
        return SealKey(_text(bytes(_nacl().PrivateKey(_key_bytes(self.text)).public_key)))

    def open(self, box: bytes) -> bytes:
        from nacl.exceptions import CryptoError

        nacl = _nacl()
        try:
            return bytes(nacl.SealedBox(nacl.PrivateKey(_key_bytes(self.text))).decrypt(box))
        except CryptoError:
            raise SealError("the box does not open with this key") from None
