"""Opening an fsspec file system from a URL and its storage options, with every secret kept out of messages.

The only module that imports fsspec: a remote source (``backup/fsspec_source.py``)
and a remote restore target (``read/fsspec_target.py``) both open their file system
here.  Credentials come in the options and sometimes in the URL itself
(``s3://key:secret@bucket``, ``?sig=...``): :class:`Opened` scrubs all of them
out of any text before it is shown.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import UsageError

if TYPE_CHECKING:  # (fsspec is optional: the ``s3`` and ``azure`` extras)
    from fsspec import AbstractFileSystem


def label_of(url: str) -> bytes:
    """What backups of ``url`` are recorded as: the URL without credentials, query or trailing slashes."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.rstrip("/").encode("utf-8") or b"/"
    rest = rest.split("?", 1)[0]
    host, slash, path = rest.partition("/")
    host = host.rpartition("@")[2]  # user:password@host: never recorded
    return f"{scheme}://{(host + slash + path).rstrip('/')}".encode("utf-8")


def secrets_in(options: Mapping[str, Any]) -> list[str]:
    """Every string value in storage options (nested ones too), to be kept out of messages."""
    out: list[str] = []
    for value in options.values():
        if isinstance(value, str) and len(value) >= 4:
            out.append(value)
        elif isinstance(value, Mapping):
            out.extend(secrets_in(value))
    return sorted(out, key=len, reverse=True)


def _url_secrets(url: str) -> list[str]:
    """The password (and user) and query values a URL carries."""
    parts = urllib.parse.urlsplit(url)
    found = [x for x in (parts.password, parts.username) if x and len(x) >= 4]
    found += [v for _, v in urllib.parse.parse_qsl(parts.query) if len(v) >= 4]
    return found


@dataclass
class Opened:
    """A file system, the root path in it, and how to show text about it safely."""

    fs: AbstractFileSystem
    root: str
    label: str
    secrets: list[str] = field(default_factory=list, repr=False)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


def open_url(url: str, storage_options: Mapping[str, Any] | None, what: str) -> Opened:
    """The file system ``url`` names; :class:`UsageError` ("Cannot <what> <label>: ...", with no
    secret in it) when fsspec or the protocol's package is missing, or the options are refused."""
    label = label_of(url).decode("utf-8", "replace")
    secrets = sorted(secrets_in(storage_options or {}) + _url_secrets(url), key=len, reverse=True)
    opened = Opened(None, "", label, secrets)
    try:
        import fsspec.core
    except ImportError:
        raise UsageError(f"Cannot {what} {label}: fsspec is not installed (pip install 'lafs-backup[s3]', or "
                         "[azure])") from None
    try:
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as e:  # "Install s3fs to access S3": the message says what to do
        raise UsageError(f"Cannot {what} {label}: {opened.scrub(str(e))}") from None
    except Exception as e:  # an unknown protocol, a bad storage option: whatever the backend raises
        raise UsageError(f"Cannot {what} {label}: {opened.scrub(f'{type(e).__name__}: {e}')}") from None
    opened.fs, opened.root = fs, root.rstrip("/") or root
    return opened
