"""Logging set-up: the NOISE level, and the filter that keeps Tahoe caps out of every log line."""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

#: Per-path logging, below DEBUG (O(n) in the number of entries).
NOISE = logging.DEBUG - 1
logging.addLevelName(NOISE, "NOISE")

# A Tahoe cap: "URI:" then a type tag, then its fields.  LIT caps carry file
# content, CHK/DIR2 caps carry read keys: both are bearer secrets.
# Percent-encoded caps ("URI%3ACHK%3A...") are caught as well.
_CAP_RE = re.compile(r"URI(?::|%3[aA])([A-Za-z0-9-]+)(?::|%3[aA])[A-Za-z0-9:_%+-]*")
#: A recovery key (it holds a repository's write cap) and a Foolscap FURL (whoever has an
#: introducer's FURL can join its grid): secrets too.
_KEY_RE = re.compile(r"lafs-backup-key-v[0-9]+:[A-Za-z0-9_-]*")
_FURL_RE = re.compile(r"pb://[^\s'\"<>]+")


def redact(text: str) -> str:
    """Replace every Tahoe cap, recovery key and FURL in ``text`` with a placeholder."""
    text = _KEY_RE.sub("<recovery key>", text)
    text = _FURL_RE.sub("<FURL>", text)
    return _CAP_RE.sub(lambda m: f"<{m.group(1)} cap>", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, arguments and traceback without caps."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = redact(msg)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


LEVELS = ("noise", "debug", "info", "warning", "error")


def level_number(name: str | int) -> int:
    """The logging level for one of :data:`LEVELS` (or a number); ValueError for anything else."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {name!r}")
    return NOISE if name.lower() == "noise" else int(logging.getLevelName(name.upper()))


def setup(level: int | str = logging.WARNING, insecure: bool = False, stream: IO[str] | None = None) -> None:
    """Configure the root logger for a CLI run.

    Unless ``insecure`` (``http.debug_requests``) is set, every handler gets a
    :class:`RedactingFilter`, so no cap reaches any output.
    """
    try:
        level = level_number(level)
    except ValueError:
        level = logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not insecure:
        handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
