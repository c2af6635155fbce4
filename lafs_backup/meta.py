"""File attributes beyond stat: owner names, POSIX ACLs, capabilities, xattrs; captured in phase one, applied on restore."""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import stat
from typing import Callable, Mapping

import xattr

from . import posix1e

log = logging.getLogger(__name__)

_ACL_ACCESS = b"system.posix_acl_access"
_ACL_DEFAULT = b"system.posix_acl_default"
_CAPS = b"security.capability"
_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")

NoteFn = Callable[[str, str], None]


class Capturer:
    """Reads the attributes of one entry as queue extras ``(key, value bytes)``.

    ``note_once(key, message)`` is told, once, when a library is missing and
    so ACLs or capabilities are not captured.  Errors reading one attribute
    are returned as warnings, never raised.
    """

    def __init__(self, note_once: NoteFn) -> None:
        self._note = note_once
        self._users: dict[int, bytes | None] = {}
        self._groups: dict[int, bytes | None] = {}

    def _user(self, uid: int) -> bytes | None:
        if uid not in self._users:
            try:
                self._users[uid] = os.fsencode(pwd.getpwuid(uid).pw_name)
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def _group(self, gid: int) -> bytes | None:
        if gid not in self._groups:
            try:
                self._groups[gid] = os.fsencode(grp.getgrgid(gid).gr_name)
            except KeyError:
                self._groups[gid] = None
        return self._groups[gid]

    def extras(self, path: bytes, st: os.stat_result) -> tuple[list[tuple[str, bytes]], list[str]]:
        """(extras, warnings) for the entry at ``path`` (a short path; see paths.proc_path)."""
        out: list[tuple[str, bytes]] = []
        problems: list[str] = []
        user, group = self._user(st.st_uid), self._group(st.st_gid)
        if user is not None:
            out.append(("user", user))
        if group is not None:
            out.append(("group", group))
        mode = st.st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            out.append(("rdev", b"%d" % st.st_rdev))
        if stat.S_ISREG(mode) and st.st_nlink > 1:
            out.append(("hardlink", b"%d:%d" % (st.st_dev, st.st_ino)))
        try:
            names = xattr.list(path, nofollow=True)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                problems.append(f"cannot list extended attributes: {e.strerror}")
            names = []
        for name in sorted(names):
            if name in (_ACL_ACCESS, _ACL_DEFAULT):
                self._acl(path, name == _ACL_DEFAULT, out, problems)
            elif name == _CAPS:
                self._caps(path, out, problems)
            elif name.startswith(_XATTR_PREFIXES):
                try:
                    out.append(("x:" + name.decode("utf-8", "surrogateescape"),
                                xattr.get(path, name, nofollow=True)))
                except OSError as e:
                    if e.errno != errno.ENODATA:
                        problems.append(f"cannot read extended attribute {name!r}: {e.strerror}")
        return out, problems

    def _acl(self, path: bytes, default: bool, out: list[tuple[str, bytes]], problems: list[str]) -> None:
        if not posix1e.acl_available():
            self._note("no-libacl", f"{posix1e.ACL_LIBRARY} is not available: POSIX ACLs are not captured")
            return
        try:
            texts = posix1e.get_acl(path, default)
        except OSError as e:
            problems.append(f"cannot read {'default ' if default else ''}ACL: {e.strerror}")
            return
        if texts is not None:
            key = "dacl" if default else "acl"
            out.append((key, texts[0].encode()))
            out.append((key + "_names", texts[1].encode("utf-8", "surrogateescape")))

    def _caps(self, path: bytes, out: list[tuple[str, bytes]], problems: list[str]) -> None:
        if not posix1e.caps_available():
            self._note("no-libcap", f"{posix1e.CAP_LIBRARY} is not available: file capabilities are not captured")
            return
        try:
            text = posix1e.get_caps(path)
        except OSError as e:
            problems.append(f"cannot read capabilities: {e.strerror}")
            return
        if text is not None:
            out.append(("caps", text.encode()))


class Applier:
    """Applies recorded attributes to a restored entry; each failure is one warning, the rest go on.

    Order matters: chown first (it clears setuid/setgid and capabilities),
    then mode, xattrs, ACLs, capabilities, and the times last.
    """

    def __init__(self, warn: Callable[[str], None], note_once: NoteFn, owners: bool, numeric: bool) -> None:
        self._warn = warn
        self._note = note_once
        self.owners = owners
        self.numeric = numeric

    def owner_ids(self, meta: Mapping[str, object]) -> tuple[int, int] | None:
        uid, gid = meta.get("uid"), meta.get("gid")
        if not isinstance(uid, int) or not isinstance(gid, int):
            return None
        if not self.numeric:
            user, group = meta.get("user"), meta.get("group")
            if isinstance(user, str):
                try:
                    uid = pwd.getpwnam(user).pw_uid
                except KeyError:
                    pass
            if isinstance(group, str):
                try:
                    gid = grp.getgrnam(group).gr_gid
                except KeyError:
                    pass
        return uid, gid

    def apply(self, path: bytes, meta: Mapping[str, object], kind: str, xattrs: Mapping[bytes, bytes],
              times: bool = True) -> None:
        """Apply ``meta`` to ``path`` (a short path, never followed if it is a symlink)."""
        link = kind == "l"
        if self.owners:
            ids = self.owner_ids(meta)
            if ids is not None:
                self._try("set owner", lambda: os.chown(path, ids[0], ids[1], follow_symlinks=False))
        mode = meta.get("mode")
        if not link and isinstance(mode, int):
            self._try("set mode", lambda: os.chmod(path, stat.S_IMODE(mode)))
        for name, value in xattrs.items():
            self._try(f"set extended attribute {name.decode('utf-8', 'replace')}",
                      lambda n=name, v=value: xattr.set(path, n, v, nofollow=True))
        if not link:
            for key, default in (("acl", False), ("default_acl", True)):
                acl = meta.get(key)
                if isinstance(acl, dict):
                    self._apply_acl(path, acl, default)
            caps = meta.get("caps")
            if isinstance(caps, str):
                if posix1e.caps_available():
                    self._try("set capabilities", lambda: posix1e.set_caps(path, caps))
                else:
                    self._warn(f"capabilities not restored: {posix1e.CAP_LIBRARY} is not available")
        if times:
            self.set_mtime(path, meta)

    def _apply_acl(self, path: bytes, acl: Mapping[str, object], default: bool) -> None:
        if not posix1e.acl_available():
            self._warn(f"ACL not restored: {posix1e.ACL_LIBRARY} is not available")
            return
        numeric, names = acl.get("numeric"), acl.get("names")
        text = numeric
        if not self.numeric and isinstance(names, str) and posix1e.parses(names):
            text = names
        if isinstance(text, str):
            self._try("set ACL", lambda: posix1e.set_acl(path, text, default))

    def set_mtime(self, path: bytes, meta: Mapping[str, object]) -> None:
        mtime = meta.get("mtime_ns")
        if isinstance(mtime, int):
            self._try("set modification time", lambda: os.utime(path, ns=(mtime, mtime), follow_symlinks=False))

    def _try(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError as e:
            self._warn(f"cannot {what}: {e.strerror or e}")
