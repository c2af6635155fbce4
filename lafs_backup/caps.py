"""LIT caps, made and read locally (pure): a small object lives in its cap itself, so no request stores or
fetches it."""

from __future__ import annotations

import base64

LIT_MAX = 55  # Tahoe's URI_LIT_SIZE_THRESHOLD


def lit_cap(data: bytes) -> str:
    """The LIT cap of ``data`` (at most 55 bytes), computed locally as Tahoe does."""
    if len(data) > LIT_MAX:
        raise ValueError("too long for a LIT cap")
    return "URI:LIT:" + base64.b32encode(data).decode("ascii").lower().rstrip("=")


def lit_data(cap: str) -> bytes | None:
    """The bytes inside a LIT cap, or None if ``cap`` is not a LIT cap."""
    if not cap.startswith("URI:LIT:"):
        return None
    text = cap[len("URI:LIT:"):].upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def stored_size(cap: str) -> tuple[int, int, int] | None:
    """``(size, k, N)`` of an immutable object as its cap records it: a file (``URI:CHK:``) or a
    directory (``URI:DIR2-CHK:``) of ``size`` bytes, erasure-coded into N shares any k of which
    rebuild it.  None for a cap that records no size (a LIT cap, whose bytes are in the cap itself,
    or a mutable one)."""
    for prefix in ("URI:CHK:", "URI:DIR2-CHK:"):
        if cap.startswith(prefix):
            parts = cap[len(prefix):].split(":")
            if len(parts) == 5 and all(p.isdigit() for p in parts[2:]) and int(parts[2]) > 0:
                return int(parts[4]), int(parts[2]), int(parts[3])
            return None
    return None
