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
