"""What the custodian renews: storage indexes, taken from verify caps or given bare, and the refusal of
any cap that reads (pure)."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import UsageError


@functools.lru_cache(maxsize=None)
def _uri() -> ModuleType:
    """Tahoe's cap parser, imported at the first cap (a tenth of a backup's start-up otherwise, and
    most runs send nothing to a custodian)."""
    from allmydata import uri

    return uri


@functools.lru_cache(maxsize=None)
def _verifiers() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Verify caps of immutable objects (a CHK file, an immutable directory), and of mutable ones (SDMF
    and MDMF files and directories)."""
    uri = _uri()
    return ((uri.CHKFileVerifierURI, uri.ImmutableDirectoryURIVerifier),
            (uri.SSKVerifierURI, uri.MDMFVerifierURI, uri.DirectoryURIVerifier, uri.MDMFDirectoryURIVerifier))


def _si_b2a(raw: bytes) -> bytes:
    from allmydata.storage.common import si_b2a

    return bytes(si_b2a(raw))


def _si_a2b(text: bytes) -> bytes:
    from allmydata.storage.common import si_a2b

    return bytes(si_a2b(text))

_TYPE = re.compile(r"[A-Z][A-Z0-9]{1,5}(-[A-Z0-9]{2,5}){0,2}(-Verifier)?")


class ReadCapRefused(UsageError):
    """The custodian takes verify caps and storage indexes only, and was handed {what}: a cap that reads
    (or writes) the object.  Give it the object's verify cap instead (the host derives it with
    lafs_backup.custodian.targets.verify_cap_of): the custodian keeps no cap that reads."""

    def __init__(self, what: str) -> None:
        # The message on one line, however the docstring is wrapped.
        super().__init__(" ".join((self.__doc__ or "").split()).format(what=what), what=what)


class NotAVerifyCap(UsageError):
    """Not a verify cap nor a storage index: {what}."""


class Kind(enum.Enum):
    """The kind of shares an object has, which decides how a server is asked about them."""

    IMMUTABLE = "immutable"
    MUTABLE = "mutable"
    #: A bare storage index: the servers' answers tell.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Target:
    """One object to keep: its storage index (16 bytes) and, when a verify cap told it, its kind."""

    storage_index: bytes
    kind: Kind = Kind.UNKNOWN
    #: Shares that rebuild it, and shares made (an immutable verify cap records both; else None).
    needed: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        if len(self.storage_index) != 16:
            raise ValueError(f"a storage index has 16 bytes, not {len(self.storage_index)}")

    @property
    def name(self) -> str:
        """The storage index as Tahoe prints it (base32, 26 characters): safe to show and log, it reads
        nothing."""
        return str(_si_b2a(self.storage_index), "ascii")

    def __repr__(self) -> str:
        return f"Target({self.name}, {self.kind.value})"


def _prefix(cap: str) -> str:
    """The type of a cap, for messages (``URI:CHK:``), never its secret part: a field of Tahoe's type
    names only, else "a value"."""
    parts = cap.split(":")
    if len(parts) > 2 and parts[0] == "URI" and _TYPE.fullmatch(parts[1]):
        return f"URI:{parts[1]}:"
    return "a value"


def _described(cap: str) -> str:
    p = _prefix(cap)
    return f"{'a value' if p == 'a value' else f'a {p} value'} of {len(cap)} characters"


def _encoding(u: object) -> tuple[int | None, int | None]:
    # An immutable directory's verify cap wraps a file's (its ``_filenode_uri``).
    inner = getattr(u, "_filenode_uri", u)
    k, n = getattr(inner, "needed_shares", None), getattr(inner, "total_shares", None)
    return (k, n) if isinstance(k, int) and isinstance(n, int) else (None, None)


def target_of(cap: str) -> Target:
    """The target of a verify cap (``URI:CHK-Verifier:``, ``URI:DIR2-CHK-Verifier:``, ``URI:SSK-Verifier:``,
    ``URI:DIR2-Verifier:``, ``URI:MDMF-Verifier:``, ``URI:DIR2-MDMF-Verifier:``).  Raises
    :class:`ReadCapRefused` for a read or write cap (a LIT cap included: its bytes are in it) and
    :class:`NotAVerifyCap` for anything else; neither message repeats the cap."""
    uri = _uri()
    immutable, mutable = _verifiers()
    u = uri.from_string(cap)
    if isinstance(u, immutable):
        return Target(u.get_storage_index(), Kind.IMMUTABLE, *_encoding(u))
    if isinstance(u, mutable):
        return Target(u.get_storage_index(), Kind.MUTABLE)
    if isinstance(u, uri.UnknownURI) or not uri.IURI.providedBy(u):
        raise NotAVerifyCap(what=_described(cap))
    raise ReadCapRefused(what=f"a {_prefix(cap)} cap")


def target_of_index(storage_index: bytes | str, kind: Kind = Kind.UNKNOWN) -> Target:
    """The target of a bare storage index: 16 bytes, or its base32 form (26 characters) as Tahoe prints
    it.  Raises :class:`NotAVerifyCap` for anything else (a cap included)."""
    if isinstance(storage_index, str):
        if storage_index.startswith("URI:"):
            return target_of(storage_index)
        try:
            raw = _si_a2b(storage_index.encode("ascii"))
        except Exception:
            raise NotAVerifyCap(what="a text that is not a base32 storage index") from None
        if len(raw) != 16 or len(storage_index) != 26:
            raise NotAVerifyCap(what="a text that is not a base32 storage index")
        return Target(raw, kind)
    if len(storage_index) != 16:
        raise NotAVerifyCap(what=f"{len(storage_index)} bytes, where a storage index has 16")
    return Target(bytes(storage_index), kind)


def verify_cap_of(cap: str) -> str | None:
    """The verify cap of any cap (read, write or verify), for the host to hand to the custodian; None for a
    LIT cap (its bytes live in the cap: nothing on the grid to keep).  Raises :class:`NotAVerifyCap` when
    ``cap`` is not a Tahoe cap."""
    uri = _uri()
    u = uri.from_string(cap)
    if isinstance(u, uri.UnknownURI) or not uri.IURI.providedBy(u):
        raise NotAVerifyCap(what=_described(cap))
    if isinstance(u, _verifiers()[0] + _verifiers()[1]):
        # (Tahoe 1.20 cannot print the verify cap of a DIR2-CHK verify cap: it is the cap itself.)
        return cap
    v = u.get_verify_cap()
    return None if v is None else str(v.to_string(), "ascii")
