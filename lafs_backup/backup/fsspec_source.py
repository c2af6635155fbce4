"""Remote sources: any fsspec file system (``s3://``, ``az://``, ``memory://``) walked and read as a :class:`Source`.

An object store has keys, not a tree: directories are implied by the
``/``-separated key prefixes, and there are no owners, inodes, ctimes or
modes.  This module maps one onto what phase one and phase two expect:

- regular files (``0o100644``) and directories (``0o040755``) only, unless
  the file system reports a mode of its own;
- ``uid = gid = 0`` with the extra ``("owner", b"none")``: no owner is
  invented, and no ``user``/``group`` extras are emitted, so later code (a
  restore, a report) can tell "root-owned" from "the source has no owners";
- ``mtime_ns`` from what the store reports (``LastModified``, ``mtime``,
  ``created``, ...), ``ctime_ns = mtime_ns``; an implied directory takes the
  newest time among the objects directly in it (0 when it holds none), so
  the walk and phase two's ``lstat`` agree without remembering anything;
- change detection in the extras ``etag``, ``version`` and ``md5``, and in
  ``ino``: a stable integer derived from the ETag and version, so the stat
  cache key ``(path, size, mtime, ctime, ino)`` changes whenever they do.

Keys that cannot be a path (``//``, a leading ``/``, a ``.`` or ``..``
component, a NUL, an object named like a key prefix) are skipped with a
warning, never followed.  Listing is one request per directory (plus
pages), holding one listing per level of depth; reads are one ranged
request per ``pread``, never the whole object.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from ..errors import UsageError
from ..store.entry import Entry, join
from ..filters import Filter
from .scan import Extras, Listed, WalkHooks, walk
from .select import HeadFn, Selection
from ..store.store import temp_file, write_all
from ..system.fsspec_fs import label_of, open_url
from .source import NoteFn, WarnFn

log = logging.getLogger(__name__)

FILE_MODE = 0o100644
DIR_MODE = 0o040755
#: ``ino`` is masked to 63 bits: it is written as a signed integer in places (sqlite, JSON).
_INO_MASK = (1 << 63) - 1
#: Where file systems report a modification time, most specific first (s3fs, adlfs, local/sftp,
#: gcsfs, others; the memory file system only reports ``created``).
_TIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "modified", "created", "creation_time")
_MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")


# -- pure decisions ----------------------------------------------------------------------------

def to_ns(value: object) -> int | None:
    """A reported time as nanoseconds since the epoch (None: absent or not a time).

    Floats are rounded to microseconds, the resolution of a ``datetime``, so
    a file system that reports a float in listings and a datetime in ``info``
    (the memory file system does) gives the same value both ways.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(round(value * 1e6)) * 1000
    if isinstance(value, str) and value:
        try:
            return to_ns(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def mtime_of(info: Mapping[str, Any]) -> int | None:
    """The modification time a listing or ``info`` reports, in ns (None: it reports none)."""
    for key in _TIME_KEYS:
        ns = to_ns(info.get(key))
        if ns is not None:
            return ns
    return None


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Identity:
    """What an object store says about one object's version: the extras and the ``ino`` they make."""

    etag: str = ""
    version: str = ""
    md5: str = ""

    @property
    def ino(self) -> int:
        """Stable for one ETag and version, different when either changes; 0 when neither is known."""
        if not self.etag and not self.version:
            return 0
        digest = hashlib.sha256(self.etag.encode() + b"\0" + self.version.encode()).digest()
        return int.from_bytes(digest[:8], "big") & _INO_MASK

    def extras(self) -> tuple[tuple[str, bytes], ...]:
        out: list[tuple[str, bytes]] = []
        if self.etag:
            out.append(("etag", self.etag.encode()))
        if self.version:
            out.append(("version", self.version.encode()))
        if self.md5:
            out.append(("md5", self.md5.encode()))
        return tuple(out)


def identity_of(info: Mapping[str, Any], etag_is_md5: bool, versioned: bool) -> Identity:
    """The ETag, version and (only when it is one) true MD5 of an object's ``info``.

    ``etag_is_md5``: the store is S3 and its ETags may be trusted as MD5s
    (no SSE-KMS default on the bucket): then a single-part ETag (32 hex
    digits) is the MD5 of the content.  A multipart ETag (``<hex>-<parts>``)
    never is.  GCS's ``md5Hash`` is computed by the server and always is.
    ``versioned``: the file system lists versions, so the version id is
    reported the same way by the listing and by ``info``.
    """
    etag = _text(info.get("ETag") or info.get("etag")).strip('"')
    version = ""
    if versioned:
        version = _text(info.get("VersionId") or info.get("version_id") or info.get("generation"))
        if version == "null":  # S3's version of an object written before versioning was enabled
            version = ""
    md5 = ""
    if etag_is_md5 and _MD5_HEX.match(etag):
        md5 = etag.lower()
    elif isinstance(info.get("md5Hash"), str):
        try:
            raw = base64.b64decode(info["md5Hash"], validate=True)
            md5 = raw.hex() if len(raw) == 16 else ""
        except ValueError:
            md5 = ""
    return Identity(etag, version, md5)


def child_name(base: str, name: str, kind: str, size: int = 0) -> tuple[str | None, str | None]:
    """The component a listed ``name`` adds below the listed directory ``base``.

    Returns ``(component, None)`` for a usable child, ``(None, reason)`` for
    one to skip with a warning, and ``(None, None)`` for one to drop
    silently (the directory itself, an S3 directory-marker object).
    """
    name = name.rstrip("/") if kind == "directory" and name != base + "/" else name
    if name == base or name == base.rstrip("/"):
        return None, None
    prefix = base.rstrip("/") + "/" if base.rstrip("/") else ""
    if not name.startswith(prefix):
        return None, "listed outside its directory; skipped"
    rest = name[len(prefix):]
    if rest == "":
        if kind == "file" and size == 0:
            return None, None  # "dir/": a directory-marker object (what consoles create); the prefix is the directory
        if kind == "file":
            return None, "an object named like its directory (a key ending in '/') holds data; skipped"
        return None, "object keys below hold an empty path component ('//' or a leading '/'); skipped"
    if "/" in rest:
        return None, "object key holds an empty path component ('//' or a trailing '/'); skipped"
    if rest in (".", ".."):
        return None, f"object keys below hold a {rest!r} path component; skipped"
    if "\0" in rest:
        return None, "object key holds a NUL character; skipped"
    return rest, None


def mode_for(kind: str, reported: object) -> int:
    """The ``st_mode`` of a listed file or directory: the reported permission bits, or the defaults."""
    fmt = stat.S_IFDIR if kind == "directory" else stat.S_IFREG
    if isinstance(reported, int) and not isinstance(reported, bool) and stat.S_IMODE(reported):
        return fmt | stat.S_IMODE(reported)
    return DIR_MODE if kind == "directory" else FILE_MODE


def make_stat(mode: int, size: int, mtime_ns: int, ino: int) -> os.stat_result:
    """A stat result as a local file system would give it: dev 0, one link, uid and gid 0."""
    secs = mtime_ns // 10**9
    return os.stat_result((mode, ino, 0, 1, 0, 0, size, secs, secs, secs),
                          {"st_atime": mtime_ns / 1e9, "st_mtime": mtime_ns / 1e9, "st_ctime": mtime_ns / 1e9,
                           "st_atime_ns": mtime_ns, "st_mtime_ns": mtime_ns, "st_ctime_ns": mtime_ns})


# -- the source --------------------------------------------------------------------------------

_Child = tuple[bytes, os.stat_result, Extras]


def _newest(children: Sequence[Listed]) -> int:
    """An implied directory's time: the newest of the objects directly in it, filtered or not (0: none)."""
    return max((st.st_mtime_ns for _, st, _ in children if stat.S_ISREG(st.st_mode)), default=0)


class FsspecSource:
    """A file system reached through fsspec, rooted at ``url`` (``s3://bucket/prefix``).

    ``storage_options`` go to fsspec as they are (credentials, endpoint);
    none of their values ever appears in a message.  Raises
    :class:`UsageError` when fsspec does not know the protocol or its
    package is not installed.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        opened = open_url(url, storage_options, "back up")
        self.label = label_of(url)  # (the URL itself is not kept: it may hold a password)
        self._opened = opened
        self.fs, self.root = opened.fs, opened.root
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._s3 = "s3" in protocols
        self._versioned = bool(getattr(self.fs, "version_aware", False))
        self._etag_is_md5 = self._s3
        #: The times the walk gave implied directories: phase two's lstat then needs no listing.
        self._dir_times: dict[bytes, int] = {}
        #: The objects the walk listed, as it listed them (phase two's lstat asks no request of them).
        self._listed: dict[bytes, os.stat_result] = {}

    # -- messages --------------------------------------------------------------------------------
    def _shown(self) -> str:
        return self.label.decode("utf-8", "replace")

    def _scrub(self, text: str) -> str:
        return self._opened.scrub(text)

    def _oserror(self, e: BaseException) -> OSError:
        """An fsspec or backend failure as an OSError whose message holds no credentials."""
        if isinstance(e, FileNotFoundError):
            return FileNotFoundError(errno.ENOENT, "no such object")
        if isinstance(e, OSError) and e.errno is not None:
            return OSError(e.errno, self._scrub(e.strerror or str(e)))  # (ENOENT and EACCES keep their subclass)
        return OSError(errno.EIO, self._scrub(f"{type(e).__name__}: {e}"))

    # -- paths -----------------------------------------------------------------------------------
    def _path(self, rel: bytes) -> str:
        try:
            return f"{self.root}/{rel.decode('utf-8')}" if rel else self.root
        except UnicodeDecodeError:  # the walk never makes one: a queue from elsewhere
            raise OSError(errno.EINVAL, "not a UTF-8 object key") from None

    def _entry_stat(self, info: Mapping[str, Any]) -> tuple[os.stat_result, tuple[tuple[str, bytes], ...], int | None]:
        """The stat, extras and reported mtime (None: none) of one listed or ``info``'d object."""
        kind = info.get("type")
        mtime = mtime_of(info)
        if kind == "directory":
            return make_stat(mode_for("directory", info.get("mode")), 0, mtime or 0, 0), (("owner", b"none"),), mtime
        ident = identity_of(info, self._etag_is_md5, self._versioned)
        size = int(info.get("size") or 0)
        st = make_stat(mode_for("file", info.get("mode")), size, mtime or 0, ident.ino)
        return st, (("owner", b"none"), *ident.extras()), mtime

    def _list(self, path: str, rel: bytes, warn: WarnFn) -> list[_Child]:
        """A directory's usable children sorted by name bytes; the others are passed to ``warn``.
        Raises OSError (with no credentials in it) when the directory cannot be listed."""
        try:
            listed = self.fs.ls(path, detail=True)
        except Exception as e:  # whatever the backend raises (botocore, aiohttp, azure): one OSError
            raise self._oserror(e) from None
        finally:
            # Listings are cached by some file systems (s3fs) for the life of the process: a walk
            # must hold one listing per level, not the whole bucket.
            self.fs.invalidate_cache(path)
        out: dict[bytes, _Child] = {}
        for info in listed:
            kind = info.get("type")
            comp, why = child_name(path, str(info.get("name", "")), str(kind), int(info.get("size") or 0))
            if comp is None:
                if why is not None:
                    bad = str(info.get("name", ""))[len(path.rstrip("/")) + 1:]
                    shown = join(rel, bad.encode("utf-8", "surrogateescape")) if bad else rel + b"/"
                    warn(shown, why)
                continue
            try:
                name = comp.encode("utf-8")
            except UnicodeEncodeError:
                warn(join(rel, comp.encode("utf-8", "surrogateescape")), "object key is not valid UTF-8; skipped")
                continue
            crel = join(rel, name)
            if kind not in ("file", "directory"):
                warn(crel, f"not a regular file or directory ({kind}); skipped")
                continue
            st, extras, _ = self._entry_stat(info)
            seen = out.get(name)
            if seen is not None:
                # "a" and "a/b" both exist: the key prefix (a directory) wins, the object is skipped.
                if stat.S_ISDIR(seen[1].st_mode) == (kind == "directory"):
                    continue  # listed twice (a page boundary): the same child
                warn(crel, "an object has the same name as a key prefix (a directory); the object is skipped")
                if kind == "file":
                    continue
            out[name] = (name, st, extras)
        return [out[n] for n in sorted(out)]

    def _head(self, dir_path: str) -> HeadFn:
        """Read the first bytes of a child of ``dir_path`` (an ignore file, a CACHEDIR.TAG)."""
        def head(name: bytes, n: int) -> bytes | None:
            try:
                return bytes(self.fs.cat_file(f"{dir_path}/{name.decode('utf-8')}", 0, n))
            except Exception:  # unreadable: the selection treats it as absent
                return None
        return head

    def _root(self) -> Mapping[str, Any]:
        """The root's info; raises :class:`UsageError` when it is missing, a file or unreachable."""
        try:
            self.fs.invalidate_cache(self.root)
            info = self.fs.info(self.root)
        except FileNotFoundError:
            raise UsageError(f"Cannot back up {self._shown()}: no such bucket, container or prefix")
        except Exception as e:
            raise UsageError(f"Cannot back up {self._shown()}: {self._oserror(e).strerror}")
        if info.get("type") != "directory":
            raise UsageError(f"Cannot back up {self._shown()}: not a directory (a single object)")
        return info

    def _check_etags(self, note_once: NoteFn) -> None:
        """Trust S3 ETags as MD5s only when the bucket does not encrypt with KMS by default.

        An SSE-KMS (or SSE-C) object's ETag is 32 hex digits but not the MD5
        of its content, and listings do not say how an object is encrypted.
        The bucket's default is asked once; an object uploaded with its own
        KMS key into a bucket without that default cannot be told apart.
        """
        if not self._s3:
            return
        bucket = self.root.lstrip("/").split("/", 1)[0]
        try:
            out = self.fs.call_s3("get_bucket_encryption", Bucket=bucket)
        except FileNotFoundError:
            return  # no default encryption configured: ETags of single-part uploads are MD5s
        except Exception as e:
            if "ServerSideEncryptionConfigurationNotFound" in str(e):
                return
            self._etag_is_md5 = False
            note_once("s3-md5", f"{self._shown()}: the bucket's encryption cannot be read, so ETags are not "
                                "taken as MD5 checksums")
            return
        rules = out.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        algos = {r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "") for r in rules}
        if any("kms" in a for a in algos):
            self._etag_is_md5 = False

    def _dir(self, rel: bytes, st: os.stat_result, mtime: int, extras: Extras) -> Entry:
        """The entry of a directory the walk keeps, with the time it gives it (remembered: phase
        two's lstat then needs no listing)."""
        self._dir_times[rel] = mtime
        st = make_stat(st.st_mode, 0, mtime, 0)
        self._listed[rel] = st
        return Entry.from_stat(rel, st, extras=extras)

    # -- the Source protocol -----------------------------------------------------------------------
    def walk(self, flt: Filter | Selection, warn: WarnFn, note_once: NoteFn,
             hooks: WalkHooks | None = None) -> Iterator[Entry]:
        """Every included entry, each child before its directory, names sorted as bytes, the root last
        (the walk of ``scan.walk``).

        ``flt``: the filter rules alone or a :class:`Selection`; its rules,
        ``--files-from`` paths, ignore files, ``--exclude-if-present``,
        ``--exclude-caches`` and ``--exclude-larger-than`` apply.  A remote
        source is one file system, so ``--one-file-system`` changes nothing.
        ``hooks`` (an incremental walk) are not supported and are ignored.
        Raises :class:`UsageError` when the root cannot be listed.
        """
        sel = flt if isinstance(flt, Selection) else Selection(filter=flt if isinstance(flt, Filter) else Filter(()))
        return walk(_Tree(self, note_once), sel, warn)

    def lstat(self, rel: bytes) -> os.stat_result:
        """The entry's state: as this process's walk listed it moments ago (an object store's HEAD
        per object would cost a request for every unchanged file), else asked of the store.

        The listing may be a little old; an object replaced since is caught when it is read (its
        ETag no longer matches: ``pread`` raises ESTALE), and the next run stores it.
        """
        listed = self._listed.get(rel)
        return listed if listed is not None else self.ask(rel)

    def ask(self, rel: bytes) -> os.stat_result:
        """The entry's state now, asked of the store (one request); raises OSError (ENOENT: gone).

        A directory without a time of its own gets the one the walk gave it
        (or, after a walk in another process, one listing's worth of it).
        """
        path = self._path(rel)
        try:
            self.fs.invalidate_cache(path)  # phase two must see the object now, not the walk's listing
            info = self.fs.info(path)
        except Exception as e:
            raise self._oserror(e) from None
        if info.get("type") not in ("file", "directory"):
            raise OSError(errno.EINVAL, "not a regular file or directory")
        st, _, mtime = self._entry_stat(info)
        if stat.S_ISDIR(st.st_mode) and mtime is None:
            known = self._dir_times.get(rel)
            if known is None:
                known = _newest(self._list(path, rel, lambda p, m: None))
            st = make_stat(st.st_mode, 0, known, 0)
        return st

    def _isdir(self, path: str) -> bool:
        try:
            return bool(self.fs.isdir(path))
        except Exception:  # (only to name the error better)
            return False

    #: Reads blocking on the network: phase two opens such a source's files off the reactor thread.
    blocking = True

    def open(self, rel: bytes, tmpdir: str | None = None) -> "RemoteFile":
        """A private copy of the object as it is now, taken whole into an unnamed temporary file
        (blocking: call it in a thread); its ``fstat`` is the state of exactly the bytes copied, from
        the same open that read them.  Raises OSError (ENOENT: gone, EISDIR: a prefix, ESTALE: it
        was replaced while it was copied, so it is read again by the next run)."""
        path = self._path(rel)
        try:
            self.fs.invalidate_cache(path)
            f = self.fs.open(path, "rb", block_size=1 << 20)
        except Exception as e:
            if isinstance(e, IsADirectoryError) or (isinstance(e, FileNotFoundError) and self._isdir(path)):
                raise OSError(errno.EISDIR, "not a regular file") from None
            raise self._oserror(e) from None
        fd = -1
        try:
            details = getattr(f, "details", None) or self.fs.info(path)
            if details.get("type") not in (None, "file"):
                raise OSError(errno.EISDIR, "not a regular file")
            st, _, _ = self._entry_stat(details)
            fd = temp_file(tmpdir)
            pos = 0
            while pos < st.st_size:
                chunk = f.read(min(1 << 20, st.st_size - pos))
                if not chunk:
                    break
                pos += write_all(fd, chunk, pos)
            if pos != st.st_size:
                raise OSError(errno.ESTALE, "the object changed while it was read; it is read again by the next run")
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            raise OSError(e.errno, self._scrub(e.strerror or str(e))) from None
        except Exception as e:  # the store's error mid-read: a replaced object (If-Match), throttling spent
            if fd >= 0:
                os.close(fd)
            raise self._oserror(e) from None
        finally:
            try:
                f.close()
            except Exception:  # a read-only remote file holds nothing to flush
                log.debug("closing %r failed", rel, exc_info=True)
        return RemoteFile(fd, st)


class _Tree:
    """An fsspec file system as ``scan.walk`` reads it: a directory is its path, and its listing
    gives each child's extras."""

    cannot = "cannot list directory"

    def __init__(self, src: FsspecSource, note_once: NoteFn) -> None:
        self._src = src
        self._note_once = note_once

    def root(self, warn: WarnFn) -> tuple[str, Sequence[Listed], Entry]:
        src = self._src
        info = src._root()
        src._check_etags(self._note_once)
        root_st, root_extras, root_mtime = src._entry_stat(info)
        src._dir_times.clear()
        src._listed.clear()
        try:
            children = src._list(src.root, b"", warn)
        except OSError as e:
            raise UsageError(f"Cannot back up {src._shown()}: {e.strerror}")
        mtime = root_mtime if root_mtime is not None else _newest(children)
        return src.root, children, src._dir(b"", root_st, mtime, root_extras)

    def enter(self, parent: str, name: bytes, rel: bytes, warn: WarnFn) -> tuple[str, Sequence[Listed]]:
        path = f"{parent}/{name.decode('utf-8')}"
        return path, self._src._list(path, rel, warn)

    def head(self, d: str) -> HeadFn:
        return self._src._head(d)

    def keep(self, d: str, name: bytes, rel: bytes, st: os.stat_result, listed: Extras | None,
             warn: WarnFn) -> Extras:
        if not stat.S_ISDIR(st.st_mode):
            self._src._listed[rel] = st  # as listed: phase two's lstat asks no request of it
        return listed if listed is not None else ()

    def dir_entry(self, rel: bytes, st: os.stat_result, extras: Extras, children: Sequence[Listed]) -> Entry:
        mtime = st.st_mtime_ns or _newest(children)  # 0: an implied directory, which reports no time
        return self._src._dir(rel, st, mtime, extras)

    def readlink(self, d: str, name: bytes) -> bytes:
        raise OSError(errno.EINVAL, "an object store has no symlinks")

    def close(self, d: str) -> None:
        pass


class RemoteFile:
    """A private copy of one object, in an unnamed temporary file: read by offset, with the object's
    state (size, time, ETag as ``st_ino``) as ``fstat``."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self._st = st

    def fstat(self) -> os.stat_result:
        return self._st

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        os.close(self.fd)
